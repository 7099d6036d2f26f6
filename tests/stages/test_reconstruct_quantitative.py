"""`gigatok reconstruct` without --qualitative: PSNR/SSIM/LPIPS/codebook usage/rFID on CPU with the tiny tokenizer,
in one process and with 2 gloo ranks, resumed, merged and with --clear-cache."""
from __future__ import annotations

import argparse
import json
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
from helpers import make_val_folder
from PIL import Image

from gigatok.builders import build_tokenizer, load_tokenizer
from gigatok.config import load_config
from gigatok.data.transforms import center_crop_arr, to_tensor_normalized
from gigatok.eval.recon_metrics import ReconRecords
from gigatok.stages.reconstruct import main
from gigatok.stages.val_reference import main as build_reference
from gigatok.tokenizer.perceptual import LPIPS, RANDOM_BACKBONE_ENV, VGG16_FILENAME

skimage_metrics = pytest.importorskip("skimage.metrics")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"
FOLDER = "VQVitModelPlus-imagenet-size-32-size-32-codebook-size-1024-dim-8-seed-0-0000050"
METRICS = ("psnr", "ssim", "ssim_data_range_1", "lpips", "codebook_usage", "num_images", "rfid", "sfid",
           "precision", "recall")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, an 8-image validation folder and its reference npz (built by val_reference)."""
    root = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(CONFIG))
    ckpt = root / "0000050.pt"
    torch.save({"model": tokenizer.state_dict(), "args": argparse.Namespace(image_size=32), "steps": 50}, ckpt)
    files = make_val_folder(root / "val")
    build_reference(["--data-path", str(root / "val"), "--image-size", "32", "--sample-dir", str(root / "ref"),
                     "--num-workers", "0"])
    return {"root": root, "ckpt": ckpt, "val": root / "val", "files": files, "gt": root / "ref" / "val_imagenet.npz"}


def _argv(setup: dict, out: Path, *extra: str, gt: Path | None = None, batch_size: int = 1) -> list[str]:
    # Batch size 1 by default: oneDNN's convolutions round slightly differently per batch composition (and thread
    # count), and the single-process and 2-rank runs must reconstruct bit-identical images to compare exactly.
    return ["--data-path", str(setup["val"]), "--model-config", str(CONFIG), "--vq-ckpt", str(setup["ckpt"]),
            "--image-size", "32", "--sample-dir", str(out), "--per-proc-batch-size", str(batch_size),
            "--num-workers", "0", "--gt-npz-path", str(gt or setup["gt"]), "--device", "cpu", *extra]


def _results(out: Path) -> dict:
    return json.loads((out / f"{FOLDER}_results.json").read_text())


def _arr(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["arr_0"]


@pytest.fixture(scope="module")
def single_run(setup) -> Path:
    """The quantitative run in one process (random LPIPS backbone); returns its --sample-dir."""
    out = setup["root"] / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the 2-rank run (OMP_NUM_THREADS=1): same kernels, bit-identical reconstructions
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(RANDOM_BACKBONE_ENV, "1")
            main(_argv(setup, out))
    finally:
        torch.set_num_threads(threads)
    return out


def test_results_match_an_independent_recomputation(setup, single_run):
    results, folder = _results(single_run), single_run / FOLDER
    assert results["num_images"] == 8 and results["gt_npz_path"] == str(setup["gt"])
    assert results["checkpoint"] == str(setup["ckpt"]) and results["config"] == str(CONFIG)
    assert all(key in results for key in METRICS + ("inception_score",))
    # PSNR / SSIM with scikit-image's own calls, as the official script: saved PNG / 255 vs the float input.
    crops = [center_crop_arr(Image.open(f).convert("RGB"), 32) for f in setup["files"]]
    gts = [((to_tensor_normalized(c).permute(1, 2, 0).numpy() + 1.0) / 2.0) for c in crops]
    pngs = np.stack([np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(8)])  # (8, 32, 32, 3) uint8
    restored = [png.astype(np.float32) / 255.0 for png in pngs]
    psnr = np.mean([skimage_metrics.peak_signal_noise_ratio(r, g) for r, g in zip(restored, gts)])
    ssim = [np.mean([skimage_metrics.structural_similarity(r, g, channel_axis=-1, data_range=d)
                     for r, g in zip(restored, gts)]) for d in (2.0, 1.0)]
    assert results["psnr"] == pytest.approx(psnr, abs=1e-6)
    assert results["ssim"] == pytest.approx(ssim[0], abs=1e-6)
    assert results["ssim_data_range_1"] == pytest.approx(ssim[1], abs=1e-6)
    assert results["ssim"] > results["ssim_data_range_1"]  # the official data_range=2 quirk
    # LPIPS and codebook usage from the tokenizer run image by image (batch 1 vs 3 may move a value by rounding).
    tokenizer = load_tokenizer(str(setup["ckpt"]), str(CONFIG))
    lpips = LPIPS(random_backbone=True)
    used, distances = set(), []
    with torch.no_grad():
        for crop in crops:
            images = to_tensor_normalized(crop)[None]
            codes = tokenizer.encode_to_codes(images)
            used |= set(codes.flatten().tolist())
            distances.append(float(lpips(tokenizer.decode_code(codes), images)))
    assert results["codebook_usage"] == pytest.approx(len(used) / 1024)
    assert results["codebook_used"] == len(used) and results["codebook_size"] == 1024
    assert results["lpips"] == pytest.approx(np.mean(distances), abs=1e-4)
    # the npz holds the PNGs, shuffled with --global-seed; the reference holds the inputs, so rFID is positive
    order = np.random.default_rng(0).permutation(8)
    recon_npz = single_run / f"{FOLDER}.npz"
    np.testing.assert_array_equal(_arr(recon_npz), pngs[order])
    assert results["rfid"] > 1 and results["sfid"] > 0 and 0 <= results["precision"] <= 1
    assert results["inception_score"] is not None or results["inception_score_unavailable"]
    text = (single_run / f"{FOLDER}_results.txt").read_text()
    assert text.startswith(f"PSNR: {results['psnr']:.6f}, SSIM: {results['ssim']:.6f}")
    assert f"rFID: {results['rfid']:.4f}" in text
    assert (folder / "log.txt").is_file() and "PSNR" in (folder / "log.txt").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_give_the_same_metrics_and_npz(setup, single_run):
    env = {**os.environ, RANDOM_BACKBONE_ENV: "1", "OMP_NUM_THREADS": "1", "gpus": "2", "PORT": str(_free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    out = setup["root"] / "ddp"
    result = subprocess.run(["bash", str(REPO / "scripts" / "reconstruction.sh"), *_argv(setup, out)],
                            cwd=setup["root"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2" in result.stderr
    single, ddp = _results(single_run), _results(out)
    for key in METRICS:
        assert ddp[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    np.testing.assert_array_equal(_arr(out / f"{FOLDER}.npz"), _arr(single_run / f"{FOLDER}.npz"))
    assert sorted(p.name for p in (out / FOLDER).glob("records_rank*.npz")) == ["records_rank0.npz",
                                                                                 "records_rank1.npz"]


def test_resume_and_a_reference_equal_to_the_reconstructions(setup, single_run, monkeypatch, capsys):
    """An interrupted run (half of the records gone) resumes to the same metrics; against a copy of its own npz
    the reconstructions score rFID ~ 0 and precision = recall = 1; --clear-cache then keeps only .txt/.json."""
    monkeypatch.setenv(RANDOM_BACKBONE_ENV, "1")
    out = setup["root"] / "resumed"
    shutil.copytree(single_run / FOLDER, out / FOLDER)
    gt_copy = setup["root"] / "recon_as_reference.npz"
    shutil.copy(single_run / f"{FOLDER}.npz", gt_copy)
    records_file = out / FOLDER / "records_rank0.npz"
    with np.load(records_file) as data:
        run_key = str(data["run_key"])
    records = ReconRecords.load(records_file, 1024, run_key)
    records.values = {k: v for k, v in records.values.items() if k % 2 == 0}
    records.save(records_file)
    for i in (1, 3, 5, 7):
        (out / FOLDER / f"{i:06d}.png").unlink()
    capsys.readouterr()
    main(_argv(setup, out, "--clear-cache", gt=gt_copy, batch_size=3))  # the 4 left in batches of 3
    assert "4 already reconstructed (resumed), 4 to do" in capsys.readouterr().err
    resumed, single = _results(out), _results(single_run)
    # other batches may move a few pixels by one uint8 step (see _argv), hence the tolerance
    for key in ("psnr", "ssim", "ssim_data_range_1", "lpips", "codebook_usage", "num_images"):
        assert resumed[key] == pytest.approx(single[key], rel=1e-4), key
    assert resumed["rfid"] == pytest.approx(0.0, abs=1e-2) and resumed["sfid"] == pytest.approx(0.0, abs=1e-2)
    assert resumed["precision"] == 1.0 and resumed["recall"] == 1.0
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == [f"{FOLDER}/log.txt", f"{FOLDER}_results.json", f"{FOLDER}_results.txt"]
    assert gt_copy.is_file()  # the reference is never cleared


def test_merge_only_rereads_the_results(setup, single_run, capsys):
    out = setup["root"] / "merge"
    out.mkdir()
    shutil.copy(single_run / f"{FOLDER}_results.json", out)  # no images, no npz: nothing could be recomputed
    main(_argv(setup, out, "--merge", gt=setup["root"] / "missing.npz"))
    assert (out / f"{FOLDER}_results.txt").read_text() == (single_run / f"{FOLDER}_results.txt").read_text()
    assert "rFID" in capsys.readouterr().err
    err = expect_exit_2(main, _argv(setup, setup["root"] / "nothing", "--merge"), capsys)
    assert "run the same command without --merge first" in err


def test_missing_reference_fails_before_any_work(setup, tmp_path, capsys):
    argv = _argv(setup, tmp_path / "out", gt=tmp_path / "VIRTUAL_imagenet256_labeled.npz")
    argv[argv.index("--vq-ckpt") + 1] = str(tmp_path / "missing.pt")  # would fail later, when loading
    err = expect_exit_2(main, argv, capsys)
    assert "rFID reference not found" in err and "bash scripts/val.sh --data-path VAL --sample-dir DIR" in err
    assert not (tmp_path / "out").exists()


def test_missing_vgg_weights_fail_early_unless_lpips_is_opted_out(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(RANDOM_BACKBONE_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    err = expect_exit_2(main, _argv(setup, tmp_path / "out"), capsys)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / VGG16_FILENAME) in err and "--no-lpips" in err
    # with --no-lpips the next check (the Inception weights of the rFID evaluator) is the one that fires
    argv = _argv(setup, tmp_path / "out", "--no-lpips", "--inception-weights", str(tmp_path / "nope.pth"))
    err = expect_exit_2(main, argv, capsys)
    assert "nope.pth" in err and VGG16_FILENAME not in err
    assert not (tmp_path / "out").exists()


def test_the_generation_reference_is_flagged_before_reconstructing(setup, tmp_path, capsys):
    """A --gt-npz-path that is the ADM generation reference gives a loud warning at startup; here the run then
    stops at the (missing) checkpoint, i.e. the warning comes before the tokenizer is even loaded."""
    virtual = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    shutil.copy(setup["gt"], virtual)
    argv = _argv(setup, tmp_path / "out", "--no-lpips", gt=virtual)
    argv[argv.index("--vq-ckpt") + 1] = str(tmp_path / "missing.pt")
    err = expect_exit_2(main, argv, capsys)
    assert "GENERATION reference" in err and "This number is not rFID" in err
    assert err.index("GENERATION reference") < err.index("missing.pt")


def test_mul_rec_levels_score_each_token_prefix_in_its_own_folder(setup, single_run, tmp_path, monkeypatch):
    """--mul-rec-levels 8,64: one scored run per level; 64 tokens reproduce the plain run's metrics, 8 tokens differ
    and their codes count only 8 tokens per image."""
    monkeypatch.setenv(RANDOM_BACKBONE_ENV, "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as single_run: bit-identical reconstructions
    try:
        main(_argv(setup, tmp_path, "--mul-rec-levels", "8,64"))
    finally:
        torch.set_num_threads(threads)
    results = {level: json.loads((tmp_path / f"{FOLDER}-c-type-None-cur-level-{level}_results.json").read_text())
               for level in (8, 64)}
    plain = _results(single_run)
    for key in ("psnr", "ssim", "lpips", "codebook_usage", "rfid"):
        assert results[64][key] == pytest.approx(plain[key], rel=1e-6), key
    level_8 = _arr(tmp_path / f"{FOLDER}-c-type-None-cur-level-8.npz").astype(int)
    assert np.abs(level_8 - _arr(single_run / f"{FOLDER}.npz").astype(int)).mean() > 0.1  # other images
    # usage counts distinct codes: 8 images x 8 tokens can use at most 64 of the 1024 codes
    assert results[8]["codebook_usage"] <= min(64 / 1024, plain["codebook_usage"])
