"""AR training (`gigatok.stages.train_c2i`) and validation loss (`gigatok.stages.val_loss_c2i`) on CPU with a debug GPT.

Codes: sklearn digits (labels = digits) extracted with the tiny VQ_debug tokenizer (random weights, 64 codes,
codebook 1024), ten crops per image.
"""
from __future__ import annotations

import json
import math
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
import torch.nn.functional as F
from helpers import CONFIG, make_digit_folder, save_official_tokenizer

from gigatok.builders import load_gpt
from gigatok.config import GPTTrainConfig, load_config, to_dict
from gigatok.data.codes import CodeDataset
from gigatok.infra.checkpoint import read_checkpoint
from gigatok.infra.dist import cpu_bf16_warning
from gigatok.stages.extract_codes import main as extract_main
from gigatok.stages.train_c2i import main as train_main
from gigatok.stages.val_loss_c2i import main as val_main

pytestmark = pytest.mark.usefixtures("one_thread_module")

REPO = Path(__file__).resolve().parents[2]
NUM_IMAGES = 64
# No dropout of any kind: a 2-rank run then sees exactly the computation of 1 rank (dropout masks are drawn per
# rank from per-rank seeds, as official, so with dropout the two runs would differ by design).
NO_DROPOUT = ["--dropout-p", "0", "--token-dropout-p", "0", "--class-dropout-p", "0"]


@pytest.fixture(scope="module")
def codes(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    images = make_digit_folder(tmp / "digits", NUM_IMAGES)
    ckpt = save_official_tokenizer(tmp / "tok.pt")
    code_path = tmp / "codes"
    extract_main(["--data-path", str(images), "--code-path", str(code_path), "--model-config", str(CONFIG),
                  "--vq-ckpt", str(ckpt), "--ten-crop", "--num-workers", "0", "--device", "cpu"])
    return code_path


def _argv(code_path: Path, save_path: Path, name: str, *extra: str) -> list[str]:
    return ["--code-path", str(code_path), "--save-path", str(save_path), "--sub-exp-dir", name,
            "--gpt-model", "debug", "--num-workers", "0", "--device", "cpu", "--mixed-precision", "none",
            "--lr", "1e-3", "--log-every", "1", *extra]


def _metrics(run_dir: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines]
    assert steps == sorted(set(steps)), steps  # one line per logged step, in order
    return {line["step"]: line for line in lines}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(codes, tmp_path_factory) -> Path:
    """A debug GPT trained for 150 steps (EMA on, default dropouts, bf16 autocast as the recipe where the CPU has
    native bf16 kernels; emulated bf16, e.g. on AVX2-only CPUs, made this fixture take 135 s instead of ~10 s)."""
    save_path = tmp_path_factory.mktemp("runs")
    precision = "none" if cpu_bf16_warning(torch.device("cpu"), torch.bfloat16) else "bf16"
    train_main(_argv(codes, save_path, "learn", "--iterations", "150", "--global-batch-size", "32",
                     "--log-every", "25", "--ckpt-every", "75", "--ema", "--mixed-precision", precision))
    return save_path / "learn"


def test_ar_training_learns_and_writes_self_describing_checkpoints(trained):
    metrics = _metrics(trained)
    assert sorted(metrics) == [25, 50, 75, 100, 125, 150]
    first, last = metrics[25]["train/loss"], metrics[150]["train/loss"]
    assert first < math.log(1024) + 0.1 and last < math.log(1024) - 3.0, (first, last)  # ln(1024) = 6.93
    for key in ("train/lr", "train/grad_norm", "train/tokens_per_s", "train/skipped_steps", "train/epoch"):
        assert key in metrics[150]
    assert metrics[150]["train/skipped_steps"] == 0
    ckpt = read_checkpoint(trained / "checkpoints" / "0000150.pt")
    for key in ("model", "ema", "optimizer", "steps", "config", "rng", "data_state", "extra"):
        assert key in ckpt, key
    assert ckpt["steps"] == 150 and ckpt["config"]["model"]["gpt_model"] == "debug"
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    gpt_config = ckpt["extra"]["gpt_config"]
    assert (gpt_config["vocab_size"], gpt_config["block_size"], gpt_config["num_classes"]) == (1024, 64, 10)
    gpt = load_gpt(ckpt, "debug", vocab_size=1024, block_size=64, num_classes=10)  # strict load into a bare GPT
    assert gpt.cls_embedding.embedding_table.weight.shape == (11, 64)  # 10 classes + the null class
    saved = load_config(trained / "config.yaml", schema=GPTTrainConfig)  # the resolved config, read back
    assert (saved.model.gpt_model, saved.model.vocab_size, saved.model.block_size, saved.model.num_classes) == (
        "debug", 1024, 64, 10)
    assert saved.trainer.iterations == 150 and saved.trainer.ema and ckpt["config"] == to_dict(saved)


def test_val_loss_entry_point(trained, codes, tmp_path, capsys):
    ckpt_path = trained / "checkpoints" / "0000150.pt"
    out = tmp_path / "val.json"
    val_main(["--code-path", str(codes), "--gpt-ckpt", str(ckpt_path), "--num-workers", "0", "--device", "cpu",
              "--precision", "none", "--per-proc-batch-size", "24", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["num_images"] == NUM_IMAGES and result["num_codes"] == NUM_IMAGES * 64
    # the same number by hand: eval-mode GPT, true labels, center view of every image
    gpt = load_gpt(read_checkpoint(ckpt_path), "debug", vocab_size=1024, block_size=64, num_classes=10)
    dataset = CodeDataset(codes, view="center")
    all_codes = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.stack([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        logits, _ = gpt(all_codes[:, :-1], labels)
    expected = F.cross_entropy(logits.reshape(-1, 1024), all_codes.reshape(-1)).item()
    assert result["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert result["val_loss"] < math.log(1024) - 2.0
    # on the fly from the images (center_crop_arr, tokenized with the same tokenizer): runs and writes its JSON
    val_main(["--data-path", str(codes.parent / "digits"), "--tok-config", str(CONFIG), "--vq-ckpt",
              str(codes.parent / "tok.pt"), "--gpt-ckpt", str(ckpt_path), "--num-workers", "0", "--device", "cpu",
              "--out", str(tmp_path / "val_images.json")])
    assert json.loads((tmp_path / "val_images.json").read_text())["num_images"] == NUM_IMAGES
    # a GPT for other codes (64 per image) is refused with a clear message on codes of 16 per image
    other = _official_codes(tmp_path / "other", length=16)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        val_main(["--code-path", str(other), "--gpt-ckpt", str(ckpt_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "16 tokens per image" in err and "block_size 64" in err and "Traceback" not in err


def test_meta_mismatch_with_explicit_flags_is_refused(codes, tmp_path, capsys):
    def run(*extra: str) -> str:
        with pytest.raises(SystemExit) as info:
            train_main(_argv(codes, tmp_path, "bad", "--iterations", "2", "--global-batch-size", "8", *extra))
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    err = run("--vocab-size", "16384")
    assert "codebook_size 1024" in err and "vocab_size 16384" in err
    assert "vocab_size 16384" in run("--tok-config", str(REPO / "configs" / "vq" / "VQ_SS256.yaml"))
    assert "image_size 32" in run("--image-size", "256")
    assert "block_size 256" in run("--gpt-2d", "--downsample-size", "2")
    assert "fewer than one global batch" in run("--global-batch-size", "4096")
    assert "not divisible" in run("--global-batch-size", "9", "--gradient-accumulation-steps", "2")


@pytest.mark.slow
def test_damaged_code_shards_are_named_in_one_line(codes, tmp_path, capsys):
    import shutil

    broken = tmp_path / "codes"
    shutil.copytree(codes, broken)
    shard = sorted(broken.glob("codes_*.npy"))[0]
    np.save(shard, np.array([{"not": "codes"}], dtype=object), allow_pickle=True)
    with pytest.raises(SystemExit) as info:
        train_main(_argv(broken, tmp_path, "bad", "--iterations", "2", "--global-batch-size", "8"))
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and f"'{shard}'" in err and "not a plain integer" in err


def test_resume_after_sigkill_continues_exactly(codes, tmp_path):
    """SIGKILL a run after its checkpoint at step 10; the rerun logs exactly the losses of an uninterrupted run
    (data position, dropout RNG, optimizer, EMA and log accumulators all restored)."""
    args = ["--iterations", "60", "--global-batch-size", "8", "--ckpt-every", "10", "--ema"]  # default dropouts
    train_main(_argv(codes, tmp_path, "reference", *args))
    reference = _metrics(tmp_path / "reference")

    command = [sys.executable, "-m", "gigatok.stages.train_c2i", *_argv(codes, tmp_path, "killed", *args)]
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "0000010.pt"
    deadline = time.time() + 120
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("*.pt"))
    assert "0000060.pt" not in saved

    train_main(_argv(codes, tmp_path, "killed", *args))
    resumed = _metrics(tmp_path / "killed")
    assert sorted(resumed) == sorted(reference)
    assert [resumed[s]["train/loss"] for s in sorted(resumed)] == [reference[s]["train/loss"]
                                                                   for s in sorted(reference)]
    final = read_checkpoint(tmp_path / "killed" / "checkpoints" / "0000060.pt")
    expected = read_checkpoint(tmp_path / "reference" / "checkpoints" / "0000060.pt")
    for entry in ("model", "ema"):
        for key, value in expected[entry].items():
            torch.testing.assert_close(final[entry][key], value, rtol=0, atol=0)


def _launch(script: str, codes: Path, save_path: Path, name: str, *extra: str) -> None:
    argv = _argv(codes, save_path, name, "--iterations", "8", "--global-batch-size", "16", *NO_DROPOUT, *extra)
    result = subprocess.run(["bash", str(REPO / "scripts" / script), *argv], env=_env(gpus="2", PORT=str(_free_port())),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2" in result.stderr


@pytest.mark.slow
def test_two_process_ddp_and_fsdp_equal_one_process(codes, tmp_path):
    """Global batch 16 = 1 x 16 = 1 x 8 x 2 accumulation = 2 ranks x 8 (DDP, FSDP2): same losses and weights."""
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("torchrun cannot start here")
    one = ["--iterations", "8", "--global-batch-size", "16", *NO_DROPOUT]
    train_main(_argv(codes, tmp_path, "one", *one))
    train_main(_argv(codes, tmp_path, "accum", *one, "--gradient-accumulation-steps", "2"))
    _launch("train_c2i.sh", codes, tmp_path, "ddp")
    _launch("train_c2i_fsdp.sh", codes, tmp_path, "fsdp")
    reference = _metrics(tmp_path / "one")
    weights = read_checkpoint(tmp_path / "one" / "checkpoints" / "0000008.pt")["model"]
    assert reference[8]["train/loss"] < reference[1]["train/loss"]
    for run in ("accum", "ddp", "fsdp"):
        metrics = _metrics(tmp_path / run)
        for step in range(1, 9):
            assert metrics[step]["train/loss"] == pytest.approx(reference[step]["train/loss"], abs=1e-5), (run, step)
        state = read_checkpoint(tmp_path / run / "checkpoints" / "0000008.pt")["model"]
        assert state.keys() == weights.keys()
        for key, value in weights.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=1e-5, msg=f"{run}: {key}")


def test_wsd_cool_down_branches_from_the_stable_phase(codes, tmp_path, capsys):
    """WSD: the decay phase goes to cd_records/cd_fract_0.2_to_<iters>/; another length resumes from the hold."""
    args = ["--global-batch-size", "8", "--lr-scheduler", "wsd", "--ckpt-every", "100", "--log-every", "5"]
    train_main(_argv(codes, tmp_path, "wsd", "--iterations", "20", *args))
    run = tmp_path / "wsd"
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["0000016.pt"]  # the hold, always saved
    cd20 = run / "cd_records" / "cd_fract_0.2_to_20"
    assert sorted(p.name for p in (cd20 / "checkpoints").glob("*.pt")) == ["0000020.pt"]
    assert sorted(_metrics(run)) == [5, 10, 15] and sorted(_metrics(cd20)) == [20]
    assert _metrics(cd20)[20]["train/lr"] < 1e-3
    capsys.readouterr()
    train_main(_argv(codes, tmp_path, "wsd", "--iterations", "25", *args))  # hold 20: resume from the step-16 file
    assert f"resuming from {run / 'checkpoints' / '0000016.pt'} at step 16" in capsys.readouterr().err
    assert (run / "cd_records" / "cd_fract_0.2_to_25" / "checkpoints" / "0000025.pt").is_file()
    assert (run / "checkpoints" / "0000020.pt").is_file()  # hold of the 25-step schedule, in the stable folder


def _official_codes(root: Path, length: int) -> Path:
    """16 images in the official per-image layout: (1, 10, length) int64 codes in [0, 512), labels (1,) in [0, 4)."""
    rng = np.random.default_rng(0)
    (root / "imagenet32_codes").mkdir(parents=True)
    (root / "imagenet32_labels").mkdir()
    for i in range(16):
        np.save(root / "imagenet32_codes" / f"{i}.npy", rng.integers(0, 512, size=(1, 10, length)))
        np.save(root / "imagenet32_labels" / f"{i}.npy", np.array([i % 4]))
    return root


def test_official_code_layout_trains(tmp_path):
    root = _official_codes(tmp_path / "imagenet_code_c2i_flip_ten_crop", length=16)
    train_main(_argv(root, tmp_path, "official", "--iterations", "4", "--global-batch-size", "8",
                     "--vocab-size", "512", "--num-classes", "4"))
    ckpt = read_checkpoint(tmp_path / "official" / "checkpoints" / "0000004.pt")
    assert ckpt["extra"]["gpt_config"]["vocab_size"] == 512 and ckpt["extra"]["gpt_config"]["block_size"] == 16


def test_bf16_autocast_on_a_cpu_without_native_kernels_is_warned_about():
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    note = cpu_bf16_warning(torch.device("cpu"), torch.bfloat16)
    assert (note is None) == supported
    if note is not None:
        assert "--mixed-precision none" in note
    assert cpu_bf16_warning(torch.device("cpu"), None) is None
    assert cpu_bf16_warning(torch.device("cuda"), torch.bfloat16) is None


def test_later_stages_size_the_gpt_from_its_run_record(trained, codes, tmp_path, capsys):
    """A GPT's shape comes from its checkpoint's record, else from the run folder's config.yaml (or the config.json
    of older runs) for files that record nothing; an explicit flag that contradicts the record is refused."""
    from gigatok.builders import resolve_checkpoint_gpt
    from gigatok.config import GPTModelConfig
    from gigatok.errors import UserError
    from gigatok.gpt.config import GPTConfig

    ckpt_path = trained / "checkpoints" / "0000150.pt"
    ckpt = read_checkpoint(ckpt_path)
    expected = GPTConfig(**ckpt["extra"]["gpt_config"])
    assert expected.vocab_size == 1024 and expected.num_classes == 10 and expected.n_layer == 2
    resolved = resolve_checkpoint_gpt(GPTModelConfig(gpt_ckpt=str(ckpt_path)), ckpt, vocab_size=None,
                                      block_size=None, source="x")
    assert resolved == expected
    with pytest.raises(UserError, match="is a debug .* --gpt-model is GPT-B"):
        resolve_checkpoint_gpt(GPTModelConfig(gpt_model="GPT-B"), ckpt, vocab_size=None, block_size=None, source="x")
    with pytest.raises(UserError, match="num_classes 10 but --num-classes is 1000"):
        resolve_checkpoint_gpt(GPTModelConfig(num_classes=1000), ckpt, vocab_size=None, block_size=None, source="x")

    # A bare state dict in the run's checkpoints folder: sized by the run's config.yaml.
    bare = trained / "checkpoints" / "bare_weights.pt"
    torch.save({"model": ckpt["model"]}, bare)
    try:
        from_yaml = resolve_checkpoint_gpt(GPTModelConfig(gpt_ckpt=str(bare)), read_checkpoint(bare),
                                           vocab_size=None, block_size=None, source="x")
    finally:
        bare.unlink()
    assert from_yaml.vocab_size == 1024 and from_yaml.num_classes == 10 and from_yaml.pos_type == "learned_1d"
    assert (from_yaml.dim, from_yaml.n_layer) == (expected.dim, expected.n_layer)
    # ... or by the config.json that runs wrote before config.yaml existed.
    old_run = tmp_path / "old_run"
    (old_run / "checkpoints").mkdir(parents=True)
    torch.save({"model": ckpt["model"]}, old_run / "checkpoints" / "0000150.pt")
    (old_run / "config.json").write_text(json.dumps({"gpt_model": "debug", "derived": {
        "gpt_config": ckpt["extra"]["gpt_config"]}}))
    path = old_run / "checkpoints" / "0000150.pt"
    assert resolve_checkpoint_gpt(GPTModelConfig(gpt_ckpt=str(path)), read_checkpoint(path), vocab_size=None,
                                  block_size=None, source="x") == expected
    # The same checks through an entry point: one line, exit code 2.
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        val_main(["--code-path", str(codes), "--gpt-ckpt", str(ckpt_path), "--gpt-model",
                  "GPT-B", "--device", "cpu"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--gpt-model is GPT-B" in err and "Traceback" not in err
