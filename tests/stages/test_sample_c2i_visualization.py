"""End to end: `gigatok sample_c2i_visualization` on CPU with the tiny tokenizer and a debug GPT, both saved in the
official checkpoint format."""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_exit_2
from PIL import Image

from gigatok.builders import build_gpt, build_tokenizer
from gigatok.config import load_config
from gigatok.stages.sample_c2i_visualization import main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"
NUM_CLASSES = 10
SIZE = 32  # VQ_debug: 32 px, 64 codes, codebook 1024
CELL = SIZE + 2  # grid cell: image + 2 px padding


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(tokenizer, GPT) files like the official trainers write them: {"model", "args" (Namespace), "steps"}; the
    GPT file also has a different "ema" entry."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(CONFIG))
    torch.save({"model": tokenizer.state_dict(), "args": argparse.Namespace(image_size=SIZE), "steps": 50},
               folder / "vq.pt")
    gpt = build_gpt("debug", vocab_size=1024, block_size=64, num_classes=NUM_CLASSES)
    state = gpt.state_dict()
    # The fresh head is zero (uniform sampling); give it weights so the classes and guidance matter.
    state["output.weight"] = torch.randn_like(state["output.weight"])
    ema = {k: v.clone() for k, v in state.items()}
    ema["output.weight"] = torch.randn_like(ema["output.weight"])
    torch.save({"model": state, "ema": ema, "steps": 10, "args": argparse.Namespace(gpt_model="debug")},
               folder / "gpt.pt")
    return folder / "vq.pt", folder / "gpt.pt"


def _argv(out: Path, vq: Path | str, gpt: Path | str, *extra: str) -> list[str]:
    # 3 classes x 7 images in batches of 3: full and partial batches, 7 -> a 6-image class grid
    return ["--quant-way=vq", "--tok-config", str(CONFIG), "--vq-ckpt", str(vq), "--gpt-model", "debug",
            "--gpt-ckpt", str(gpt), "--num-classes", str(NUM_CLASSES), "--class-idx", "7,1,3", "--qual-num", "21",
            "--per-proc-batch-size", "3", "--cfg-scale", "2.0", "--precision", "none", "--device", "cpu",
            "--sample-dir", str(out), *extra]


def _load(out: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(out / "samples.npz") as data:
        return data["arr_0"], data["labels"]


def test_outputs(checkpoints, tmp_path, capsys):
    main(_argv(tmp_path / "out", *checkpoints))
    out = tmp_path / "out"
    images, labels = _load(out)
    assert images.shape == (21, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [1] * 7 + [3] * 7 + [7] * 7
    assert len({images[i].tobytes() for i in range(21)}) == 21  # every sample is its own draw
    for c in (1, 3, 7):
        grid = np.asarray(Image.open(out / f"class_{c}_grid.png"))
        assert grid.shape == (CELL + 2, 6 * CELL + 2, 3)  # 7 images -> the official multiple of 6: one row
        first = np.flatnonzero(labels == c)[0]
        for j in range(6):
            np.testing.assert_array_equal(grid[2:2 + SIZE, 2 + j * CELL:2 + j * CELL + SIZE], images[first + j])
        assert grid[:2].max() == 0  # black padding
    multi = np.asarray(Image.open(out / "multi_class_grid.png"))
    assert multi.shape == (CELL + 2, 3 * CELL + 2, 3)  # fewer than 6 classes: all of them in one row
    for j, first in enumerate((0, 7, 14)):  # the first image of each class, classes ascending
        np.testing.assert_array_equal(multi[2:2 + SIZE, 2 + j * CELL:2 + j * CELL + SIZE], images[first])
    assert (out / "multi_class_grid_cls_indices.txt").read_text().split() == ["1", "3", "7"]
    err = capsys.readouterr().err
    assert "3 classes x 7 images = 21 images" in err and "RANDOM" not in err


def test_same_seed_same_samples_and_flags_change_them(checkpoints, tmp_path):
    main(_argv(tmp_path / "a", *checkpoints))
    main(_argv(tmp_path / "b", *checkpoints))
    main(_argv(tmp_path / "c", *checkpoints, "--global-seed", "1"))
    main(_argv(tmp_path / "d", *checkpoints, "--ema"))
    a, b, c, d = (_load(tmp_path / name)[0] for name in "abcd")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)  # --ema loads the other weights


def test_sjd_sampler_from_the_command_line(checkpoints, tmp_path):
    """--sampler sjd: greedy (--top-k 1) images equal the plain sampler's; sampled ones are valid images."""
    main(_argv(tmp_path / "plain", *checkpoints, "--top-k", "1"))
    main(_argv(tmp_path / "sjd", *checkpoints, "--top-k", "1", "--sampler", "sjd", "--sjd-window", "4"))
    np.testing.assert_array_equal(_load(tmp_path / "sjd")[0], _load(tmp_path / "plain")[0])


def test_fp16_on_cpu_falls_back_to_fp32_and_bf16_runs(checkpoints, tmp_path, capsys):
    main(_argv(tmp_path / "fp32", *checkpoints))
    main(_argv(tmp_path / "fp16", *checkpoints, "--precision", "fp16"))
    assert "running in fp32 instead" in capsys.readouterr().err
    np.testing.assert_array_equal(_load(tmp_path / "fp16")[0], _load(tmp_path / "fp32")[0])
    main(_argv(tmp_path / "bf16", *checkpoints, "--precision", "bf16", "--cfg-schedule", "step", "--qual-num", "3"))
    images, labels = _load(tmp_path / "bf16")
    assert images.shape == (3, SIZE, SIZE, 3) and labels.tolist() == [1, 3, 7]


def test_random_weights_warn_loudly(tmp_path, capsys):
    argv = _argv(tmp_path / "out", "x", "x", "--qual-num", "3", "--image-size-eval", "16")
    argv = [a for i, a in enumerate(argv) if a not in ("--vq-ckpt", "--gpt-ckpt", "x")]
    main(argv)
    err = capsys.readouterr().err
    assert "no --vq-ckpt" in err and "no --gpt-ckpt" in err and "RANDOM weights" in err
    assert _load(tmp_path / "out")[0].shape == (3, 16, 16, 3)  # --image-size-eval resizes


def _run_expecting_exit_2(argv: list[str], capsys) -> str:
    return expect_exit_2(main, argv, capsys)


def test_user_errors_exit_2_with_a_message(checkpoints, tmp_path, capsys):
    vq, gpt = checkpoints
    out = tmp_path / "out"
    err = _run_expecting_exit_2(_argv(out, vq, gpt, "--image-size", "256"), capsys)
    assert "--image-size 256 differs from the tokenizer config's image_size 32" in err
    err = _run_expecting_exit_2(_argv(out, vq, gpt, "--gpt-model", "GPT-B"), capsys)
    assert "--gpt-model GPT-B" in err and "does not match" in err and "pass --gpt-model debug" in err
    err = _run_expecting_exit_2(_argv(out, vq, tmp_path / "missing.pt"), capsys)
    assert "checkpoint not found" in err and "missing.pt" in err
    err = _run_expecting_exit_2(_argv(out, tmp_path / "missing_vq.pt", gpt), capsys)
    assert "missing_vq.pt" in err
    assert "t2i is not supported" in _run_expecting_exit_2(_argv(out, vq, gpt, "--gpt-type", "t2i"), capsys)
    assert "drop --vq-ckpt" in _run_expecting_exit_2(_argv(out, vq, gpt, "--quant-way", "fsq"), capsys)
    assert "not supported" in _run_expecting_exit_2(_argv(out, vq, gpt, "--adaLN"), capsys)
    assert "outside [0, --num-classes=10)" in _run_expecting_exit_2(_argv(out, vq, gpt, "--class-idx", "3,12"),
                                                                      capsys)
    assert "sigmoid" in _run_expecting_exit_2(_argv(out, vq, gpt, "--cfg-schedule", "sigmoid"), capsys)
    assert "cls_token_num=1" in _run_expecting_exit_2(_argv(out, vq, gpt, "--cls-token-num", "2"), capsys)
    assert "--num-token 32 differs" in _run_expecting_exit_2(_argv(out, vq, gpt, "--num-token", "32"), capsys)
    assert "drop --cuda-graphs" in _run_expecting_exit_2(_argv(out, vq, gpt, "--cuda-graphs"), capsys)
    assert "runs eagerly" in _run_expecting_exit_2(_argv(out, vq, gpt, "--sampler", "sjd", "--compile"), capsys)
    err = _run_expecting_exit_2(_argv(out, vq, gpt, "--gpt-2d"), capsys)  # learned positions in the file
    assert "does not match" in err and "cannot build" not in err and "pos_type='learned_1d'" in err
    assert not out.exists()  # every check fires before anything is written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_launcher_script_one_and_two_ranks_give_the_same_files(checkpoints, tmp_path):
    """The official README command shape through scripts/sample_c2i_visualization.sh, with gpus=1 and gpus=2 (gloo):
    every batch has its own seed, so the files do not depend on the number of ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    vq, gpt = checkpoints
    outputs = {}
    for gpus in (1, 2):
        out = tmp_path / f"out{gpus}"
        argv = ["--quant-way=vq", "--image-size=32", f"--sample-dir={out}", "--vq-ckpt", str(vq), "--tok-config",
                str(CONFIG), "--gpt-model", "debug", "--cfg-schedule", "constant", "--cfg-scale", "4.0",
                "--gpt-ckpt", str(gpt), "--precision", "fp16", "--class-idx", "7,1,3", "--per-proc-batch-size", "4",
                "--qual-num", "21", "--num-classes", str(NUM_CLASSES)]
        result = subprocess.run(["bash", str(REPO / "scripts" / "sample_c2i_visualization.sh"), *argv],
                                cwd=tmp_path, env={**env, "gpus": str(gpus), "PORT": str(_free_port())},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"--nproc_per_node={gpus}" in result.stderr  # set -x shows the torchrun command
        outputs[gpus] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(outputs[1]) == ["class_1_grid.png", "class_3_grid.png", "class_7_grid.png", "multi_class_grid.png",
                                  "multi_class_grid_cls_indices.txt", "samples.npz"]
    images, labels = _load(tmp_path / "out2")
    assert images.shape == (21, SIZE, SIZE, 3) and labels.tolist() == [1] * 7 + [3] * 7 + [7] * 7
    assert outputs[1] == outputs[2]
