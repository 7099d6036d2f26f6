"""`python -m gigatok.bench gpu-check`: the tiny CPU form runs every part and passes (the command CI can run), a
raising part is reported as "fail" while the others go on, and a spent budget skips the parts after it."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import expect_exit_2

from gigatok.bench import gpu_check, main

REPO = Path(__file__).resolve().parents[2]


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, float]:
    """One `gpu-check --device cpu --tiny` subprocess for the module: (process, report from --out, seconds)."""
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the debug models gain nothing from more
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gigatok.bench", "gpu-check", "--device", "cpu", "--tiny",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert out.is_file(), proc.stderr[-4000:]
    return proc, json.loads(out.read_text()), seconds


@pytest.mark.slow
def test_tiny_cpu_check_runs_and_passes_every_part(tiny_run):
    proc, report, seconds = tiny_run
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n{json.dumps(report)[:4000]}"
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == report  # ONE JSON object on stdout, also in --out
    assert list(report["parts"]) == list(gpu_check.PARTS)
    assert report["passed"] is True and report["tiny"] is True and report["torch"]
    assert all(part["status"] == "pass" and finite(part["seconds"]) for part in report["parts"].values())
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[gpu-check]")]
    assert [line.split()[1].rstrip(":") for line in progress] == list(gpu_check.PARTS)
    print(f"gpu-check --device cpu --tiny: {seconds:.1f} s")  # CI time (pytest -s shows it)


@pytest.mark.slow
def test_tiny_cpu_check_reports_the_key_figures(tiny_run):
    parts = tiny_run[1]["parts"]
    precision = parts["tokenizer_precision"]
    for model in ("S-S", "B-L"):
        for name, tolerance in gpu_check.TOLERANCES.items():
            entry = precision[model][name]
            assert entry["finite"] and entry["pass"] and finite(entry["max_rel_l2"]), (model, name, entry)
            assert entry["max_rel_l2"] <= tolerance == entry["tolerance"]
            assert len(entry["rel_l2"]) >= 4 and 0.5 <= entry["code_agreement"] <= 1
        assert precision[model]["fp32"]["max_rel_l2"] < precision[model]["bf16"]["max_rel_l2"]  # a real comparison
    xl = parts["tokenizer_xl_xxl_train"]
    assert xl["activation_checkpointing"] and xl["largest_batch"] == 2 and [r["batch"] for r in xl["runs"]] == [1, 2]
    assert finite(xl["step_s"]) and xl["step_s"] > 0 and xl["peak_rss_mb"] > 0
    fsdp = parts["fsdp_world1"]
    assert fsdp["backend"] == "gloo"
    for model in ("tokenizer", "gpt"):
        entry = fsdp[model]
        assert entry["pass"] and len(entry["losses_plain"]) == len(entry["losses_fsdp"]) == 3
        assert entry["losses_plain"][0] != entry["losses_plain"][-1]  # the steps did train
        assert entry["max_loss_rel_diff"] <= gpu_check.FSDP_TOLERANCE and entry["param_rel_l2"] <= 1e-5
    train = parts["gpt_train"]["debug"]
    for mode in ("eager", "compiled"):
        assert finite(train[mode]["tokens_per_s"]) and 0 < train[mode]["mfu"] < 1.5, train
    assert parts["gpt_train"]["mfu_goal_met"] is None  # no goal on the CPU
    generation = parts["generation"]
    assert generation["greedy_identical"] is True and not generation["failures"]
    for batch in (1, 2):
        row = generation["debug"][f"batch_{batch}"]
        assert row["cuda_graphs"] == "n/a on cpu" and row["greedy_modes"] == ["compiled", "eager"]
        assert all(finite(row[m]["images_per_s"]) and row[m]["images_per_s"] > 0 for m in ("eager", "compiled"))
        sjd = row["sjd"]
        assert sjd["plain_forwards"] >= 16 > sjd["forwards"] >= 1 and 0 <= sjd["acceptance_rate"] <= 1
    inception = parts["adm_inception"]
    assert inception["pool_shape"] == [8, 2048] and inception["images_per_s"] > 0
    seeds = parts["seed_commands"]
    for name in ("reconstruction", "sample_c2i_visualization"):
        assert seeds[name]["exit_code"] == 0 and seeds[name]["ok"], seeds[name]
    assert seeds["sample_c2i_visualization"]["images"] == [3, 32, 32, 3]


def test_a_raising_part_fails_and_the_check_goes_on(monkeypatch, tmp_path, capsys):
    def boom(check: gpu_check.Check) -> dict:
        raise RuntimeError("planted failure")

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "tokenizer_precision", boom)
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "gpt_train", lambda check: {"tokens_per_s": 1.0})
    out = tmp_path / "report.json"
    code = main(["gpu-check", "--device", "cpu", "--tiny", "--parts", "gpt_train,tokenizer_precision",
                 "--out", str(out)])
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip())
    assert code == 1 and report == json.loads(out.read_text()) and report["passed"] is False
    assert list(report["parts"]) == ["tokenizer_precision", "gpt_train"]  # the fixed order, not the flag's
    failed = report["parts"]["tokenizer_precision"]
    assert failed["status"] == "fail" and failed["error"] == "RuntimeError: planted failure"
    assert "in boom" in failed["traceback"]
    assert report["parts"]["gpt_train"] == {"status": "pass", "tokens_per_s": 1.0,
                                           "seconds": report["parts"]["gpt_train"]["seconds"]}
    assert "[gpu-check] tokenizer_precision: fail" in captured.err and "[gpu-check] gpt_train: pass" in captured.err


def test_a_spent_budget_skips_the_parts_after_it(monkeypatch):
    deadlines = []

    def slow(check: gpu_check.Check) -> dict:
        deadlines.append(check.time_left())
        time.sleep(0.4)
        return {}

    for name in ("tokenizer_precision", "gpt_train"):
        monkeypatch.setitem(gpu_check.PART_FUNCTIONS, name, slow)
    report = gpu_check.run_check(gpu_check.torch.device("cpu"), True, 0.3, ["tokenizer_precision", "gpt_train"])
    assert report["parts"]["tokenizer_precision"]["status"] == "pass"
    assert report["parts"]["gpt_train"] == {"status": "skipped", "reason": "budget", "seconds": 0.0}
    assert report["passed"] is False and len(deadlines) == 1 and 0 < deadlines[0] <= 0.3


def test_unknown_parts_are_a_user_error(capsys):
    err = expect_exit_2(main, ["gpu-check", "--device", "cpu", "--parts", "tokenizer_precision,nope"], capsys)
    assert "--parts: unknown part(s) ['nope']" in err
