"""Linear probing (`gigatok.engine.linear_probe`, `gigatok.stages.lin_probe_gpt`, `gigatok.stages.lin_probe`) on CPU.

Images: a tiny ImageFolder pair (2 colour classes, 36 px) under tmp_path. Models: the VQ_debug tokenizer (32 px,
64 codes, codebook 1024) and a debug GPT, both with random weights saved in our checkpoint layouts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_exit_2
from helpers import make_colour_folders
from torch.utils.data import DataLoader, TensorDataset

from gigatok.builders import build_gpt_config, build_tokenizer
from gigatok.config import GPTModelConfig, load_config
from gigatok.engine.linear_probe import (
    LARS,
    LinearProbe,
    ProbeSchedule,
    evaluate,
    probe_lr,
    topk_correct,
    train_one_epoch,
)
from gigatok.gpt.model import GPT
from gigatok.infra.checkpoint import read_checkpoint
from gigatok.stages.lin_probe import main as tok_probe_main
from gigatok.stages.lin_probe_gpt import gpt_features_fn, load_frozen_gpt
from gigatok.stages.lin_probe_gpt import main as gpt_probe_main

pytestmark = pytest.mark.usefixtures("one_thread_module")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"


def save_gpt(path: Path, num_classes: int = 2, official: bool = False) -> Path:
    torch.manual_seed(1)
    config = build_gpt_config("debug", vocab_size=1024, block_size=64, num_classes=num_classes)
    gpt = GPT(config)
    if official:  # official train_c2i file: weights and steps only
        torch.save({"model": gpt.state_dict(), "steps": 5}, path)
    else:  # our train_c2i layout: the GPT config is recorded
        torch.save({"model": gpt.state_dict(), "step": 5, "extra": {"gpt_config": dataclasses.asdict(config)},
                    "config": {"gpt_model": "debug"}}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("probe")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(CONFIG))
    torch.save({"model": tokenizer.state_dict(), "steps": 3}, tmp / "tok.pt")
    return {"tmp": tmp, "data": make_colour_folders(tmp / "imagenet"), "tok": tmp / "tok.pt",
            "gpt": save_gpt(tmp / "gpt.pt")}


def gpt_argv(files: dict[str, Path], save: Path, name: str, *extra: str) -> list[str]:
    return ["--data-root", str(files["data"]), "--save-path", str(save), "--sub-exp-dir", name,
            "--model-config", str(CONFIG), "--vq-ckpt", str(files["tok"]), "--gpt-ckpt", str(files["gpt"]),
            "--num-workers", "0", "--device", "cpu", "--batch-size", "4", "--lr", "2.0", "--log-every", "1", *extra]


# -- optimizer, schedule, head ------------------------------------------------------------------------------------
def test_lars_matches_a_reference_update():
    torch.manual_seed(0)
    weight, bias, zero = torch.randn(3, 4), torch.randn(4), torch.zeros(2, 2)
    params = [torch.nn.Parameter(t.clone()) for t in (weight, bias, zero)]
    lr, wd, momentum, trust = 0.5, 0.1, 0.9, 0.001
    optimizer = LARS(params, lr=lr, weight_decay=wd, momentum=momentum, trust_coefficient=trust)
    expected = [weight.clone(), bias.clone(), zero.clone()]
    mus = [torch.zeros_like(t) for t in expected]
    for step in range(3):
        grads = [torch.randn_like(t) for t in expected]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for i, (p, g) in enumerate(zip(expected, grads)):
            if p.ndim > 1:  # weight decay and trust ratio only on matrices
                g = g + wd * p
                p_norm, g_norm = p.norm(), g.norm()
                g = g * (trust * p_norm / g_norm if p_norm > 0 and g_norm > 0 else 1.0)
            mus[i] = momentum * mus[i] + g
            expected[i] = p - lr * mus[i]
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
    assert params[2].abs().sum() > 0  # the all-zero matrix moved with ratio 1 (no 0/0)


def test_lr_schedule_follows_mae():
    schedule = ProbeSchedule(lr=3.2, epochs=90, warmup_epochs=10, min_lr=0.0)
    assert schedule.lr_at(0) == 0.0
    assert schedule.lr_at(5) == pytest.approx(1.6)
    assert schedule.lr_at(10) == pytest.approx(3.2)
    assert schedule.lr_at(50) == pytest.approx(1.6)  # half-way through the cosine
    assert schedule.lr_at(90) == pytest.approx(0.0, abs=1e-12)
    with_floor = ProbeSchedule(lr=1.0, epochs=20, warmup_epochs=0, min_lr=0.1)
    assert with_floor.lr_at(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 20)))
    assert probe_lr(0.1, None, 128 * 64) == pytest.approx(3.2)  # the paper's 8192 global batch
    assert probe_lr(0.1, 0.5, 128 * 64) == 0.5


def test_probe_head_matches_the_official_layout_and_init():
    torch.manual_seed(0)
    probe = LinearProbe(768, 1000)
    assert list(probe.state_dict()) == ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
                                        "head.weight", "head.bias"]
    assert not probe.bn.affine and probe.bn.eps == 1e-6
    assert probe.head.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert probe.head.weight.abs().max() < 0.06 and probe.head.bias.abs().sum() == 0


def test_topk_correct_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), ks=(1, 2, 5)) == [1, 2, 3]


def test_probe_learns_a_linearly_separable_problem():
    """LARS + BN head on frozen 'features' (Gaussian blobs): from chance to (nearly) perfect accuracy."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen) * 3
    labels = torch.arange(4).repeat_interleave(96)
    features = centers[labels] + torch.randn(len(labels), 16, generator=gen)
    train = DataLoader(TensorDataset(features[::2], labels[::2]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(features[1::2], labels[1::2]), batch_size=64)
    torch.manual_seed(0)
    probe = LinearProbe(16, 4)
    device = torch.device("cpu")
    before = evaluate(probe, val, lambda x: x, device, None)["top1"]
    optimizer = LARS(probe.parameters(), lr=50.0)
    schedule = ProbeSchedule(lr=50.0, epochs=8, warmup_epochs=1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step, losses = 0, []
    for _ in range(8):
        step = train_one_epoch(probe, optimizer, train, lambda x: x, schedule=schedule, step=step,
                               steps_per_epoch=len(train), device=device, amp_dtype=None, scaler=scaler,
                               log_fn=lambda s, loss, lr: losses.append(float(loss)))
    after = evaluate(probe, val, lambda x: x, device, None)
    assert before < 0.6 and after["top1"] > 0.95 and after["num_images"] == 192
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


# -- GPT features -------------------------------------------------------------------------------------------------
def test_gpt_features_are_the_middle_block_states_of_the_null_class_sequence():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(CONFIG)).eval()
    config = build_gpt_config("debug", vocab_size=1024, block_size=64, num_classes=10, n_layer=4)
    gpt = GPT(config).eval()
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    num_code, layer = 40, 2
    features = gpt_features_fn(tokenizer, gpt, num_code, layer)(images)  # (3, 64)

    # The same states taken with a hook from the model's own full forward: output of block `layer` (1-indexed).
    codes = tokenizer.encode_to_codes(images)[:, :num_code]
    captured = []
    handle = gpt.layers[layer - 1].register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        gpt(codes[:, :-1], torch.full((3,), 10))  # null class = num_classes
        gpt(codes[:, :-1], torch.zeros(3, dtype=torch.long))  # a real label
    handle.remove()
    assert captured[0].shape == (3, num_code, 64)  # class slot + num_code - 1 codes
    torch.testing.assert_close(features, captured[0].mean(dim=1))
    assert not torch.allclose(features, captured[1].mean(dim=1))  # the label would change the features


def test_official_gpt_checkpoint_is_sized_from_the_flags(files):
    path = save_gpt(files["tmp"] / "official.pt", num_classes=1000, official=True)
    gpt = load_frozen_gpt(GPTModelConfig(gpt_model="debug", gpt_ckpt=str(path)), 1024, 64, torch.device("cpu"))
    assert gpt.config.num_classes == 1000 and not gpt.training
    assert not any(p.requires_grad for p in gpt.parameters())


# -- entry points ---------------------------------------------------------------------------------------------------
def test_gpt_probe_resumes_exactly_and_eval_reproduces_the_result(files, tmp_path):
    full = tmp_path / "full"
    gpt_probe_main(gpt_argv(files, tmp_path, "full", "--epochs", "3", "--warmup-epochs", "1", "--ckpt-epoch", "1"))
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["0001.pt", "0002.pt"]  # official policy
    result = json.loads((full / "lin_probe_acc.json").read_text())
    assert result["num_images"] == 6 and result["epoch"] == 2 and result["features"]["layer"] == 1
    assert (full / "lin_probe_acc.txt").read_text().startswith("LM: Accuracy of the network on the 6 test images")
    final = read_checkpoint(full / "checkpoints" / "0002.pt")
    assert final["steps"] == 3 * 3 and final["classes"] == ["n00", "n01"]  # 12 images / batch 4 = 3 steps/epoch

    # Interrupted after epoch 1: the rerun continues from 0001.pt and ends with the same weights.
    (tmp_path / "cut" / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "0001.pt", tmp_path / "cut" / "checkpoints" / "0001.pt")
    gpt_probe_main(gpt_argv(files, tmp_path, "cut", "--epochs", "3", "--warmup-epochs", "1", "--ckpt-epoch", "1"))
    resumed = read_checkpoint(tmp_path / "cut" / "checkpoints" / "0002.pt")
    logged = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [7, 8, 9]  # only the last epoch was trained again
    for key, value in final["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)
    assert json.loads((tmp_path / "cut" / "lin_probe_acc.json").read_text())["top1"] == result["top1"]

    # --eval only evaluates: the given checkpoint, else the newest of the run.
    out = tmp_path / "eval.json"
    gpt_probe_main(gpt_argv(files, tmp_path, "full", "--eval", "--lin-probe-ckpt",
                            str(full / "checkpoints" / "0002.pt"), "--out", str(out)))
    again = json.loads(out.read_text())
    assert (again["top1"], again["top5"], again["num_images"]) == (result["top1"], result["top5"], 6)
    gpt_probe_main(gpt_argv(files, tmp_path, "full", "--eval", "--out", str(tmp_path / "newest.json")))
    assert json.loads((tmp_path / "newest.json").read_text())["checkpoint"].endswith("0002.pt")


@pytest.mark.parametrize("flag, dim", [(None, 64), ("--fix-dim", 32), ("--from-decoder", 64)])
def test_tokenizer_probe_feature_kinds(files, tmp_path, flag, dim):
    # z_channels 32 (transformer width 64) tells the pre-conv_out encoder features from the --fix-dim ones.
    config = tmp_path / "VQ_debug_z32.yaml"
    config.write_text(CONFIG.read_text().replace("z_channels: 64", "z_channels: 32"))
    tok_probe_main(["--data-root", str(files["data"]), "--save-path", str(tmp_path), "--sub-exp-dir", "tok",
                    "--model-config", str(config), "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4",
                    "--lr", "1.0", "--num-workers", "0", "--device", "cpu", *([flag] if flag else [])])
    result = json.loads((tmp_path / "tok" / "lin_probe_acc.json").read_text())
    assert result["num_images"] == 6 and 0 <= result["top1"] <= 1
    assert result["features"]["mode"] == {None: "encoder", "--fix-dim": "fix_dim", "--from-decoder": "decoder"}[flag]
    assert read_checkpoint(tmp_path / "tok" / "checkpoints" / "0000.pt")["model"]["head.weight"].shape == (2, dim)
    assert (tmp_path / "tok" / "lin_probe_acc.txt").read_text().startswith("Tokenizer: Accuracy")


@pytest.mark.parametrize("extra, message", [
    (["--gpt-ckpt", "missing.pt"], "checkpoint not found: 'missing.pt'"),
    (["--num-code", "65"], "--num-code 65 must be in [1, 64]"),
    (["--n-layer", "3"], "--n-layer 3 must be in [0, 2]"),
    (["--data-root", "nowhere"], "image folder not found: 'nowhere/ILSVRC2012_img_train'"),
    (["--eval"], "--eval: no probe checkpoint"),
    (["--batch-size", "64"], "12 training images are fewer than one global batch of 64"),
])
def test_gpt_probe_user_errors_exit_2(files, tmp_path, capsys, extra, message):
    err = expect_exit_2(gpt_probe_main, gpt_argv(files, tmp_path, "bad", "--epochs", "1", *extra), capsys)
    assert message in err


def test_probe_of_a_gpt_without_null_class_is_refused(files, tmp_path, capsys):
    config = build_gpt_config("debug", vocab_size=1024, block_size=64, num_classes=2, class_dropout_prob=0.0)
    path = tmp_path / "nonull.pt"
    torch.save({"model": GPT(config).state_dict(), "extra": {"gpt_config": dataclasses.asdict(config)}}, path)
    argv = gpt_argv(files, tmp_path, "x", "--epochs", "1")
    argv[argv.index("--gpt-ckpt") + 1] = str(path)
    assert "has no null class" in expect_exit_2(gpt_probe_main, argv, capsys)


@pytest.mark.slow
def test_two_process_run_over_torchrun(files, tmp_path):
    """scripts/train_lin_probe_gpt.sh with 2 CPU processes (gloo): trains, and its sharded evaluation counts every
    val image once and agrees exactly with a 1-process evaluation of the same checkpoint."""
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("torchrun cannot start here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "gpus": "2", "PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    argv = gpt_argv(files, tmp_path, "ddp", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "2")
    result = subprocess.run(["bash", str(REPO / "scripts" / "train_lin_probe_gpt.sh"), *argv], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2" in result.stderr
    ddp = json.loads((tmp_path / "ddp" / "lin_probe_acc.json").read_text())
    ckpt = read_checkpoint(tmp_path / "ddp" / "checkpoints" / "0001.pt")
    assert ddp["num_images"] == 6 and ckpt["steps"] == 2 * 3  # global batch 2 x 2 = 4: 3 steps per epoch
    assert ckpt["config"]["derived"]["world_size"] == 2
    out = tmp_path / "single.json"
    gpt_probe_main(gpt_argv(files, tmp_path, "ddp", "--eval", "--out", str(out)))
    single = json.loads(out.read_text())
    assert (single["top1"], single["top5"], single["num_images"]) == (ddp["top1"], ddp["top5"], 6)


def test_cnn_tokenizer_probe_uses_its_encoder_grid(files, tmp_path, capsys):
    """LlamaGen's VQ-16 (no Q-Former encoder): --fix-dim probes its encoder's grid (z_channels wide); the default
    encoder mode stops with a message that names --fix-dim."""
    config = REPO / "configs" / "vq" / "LlamaGen_VQ16_debug.yaml"
    z_channels = load_config(config).model.init_args.z_channels
    argv = ["--data-root", str(files["data"]), "--save-path", str(tmp_path), "--sub-exp-dir", "cnn", "--model-config",
            str(config), "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--lr", "1.0",
            "--num-workers", "0", "--device", "cpu"]
    err = expect_exit_2(tok_probe_main, argv, capsys)
    assert "without a Q-Former encoder" in err and "--fix-dim" in err
    tok_probe_main([*argv, "--fix-dim"])
    result = json.loads((tmp_path / "cnn" / "lin_probe_acc.json").read_text())
    assert result["features"]["mode"] == "fix_dim" and result["num_images"] == 6
    head = read_checkpoint(tmp_path / "cnn" / "checkpoints" / "0000.pt")["model"]["head.weight"]
    assert head.shape == (2, z_channels)
