"""End to end: `gigatok reconstruct --qualitative` on CPU with the tiny config and an official-format checkpoint."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_exit_2
from PIL import Image

from gigatok.builders import build_tokenizer, load_tokenizer
from gigatok.config import load_config
from gigatok.data.transforms import center_crop_arr, to_tensor_normalized, to_uint8
from gigatok.stages.reconstruct import main
from gigatok.tokenizer.perceptual import RANDOM_BACKBONE_ENV, VGG16_FILENAME

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "tests" / "gt_qualitative"
CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"
FOLDER = "VQVitModelPlus-imagenet-size-32-size-32-codebook-size-1024-dim-8-seed-0-0000050"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An official-format file: {"model", "args" (argparse.Namespace), "steps"}, named like vq_train.py's."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(CONFIG))
    path = tmp_path_factory.mktemp("ckpt") / "0000050.pt"
    torch.save({"model": tokenizer.state_dict(), "args": argparse.Namespace(image_size=32), "steps": 50}, path)
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A `tests/`-like folder: the photos in a sub-folder, next to files that are not images."""
    shutil.copytree(PHOTOS, tmp_path / "data" / "gt_qualitative")
    (tmp_path / "data" / "test_something.py").write_text("# not an image\n")
    return tmp_path / "data"


def _argv(data: Path, out: Path, ckpt: Path | str, *extra: str) -> list[str]:
    return ["--data-path", str(data), "--model-config", str(CONFIG), "--vq-ckpt", str(ckpt), "--image-size", "32",
            "--sample-dir", str(out), "--per-proc-batch-size", "3", "--num-workers", "0", "--qualitative", *extra]


def _check_outputs(folder: Path, with_lpips: bool) -> None:
    gts = sorted(folder.glob("*_gt.png"))
    recons = sorted(p for p in folder.glob("0*.png") if not p.name.endswith("_gt.png"))
    assert [p.name for p in gts] == [f"{i:06d}_gt.png" for i in range(4)]
    pattern = r"\d{6}_\d\.\d{4}\.png" if with_lpips else r"\d{6}\.png"
    assert len(recons) == 4 and all(re.fullmatch(pattern, p.name) for p in recons), [p.name for p in recons]
    grid = Image.open(folder / "grid.png")
    assert grid.size == (4 * 32, 2 * 32)  # one row of inputs above one row of reconstructions
    np.testing.assert_array_equal(np.asarray(grid)[:32, :32], np.asarray(Image.open(gts[0])))
    if with_lpips:
        values = [float(p.stem.split("_")[1]) for p in recons]
        assert float((folder / "lpips_val.txt").read_text()) == pytest.approx(np.mean(values), abs=1e-4)


def test_qualitative_end_to_end(checkpoint, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(RANDOM_BACKBONE_ENV, "1")
    main(_argv(data_dir, tmp_path / "out", checkpoint, "--lpips"))
    folder = tmp_path / "out" / FOLDER
    _check_outputs(folder, with_lpips=True)
    err = capsys.readouterr().err
    assert "skipped 1 non-image file(s)" in err and "test_something.py" in err and "MEANINGLESS" in err
    # the files hold exactly the center crop and the tokenizer's round trip of it
    source = Image.open(PHOTOS / "chelsea.jpg").convert("RGB")
    gt = np.asarray(center_crop_arr(source, 32))
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "000001_gt.png")), gt)
    tokenizer = load_tokenizer(str(checkpoint), str(CONFIG))
    with torch.no_grad():
        recon = tokenizer.decode_code(tokenizer.encode_to_codes(to_tensor_normalized(Image.fromarray(gt))[None]))
    saved = next(folder.glob("000001_*[0-9].png"))
    # The run decodes a batch of 3, this check a batch of 1: oneDNN's convolutions round slightly differently per
    # batch size, so a few pixels may land on the other side of a uint8 step, never further.
    diff = np.abs(np.asarray(Image.open(saved)).astype(int) - to_uint8(recon)[0].numpy().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def _run_expecting_exit_2(argv: list[str], capsys) -> str:
    return expect_exit_2(main, argv, capsys)


def test_corrupt_png_is_a_clear_error_or_skipped_and_counted(checkpoint, data_dir, tmp_path, capsys):
    (data_dir / "gt_qualitative" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png at all")
    err = _run_expecting_exit_2(_argv(data_dir, tmp_path / "out", checkpoint), capsys)
    assert "broken.png" in err and "remove it from the data folder or convert it" in err
    main(_argv(data_dir, tmp_path / "skip", checkpoint, "--skip-bad-images"))  # decoded first, left out, counted
    err = capsys.readouterr().err
    assert "--skip-bad-images: leaving out 1 unreadable image(s)" in err and "broken.png" in err
    assert len(list((tmp_path / "skip").rglob("*_gt.png"))) == len(list(PHOTOS.iterdir()))


def test_missing_checkpoint_exits_2_with_a_message(data_dir, tmp_path, capsys):
    err = _run_expecting_exit_2(_argv(data_dir, tmp_path / "out", tmp_path / "nope.pt"), capsys)
    assert "checkpoint not found" in err and "nope.pt" in err


def test_lpips_without_vgg_weights_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(RANDOM_BACKBONE_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # data path and checkpoint are both missing too: the LPIPS check must be the one that fires
    argv = _argv(tmp_path / "no_data", tmp_path / "out", tmp_path / "no.pt", "--lpips")
    err = _run_expecting_exit_2(argv, capsys)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / VGG16_FILENAME) in err
    assert not (tmp_path / "out").exists()


def test_flag_errors(checkpoint, data_dir, tmp_path, capsys):
    argv = _argv(data_dir, tmp_path / "out", checkpoint)
    # without --qualitative the quantitative mode runs, which first needs its rFID reference (default: the
    # official VIRTUAL_imagenet256_labeled.npz, not here)
    err = _run_expecting_exit_2([a for a in argv if a != "--qualitative"], capsys)
    assert "rFID reference not found" in err and "scripts/val.sh" in err
    assert "--quant-way lq" in _run_expecting_exit_2(argv + ["--quant-way", "lq"], capsys)  # fsq: test_fsq_official
    err = _run_expecting_exit_2(argv + ["--image-size", "64"], capsys)
    assert "--interpolate-pos-embed" in err
    assert "config file not found" in _run_expecting_exit_2(argv + ["--model-config", "nope.yaml"], capsys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fp16_on_cpu_falls_back_to_fp32(checkpoint, data_dir, tmp_path, capsys):
    main(_argv(data_dir, tmp_path / "out", checkpoint, "--precision", "fp16", "--device", "cpu"))
    assert "running in fp32 instead" in capsys.readouterr().err
    _check_outputs(tmp_path / "out" / FOLDER, with_lpips=False)


@pytest.mark.slow
def test_launcher_script_with_torchrun_on_cpu(checkpoint, data_dir, tmp_path):
    """gpus=1 as in the README, then 2 ranks (strided shards, gathered grid/LPIPS): identical files."""
    env = {**os.environ, RANDOM_BACKBONE_ENV: "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True, env=env)
    if probe.returncode != 0:
        pytest.skip(f"torchrun cannot start here: {probe.stderr.decode()[-300:]}")
    outputs = {}
    for gpus in (1, 2):
        argv = _argv(data_dir, tmp_path / f"out{gpus}", checkpoint, "--lpips", "--device", "cpu")
        result = subprocess.run(["bash", str(REPO / "scripts" / "reconstruction.sh"), *argv], cwd=tmp_path,
                                env={**env, "gpus": str(gpus), "PORT": str(_free_port())},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"--nproc_per_node={gpus}" in result.stderr  # set -x shows the torchrun command
        folder = tmp_path / f"out{gpus}" / FOLDER
        _check_outputs(folder, with_lpips=True)
        outputs[gpus] = folder
    _assert_same_outputs(outputs[1], outputs[2])


def _assert_same_outputs(one: Path, two: Path) -> None:
    """Same files from 1 and 2 ranks, up to batch-size rounding.

    Each rank decodes its own shard, so the batch sizes differ, and oneDNN's convolutions round slightly differently
    per batch size (how much depends on the CPU's kernels): a pixel may land one uint8 step away, an LPIPS value a
    hair away (its 4-decimal file name may then differ in the last digit).
    """
    def by_index(folder: Path) -> dict[str, Path]:
        return {p.name.split("_")[0] + ("_gt" if p.name.endswith("_gt.png") else ""): p for p in folder.glob("0*.png")}

    files_one, files_two = by_index(one), by_index(two)
    assert files_one.keys() == files_two.keys()
    for key, path in files_one.items():
        a, b = (np.asarray(Image.open(p)).astype(int) for p in (path, files_two[key]))
        diff = np.abs(a - b)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (key, diff.max(), (diff > 0).mean())
        if not key.endswith("_gt"):
            assert float(path.stem.split("_")[1]) == pytest.approx(float(files_two[key].stem.split("_")[1]), abs=2e-4)
    diff = np.abs(np.asarray(Image.open(one / "grid.png")).astype(int) - np.asarray(Image.open(two / "grid.png")))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert float((one / "lpips_val.txt").read_text()) == pytest.approx(float((two / "lpips_val.txt").read_text()),
                                                                        abs=2e-4)
    assert sorted(p.name for p in one.iterdir() if not p.name.startswith("0")) == \
        sorted(p.name for p in two.iterdir() if not p.name.startswith("0"))


def test_launcher_reports_a_user_error_without_a_traceback(data_dir, tmp_path):
    """A worker's user error (missing checkpoint) ends the launch with its exit code and message, and without the
    launcher's own Python traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "gpus": "1", "PORT": str(_free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    argv = _argv(data_dir, tmp_path / "out", str(tmp_path / "missing.pt"), "--device", "cpu")
    result = subprocess.run(["bash", str(REPO / "scripts" / "reconstruction.sh"), *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "missing.pt" in result.stderr and "Traceback" not in result.stderr
    assert "launch: worker rank(s) [0] failed with exit code [2]" in result.stderr


def test_mul_rec_levels_reconstruct_from_token_prefixes_and_plot_the_trend(checkpoint, data_dir, tmp_path,
                                                                          monkeypatch, capsys):
    """--mul-rec-levels 4,64 --plot: one folder per level (official suffix), the 4-token images are the decoder's
    output for the first 4 tokens, and one trending_<idx>.png per image shows input, 4 tokens, 64 tokens."""
    monkeypatch.setenv(RANDOM_BACKBONE_ENV, "1")
    main(_argv(data_dir, tmp_path / "out", checkpoint, "--lpips", "--mul-rec-levels", "4,64", "--plot"))
    folders = {level: tmp_path / "out" / f"{FOLDER}-c-type-None-cur-level-{level}" for level in (4, 64)}
    for folder in folders.values():
        _check_outputs(folder, with_lpips=True)
    tokenizer = load_tokenizer(str(checkpoint), str(CONFIG))
    gt = np.asarray(Image.open(folders[4] / "000002_gt.png"))
    with torch.no_grad():
        codes = tokenizer.encode_to_codes(to_tensor_normalized(Image.fromarray(gt))[None], num_tokens=4)
        recon = to_uint8(tokenizer.decode_code(codes))[0].numpy().astype(int)
    assert codes.shape == (1, 4)
    saved = np.asarray(Image.open(next(folders[4].glob("000002_*[0-9].png")))).astype(int)
    assert np.abs(saved - recon).max() <= 1
    full = np.asarray(Image.open(next(folders[64].glob("000002_*[0-9].png")))).astype(int)
    assert np.abs(saved - full).mean() > 0.1  # 4 tokens are not 64 (random weights: a small but real change)
    figures = sorted(p.name for p in (tmp_path / "out").glob("trending_*.png"))
    assert figures == [f"trending_{i:06d}.png" for i in range(4)]
    trend = np.asarray(Image.open(tmp_path / "out" / "trending_000002.png"))
    assert trend.shape[1] == 3 * 32  # input, 4 tokens, 64 tokens
    np.testing.assert_array_equal(trend[-32:, :32], gt)
    np.testing.assert_array_equal(trend[-32:, 32:64], saved)
    assert "trend figures" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--plot"], "pass --mul-rec-levels too"),
    (["--mul-rec-levels", "4,x"], "comma-separated integers"),
    (["--mul-rec-levels", "65"], "between 1 and the tokenizer's 64 tokens"),
])
def test_mul_rec_levels_mistakes(checkpoint, data_dir, tmp_path, capsys, extra, message):
    assert message in _run_expecting_exit_2(_argv(data_dir, tmp_path / "out", checkpoint, *extra), capsys)
