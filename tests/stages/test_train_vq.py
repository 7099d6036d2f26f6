"""Tokenizer training (`gigatok.stages.train_vq`) end to end on CPU with the tiny configs and small real images.

Real photos come from `skimage.data` (public domain / CC0) and digits from `sklearn.datasets.load_digits`, written
as small files into tmp folders. LPIPS uses the random VGG backbone and the semantic teacher a random DINOv2-S
(trainer fields `lpips_random_backbone`, `teacher_random_init`): their values are meaningless, the code paths real.
Runs that need a process to die or several ranks are subprocesses (torchrun through scripts/train_vq*.sh); the
others call `main` in-process.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gigatok.builders import load_tokenizer
from gigatok.config import load_config
from gigatok.data.train_images import TrainImageDataset
from gigatok.infra.run_state import list_checkpoints, load_training_checkpoint
from gigatok.stages.train_vq import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"
CONFIG_2D = REPO / "configs" / "vq" / "VQ_debug_2d.yaml"
# Random LPIPS backbone and teacher (no weight files offline), small DINOv2-S teacher, no W&B, no workers.
TEST_FLAGS = ["--mixed-precision", "none", "--no-wandb", "--num-workers", "0",
              "--trainer.lpips_random_backbone=true", "--trainer.teacher_random_init=true",
              "--trainer.distill_model=dinov2-vit-s"]
# Metrics that legitimately differ between two runs: wall-clock throughput, and the rolling codebook window
# (CodebookUsageTracker keeps only its cumulative counts in the checkpoint; the window refills after resuming).
VOLATILE = ("train/steps_per_s", "train/images_per_s", "train/codebook/usage", "train/codebook/perplexity",
            "train/codebook/dead_codes")


# -- data ------------------------------------------------------------------------------------------------------------
def write_photos(root: Path, names: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "camera",
                                                       "horse", "cat", "coins"), short_side: int = 40) -> Path:
    """skimage sample photos as small JPEGs in two class sub-folders (ImageNet layout)."""
    from skimage import data

    for i, name in enumerate(names):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = short_side / min(image.size)
        size = (max(short_side, round(image.width * scale)), max(short_side, round(image.height * scale)))
        image = image.resize(size, Image.BICUBIC)
        folder = root / f"n0{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{name}.jpg", quality=90)
    return root


def write_digits(root: Path, count: int = 16) -> Path:
    """sklearn digits (8x8) upsampled to 40 px and coloured, as a flat folder of PNGs."""
    from sklearn.datasets import load_digits

    root.mkdir(parents=True, exist_ok=True)
    for i, digit in enumerate(load_digits().images[:count]):
        gray = (digit / 16 * 255).astype(np.uint8)
        rgb = np.stack([gray, gray // 2 + 64 * (i % 2), 255 - gray], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).resize((40, 40), Image.BICUBIC).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos") / "train")


# -- helpers ---------------------------------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> dict[int, dict]:
    """step -> record of metrics.jsonl; a later line for the same step (a resumed run redoing it) wins."""
    records = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
        records[record["step"]] = record
    return records


def assert_same_metrics(a: dict, b: dict, rtol: float = 0.0) -> None:
    for key in a:
        if key in VOLATILE or a[key] is None:
            continue
        assert b[key] == pytest.approx(a[key], rel=rtol, abs=1e-12 if rtol else 0), (a["step"], key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gigatok.stages.train_vq", *args]


def launcher(script: str, nproc: int, *args: str, log: Path) -> None:
    """Run scripts/<script> with `gpus=nproc` CPU processes (gloo); fail with the log on a non-zero exit."""
    env = subprocess_env(gpus=str(nproc), PORT=str(free_port()),
                         TORCH_RUN_PATH=f"{sys.executable} -m gigatok.infra.launch")
    with open(log, "w") as out:
        code = subprocess.run(["bash", str(REPO / "scripts" / script), *args], env=env, cwd=REPO, stdout=out,
                              stderr=subprocess.STDOUT, timeout=300).returncode
    assert code == 0, log.read_text()[-4000:]


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [step for step, _ in list_checkpoints(run_dir / "checkpoints")]


# -- the training dataset --------------------------------------------------------------------------------------------
def test_train_dataset_layout_and_deterministic_augmentation(photos, tmp_path):
    dataset = TrainImageDataset(photos, 32, seed=3)
    assert dataset.classes == ["n00", "n01"] and sorted(set(dataset.labels)) == [0, 1]
    images, label, unreadable = dataset[2]
    assert images.shape == (3, 32, 32) and images.dtype == torch.float32 and unreadable == 0
    assert -1.0 <= images.min() and images.max() <= 1.0
    torch.testing.assert_close(dataset[2][0], images, rtol=0, atol=0)  # same (seed, epoch, index): same crop
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2][0], images)  # a new epoch draws a new crop / flip
    flat = TrainImageDataset(write_digits(tmp_path / "digits", 4), 32)
    assert flat.labels == [-1] * 4 and flat.classes == []


def test_small_datasets_keep_decoded_images_and_augment_them_as_from_disk(tmp_path, monkeypatch):
    cached = TrainImageDataset(write_digits(tmp_path / "digits", 4), 32, seed=1)
    uncached = TrainImageDataset(write_digits(tmp_path / "again", 4), 32, seed=1)
    uncached._cache = None  # what an ImageNet-size folder gets
    first = [cached[i][0] for i in range(4)]
    assert len(cached._cache) == 4 and cached._cache_bytes == 4 * 40 * 40 * 3
    for path in cached.files:
        path.write_bytes(b"not an image any more")  # a cached image is not read again
    for epoch in (0, 1):
        cached.set_epoch(epoch)
        uncached.set_epoch(epoch)
        for i in range(4):
            images, _, unreadable = cached[i]
            assert unreadable == 0  # served from memory: the broken file is not met
            assert torch.equal(images, uncached[i][0])  # the same crops as from the intact files
            if epoch == 0:
                assert torch.equal(images, first[i])
    # the byte budget bounds the cache
    monkeypatch.setattr("gigatok.data.train_images.CACHE_MAX_BYTES", 2 * 40 * 40 * 3)
    small = TrainImageDataset(write_digits(tmp_path / "budget", 4), 32)
    for i in range(4):
        small[i]
    assert len(small._cache) == 2


def test_unreadable_images_are_replaced_and_counted_across_workers(tmp_path):
    root = write_digits(tmp_path / "digits", 6)
    (root / "broken.jpg").write_bytes((root / "000.png").read_bytes()[:60])  # truncated: not decodable
    dataset = TrainImageDataset(root, 32)
    loader = DataLoader(dataset, batch_size=7, num_workers=2)
    images, _, unreadable = next(iter(loader))
    assert images.shape == (7, 3, 32, 32) and int(unreadable.sum()) == 1  # summed in the main process
    broken = [p.name for p in dataset.files].index("broken.jpg")
    first, second = dataset[broken], dataset[broken]
    assert first[2] == 1 and torch.equal(first[0], second[0])  # the replacement is deterministic


# -- CLI behaviour ---------------------------------------------------------------------------------------------------
def test_loss_flags_override_the_yaml_and_corrupt_images_are_counted(tmp_path, capsys):
    data = write_photos(tmp_path / "train", names=("astronaut", "chelsea", "coffee"))
    Image.new("RGB", (40, 40)).save(data / "n00" / "corrupt.jpg")
    (data / "n00" / "corrupt.jpg").write_bytes((data / "n00" / "corrupt.jpg").read_bytes()[:200])  # truncated
    run_dir = tmp_path / "runs" / "flags"
    main(["--model-config", str(CONFIG), "--data-path", str(data), "--save-path", str(tmp_path / "runs"),
          "--sub-exp-dir", "flags", "--iterations", "2", "--global-batch-size", "4", "--log-every", "1",
          "--disc-start", "1", "--perceptual-weight", "0", "--commit-loss-beta", "0.3", "--gen-loss", "non-saturating",
          "--gradient-accumulation-steps", "2", *TEST_FLAGS])
    err = capsys.readouterr().err
    assert "--disc-start: loss.params.disc_start = 1 (overrides the YAML: 20)" in err
    assert "global batch 4 = 2 per rank x 1 ranks x 2 accumulation steps" in err
    assert "unreadable training image" in err and "corrupt.jpg" in err
    saved = load_config(run_dir / "config.yaml")
    assert saved.loss.params.disc_start == 1 and saved.loss.params.perceptual_weight == 0
    assert saved.loss.params.gen_adv_loss == "non-saturating" and saved.trainer.grad_accum_steps == 2
    assert saved.model.init_args.commit_loss_beta == 0.3
    metrics = read_metrics(run_dir)
    # every batch holds all 4 files, so the corrupt one was met (and replaced) at both steps
    assert metrics[2]["train/corrupt_images"] == 2 and all(m["train/perceptual"] == 0 for m in metrics.values())
    assert metrics[1]["train/disc_weight"] == 0.5 and metrics[1]["train/disc"] > 0  # the GAN is on from step 1
    assert sorted(p.name for p in (run_dir / "previews").iterdir()) == ["0000002.png"]  # with the final checkpoint
    ckpt = load_training_checkpoint(run_dir / "checkpoints" / "0000002.pt")
    assert ckpt["config"]["loss"]["params"]["disc_start"] == 1 and ckpt["extra"]["corrupt_images"] == 2


def test_auto_cnn_layout_trains_nchw_on_avx2_cpus(photos, tmp_path, capsys, monkeypatch):
    """`cnn_channels_last: null` (auto) picks NCHW for CPU training without AVX-512, and the saved config keeps
    auto, so a resume on another machine picks again."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    layouts = []
    original = torch.nn.Conv2d._conv_forward

    def spy(self, x, weight, bias):
        layouts.append(weight.is_contiguous(memory_format=torch.channels_last) and weight.shape[-1] > 1)
        return original(self, x, weight, bias)

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", spy)
    main(["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--sub-exp-dir",
          "auto", "--iterations", "1", "--global-batch-size", "2", "--model.init_args.cnn_channels_last=null",
          *TEST_FLAGS])
    assert "CNN layout (model.init_args.cnn_channels_last: auto): NCHW" in capsys.readouterr().err
    assert layouts and not any(layouts)  # no 3x3 conv ran channels-last
    assert load_config(tmp_path / "auto" / "config.yaml").model.init_args.cnn_channels_last is None


@pytest.mark.parametrize("argv, message", [
    ([], "no training data: pass --data-path"),
    (["--data-path", "/nonexistent/folder"], "does not exist"),
    (["--data-path", "{data}", "--trainer.lrr=1"], "unknown config key 'trainer.lrr'"),
    (["--data-path", "{data}", "--global-batch-size", "3", "--gradient-accumulation-steps", "2"], "multiple of"),
    (["--data-path", "{data}", "--trainer.lr=-1e-4"], "'trainer.lr' is -0.0001; it must be > 0."),
    (["--data-path", "{data}", "--trainer.beta2=1.5"], "'trainer.beta2' is 1.5; it must be <= 1."),
    (["--data-path", "{data}", "--model.init_args.codebook_size=0"], "'model.init_args.codebook_size' is 0"),
])
def test_user_errors_exit_2_with_a_message(argv, message, photos, tmp_path, capsys):
    argv = [a.format(data=photos) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(["--model-config", str(CONFIG), "--save-path", str(tmp_path), "--sub-exp-dir", "x", "--iterations", "2",
              "--global-batch-size", "4", *TEST_FLAGS, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_divergence_stops_with_one_line_naming_where_to_go_back_to(photos, tmp_path, capsys):
    """lr 1e6: the first update blows the weights up, the following losses are NaN/inf and are skipped, and the run
    stops with one line naming the checkpoint written before the first skipped step; --resume-from 0 (with a sane lr)
    then starts over, with the suspect checkpoint set aside, not deleted."""
    args = ["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--sub-exp-dir",
            "nan", "--iterations", "10", "--global-batch-size", "4", "--perceptual-weight", "0", "--ckpt-every", "1",
            "--trainer.distill_loss=false", "--trainer.max_consecutive_nonfinite=2", *TEST_FLAGS]
    with pytest.raises(SystemExit) as info:
        main([*args, "--trainer.lr=1e6"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "skipping the update (2 in a row, 2 skipped in total)" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the loss was NaN/inf for 3 consecutive steps")
    assert "The last checkpoint before the first skipped step is step 1" in last and "--resume-from 1" in last
    assert checkpoint_steps(tmp_path / "nan") == [1]  # nothing was saved once the losses went non-finite
    main([*args, "--trainer.lr=1e-4", "--iterations", "2", "--resume-from", "0"])
    assert checkpoint_steps(tmp_path / "nan") == [1, 2]
    assert (tmp_path / "nan" / "checkpoints" / "abandoned" / "0000001.pt").is_file()
    assert "--resume-from 0" in (tmp_path / "nan" / "checkpoints" / "abandoned" / "0000001.pt.why.txt").read_text()
    assert load_training_checkpoint(tmp_path / "nan" / "checkpoints" / "0000002.pt")["config"]["trainer"]["lr"] == 1e-4


# -- exact resume after SIGKILL --------------------------------------------------------------------------------------
def run_killed_then_resumed(args: list[str], tmp_path: Path, kill_at: int, steps: int) -> tuple[Path, int]:
    """Run A: `args` to the end (sub-exp A). Run B: the same command, SIGKILLed once its checkpoint `kill_at`
    appears, then run again to the end (logs a.log, b1.log, b2.log in tmp_path). Returns run B's folder and the step
    its rerun resumed from."""
    env = subprocess_env()
    with open(tmp_path / "a.log", "w") as log:
        assert subprocess.run(cli(*args, "--sub-exp-dir", "A"), env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, timeout=300).returncode == 0, (tmp_path / "a.log").read_text()
    run_b = tmp_path / "B"
    with open(tmp_path / "b1.log", "w") as log:
        proc = subprocess.Popen(cli(*args, "--sub-exp-dir", "B"), env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while (not (run_b / "checkpoints" / f"{kill_at:07d}.pt").exists() and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed_from = max(checkpoint_steps(run_b))
    assert resumed_from < steps, "the killed run finished before the kill; nothing was resumed"
    with open(tmp_path / "b2.log", "w") as log:
        assert subprocess.run(cli(*args, "--sub-exp-dir", "B"), env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, timeout=300).returncode == 0, (tmp_path / "b2.log").read_text()
    return run_b, resumed_from


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(photos, tmp_path):
    args = ["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--iterations",
            "6", "--global-batch-size", "4", "--log-every", "1", "--ckpt-every", "2", "--disc-start", "3",
            "--aux-loss-end", "2", "--ema", "--trainer.deterministic=true", *TEST_FLAGS]
    run_b, resumed_from = run_killed_then_resumed(args, tmp_path, kill_at=2, steps=6)
    assert f"at step {resumed_from}" in (tmp_path / "b2.log").read_text()

    metrics_a, metrics_b = read_metrics(tmp_path / "A"), read_metrics(run_b)
    assert sorted(metrics_b) == sorted(metrics_a) == list(range(1, 7))
    steps_b = [json.loads(line)["step"] for line in (run_b / "metrics.jsonl").read_text().splitlines()]
    assert steps_b == list(range(1, 7))  # the steps redone after the resume replaced their first lines
    for step in range(1, 7):  # bit-identical losses, before and after the resume point
        assert_same_metrics(metrics_a[step], metrics_b[step])
    assert metrics_a[6]["train/disc"] > 0  # the discriminator phase was part of the comparison

    assert not list(run_b.glob("checkpoints/*.tmp")) and checkpoint_steps(run_b) == [2, 4, 6]
    for step in (2, 4, 6):
        ckpt = load_training_checkpoint(run_b / "checkpoints" / f"{step:07d}.pt")
        assert {"model", "ema", "optimizer", "discriminator", "optimizer_disc", "rng", "data_state",
                "config"} <= set(ckpt) and ckpt["step"] == ckpt["steps"] == step
    final_a = load_training_checkpoint(tmp_path / "A" / "checkpoints" / "0000006.pt")
    final_b = load_training_checkpoint(run_b / "checkpoints" / "0000006.pt")
    for entry in ("model", "ema", "discriminator"):
        for key, value in final_a[entry].items():
            assert torch.equal(value, final_b[entry][key]), (entry, key)


# -- data parallelism ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(photos, tmp_path):
    """2 gloo ranks x 2 images == 1 process x 4 images. The discriminator stays off (its BatchNorm sees per-rank
    batches) and so does the entropy loss (computed per rank); LPIPS is off because its random VGG's per-pixel
    normalisation of near-zero features turns batch-size-dependent rounding into 0.4% gradient differences."""
    args = ["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--iterations",
            "2", "--global-batch-size", "4", "--log-every", "1", "--ckpt-every", "1", "--disc-start", "100",
            "--entropy-loss-ratio", "0", "--perceptual-weight", "0", "--aux-loss-end", "2", *TEST_FLAGS]
    launcher("train_vq.sh", 2, *args, "--sub-exp-dir", "ddp2", log=tmp_path / "ddp2.log")
    with open(tmp_path / "one.log", "w") as log:
        assert subprocess.run(cli(*args, "--sub-exp-dir", "one"), env=subprocess_env(), cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, timeout=300).returncode == 0
    assert "world size 2" in (tmp_path / "ddp2.log").read_text()

    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "ddp2")
    for step in (1, 2):
        for key in ("train/total", "train/rec", "train/rec_direct", "train/fea_rec", "train/vq", "train/commit",
                    "train/semantic"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-5, abs=1e-7), (step, key)
    ckpt_one = [load_training_checkpoint(tmp_path / "one" / "checkpoints" / f"000000{s}.pt") for s in (1, 2)]
    ckpt_two = [load_training_checkpoint(tmp_path / "ddp2" / "checkpoints" / f"000000{s}.pt") for s in (1, 2)]
    assert ckpt_two[1]["world_size"] == 2 and len(ckpt_two[1]["rng"]) == 2
    names = [name for name, _ in load_tokenizer(None, CONFIG).named_parameters()]
    # Step-1 gradients (AdamW's first moment after one step is (1 - beta1) * clipped gradient) agree to 1e-5.
    grads_one = {n: ckpt_one[0]["optimizer"]["state"][i]["exp_avg"] / 0.1 for i, n in enumerate(names)}
    grads_two = {n: ckpt_two[0]["optimizer"]["state"][i]["exp_avg"] / 0.1 for i, n in enumerate(names)}
    for name in names:
        torch.testing.assert_close(grads_two[name], grads_one[name], rtol=0, atol=1e-5)
    # Parameters after 2 steps agree to 1e-5, except where the gradient is pure rounding noise (e.g. conv biases
    # right before a GroupNorm, whose exact gradient is 0): AdamW normalises those into full +-lr steps.
    g_max = max(g.abs().max() for g in grads_one.values())
    noise, total = 0, 0
    for name in names:
        diff = (ckpt_two[1]["model"][name] - ckpt_one[1]["model"][name]).abs()
        noisy = grads_one[name].abs() < 1e-5 * g_max
        assert not (diff[~noisy] > 1e-5).any(), name
        noise, total = noise + int((diff[noisy] > 1e-5).sum()), total + diff.numel()
    assert noise < 1e-3 * total


@pytest.mark.slow
def test_fsdp_two_ranks_train_and_resume(photos, tmp_path):
    args = ["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--iterations",
            "3", "--global-batch-size", "4", "--log-every", "1", "--ckpt-every", "2", "--disc-start", "2",
            "--sub-exp-dir", "fsdp", *TEST_FLAGS]
    launcher("train_vq_fsdp.sh", 2, *args, "--early-stop-iter", "2", log=tmp_path / "first.log")
    launcher("train_vq_fsdp.sh", 2, *args, log=tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert "data parallel fsdp" in log and "at step 2" in log
    metrics = read_metrics(tmp_path / "fsdp")
    assert sorted(metrics) == [1, 2, 3] and all(np.isfinite(m["train/total"]) for m in metrics.values())
    ckpt = load_training_checkpoint(tmp_path / "fsdp" / "checkpoints" / "0000003.pt")
    assert ckpt["extra"]["optimizer_format"] == "fqn" and "encoder.conv_in.weight" in ckpt["optimizer"]["state"]
    load_tokenizer(tmp_path / "fsdp" / "checkpoints" / "0000003.pt", tmp_path / "fsdp" / "config.yaml")  # strict


# -- learning --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
# The 2D debug tokenizer; the 1D tokenizer's learning is test_reduced_1d_demo_learns_visibly's (tests/stages/
# test_demo.py: the demo's 1D tokenizer through train_vq, held-out PSNR and usage), which CI runs anyway.
@pytest.mark.parametrize("config", [CONFIG_2D], ids=["2d"])
def test_reconstruction_improves_and_codebook_stays_used(config, tmp_path):
    data = write_digits(tmp_path / "digits", 16)
    tic = time.time()
    main(["--model-config", str(config), "--data-path", str(data), "--save-path", str(tmp_path), "--sub-exp-dir",
          "learn", "--iterations", "150", "--global-batch-size", "8", "--log-every", "1", "--ckpt-every", "150",
          "--disc-start", "100000", "--perceptual-weight", "0", "--aux-loss-end", "0", "--entropy-loss-ratio", "0.05",
          "--trainer.lr=3e-4", "--trainer.lr_scheduler=constant", "--trainer.distill_loss=false", *TEST_FLAGS])
    elapsed = time.time() - tic
    metrics = read_metrics(tmp_path / "learn")
    start = np.mean([metrics[s]["train/rec"] for s in range(1, 6)])
    end = np.mean([metrics[s]["train/rec"] for s in range(141, 151)])
    print(f"{config.name}: rec {start:.4f} -> {end:.4f} in {elapsed:.0f} s")
    assert end <= 0.5 * start
    assert min(metrics[s]["train/codebook_usage"] for s in range(100, 151)) > 0.5
    assert (tmp_path / "learn" / "previews" / "0000150.png").is_file()


def test_a_failed_rerun_leaves_the_runs_config_alone(photos, tmp_path, capsys):
    """config.yaml describes the checkpoints beside it: a rerun whose config cannot load them stops before writing
    anything; a rerun that changes the run keeps the old config as config.<step>.yaml."""
    args = ["--data-path", str(photos), "--save-path", str(tmp_path), "--sub-exp-dir", "run", "--global-batch-size",
            "2", "--disc-start", "100", *TEST_FLAGS]
    main(["--model-config", str(CONFIG), "--iterations", "1", *args])
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(SystemExit) as info:
        main(["--model-config", str(CONFIG_2D), "--iterations", "2", *args])  # the 2D tokenizer: other weights
    err = capsys.readouterr().err
    assert info.value.code == 2 and "does not match the model" in err and "Traceback" not in err
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    main(["--model-config", str(CONFIG), "--iterations", "2", *args])  # a longer schedule: the run changes
    assert (tmp_path / "run" / "config.0000001.yaml").read_text() == saved
    assert load_config(tmp_path / "run" / "config.yaml").trainer.iterations == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_kill_9_of_the_launch_script_leaves_no_trainer_and_the_rerun_resumes_exactly(photos, tmp_path):
    """kill -9 of scripts/train_vq.sh's whole process group: the torchrun worker (its own session) dies with its
    launcher instead of training on, and the same command resumes exactly where the last checkpoint was."""
    args = ["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--iterations",
            "6", "--global-batch-size", "2", "--log-every", "1", "--ckpt-every", "2", "--disc-start", "100",
            "--trainer.deterministic=true", *TEST_FLAGS]
    with open(tmp_path / "reference.log", "w") as log:  # a process like the launched one (not this test's threads)
        assert subprocess.run(cli(*args, "--sub-exp-dir", "reference"), env=subprocess_env(), cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, timeout=300).returncode == 0
    env = subprocess_env(gpus="1", PORT=str(free_port()), TORCH_RUN_PATH=f"{sys.executable} -m gigatok.infra.launch")
    run = tmp_path / "killed"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(["bash", str(REPO / "scripts" / "train_vq.sh"), *args, "--sub-exp-dir", "killed"],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while not (run / "checkpoints" / "0000002.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the script, torchrun and its agent: everything in the group
        proc.wait()
    worker = int((run / ".lock").read_text().split()[1])  # "pid N on host, started ..." of the live trainer
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the torchrun worker outlived its launcher"
    steps_at_death = checkpoint_steps(run)
    time.sleep(1.0)
    assert checkpoint_steps(run) == steps_at_death and max(steps_at_death) < 6  # nothing trains on
    launcher("train_vq.sh", 1, *args, "--sub-exp-dir", "killed", log=tmp_path / "second.log")
    assert f"at step {max(steps_at_death)}" in (tmp_path / "second.log").read_text()
    reference, resumed = read_metrics(tmp_path / "reference"), read_metrics(run)
    assert sorted(resumed) == sorted(reference) == list(range(1, 7))
    for step in range(1, 7):
        assert_same_metrics(reference[step], resumed[step])


def test_a_second_trainer_on_a_live_run_folder_stops_naming_the_first(photos, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from gigatok.infra.run_dir import run_dir_lock\n"
        f"with run_dir_lock({str(run)!r}):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(60)\n")], env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as info:
            main(["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path),
                  "--sub-exp-dir", "run", "--iterations", "1", "--global-batch-size", "2", *TEST_FLAGS])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "Traceback" not in err
        assert f"in use by another trainer (pid {holder.pid} on" in err
        assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    main(["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--sub-exp-dir",
          "run", "--iterations", "1", "--global-batch-size", "2", *TEST_FLAGS])  # the kernel released the lock
    assert checkpoint_steps(run) == [1]


def test_loading_a_run_with_the_wrong_config_says_what_differs_and_where_the_runs_config_is(photos, tmp_path):
    """The README's debug command trains with a DINOv2-S teacher (a 384-wide distillation head); loading its
    checkpoint with VQ_debug.yaml (DINOv2-B) must point at the difference and at the run's own config.yaml, and a
    checkpoint of another architecture is not mistaken for one of another resolution."""
    from gigatok.infra.checkpoint import CheckpointError

    main(["--model-config", str(CONFIG), "--data-path", str(photos), "--save-path", str(tmp_path), "--sub-exp-dir",
          "debug", "--iterations", "1", "--global-batch-size", "2", *TEST_FLAGS])
    ckpt = tmp_path / "debug" / "checkpoints" / "0000001.pt"
    with pytest.raises(CheckpointError) as info:
        load_tokenizer(ckpt, CONFIG)
    message = str(info.value)
    assert "trainer.distill_model: 'dinov2-vit-s' -> 'dinov2-vit-b'" in message
    assert f"Pass --model-config {tmp_path / 'debug' / 'config.yaml'}" in message
    load_tokenizer(ckpt, tmp_path / "debug" / "config.yaml")  # ... which loads it
    with pytest.raises(CheckpointError) as info:
        load_tokenizer(ckpt, REPO / "configs" / "vq" / "VQ_SS256.yaml")
    message = str(info.value)
    assert "trained at" not in message and "shape mismatches" in message
    assert "The checkpoint records the config it was trained with" in message and "cnn_ch: 32 -> 128" in message
