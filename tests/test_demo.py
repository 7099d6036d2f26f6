"""The CPU demo end to end, shortened (a few steps per stage): every artifact, metric and link of the report, stage
reuse on a second run, and --fresh."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import gigatok.demo as demo_module
from gigatok.demo import main

QUICK = ["--tok-steps", "8", "--gpt-steps", "8", "--samples-per-class", "2", "--heldout-per-class", "3",
         "--classifier-epochs", "1", "--threads", "1"]
STAGES = ["tokenizer", "reference", "recon_digits", "recon_digits_grid", "recon_photos", "codes", "gpt", "samples"]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    main(["--out", str(out), *QUICK])
    return out


def test_quick_demo_writes_every_artifact(quick_demo):
    out = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ["psnr", "ssim", "codebook_usage", "class_agreement", "classifier_accuracy", "fid"]:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 0 <= metrics["class_agreement"] <= 1 and 0 <= metrics["codebook_usage"] <= 1
    assert metrics["num_samples"] == 20 and metrics["num_heldout"] == 30
    assert set(metrics["targets"]) == {"psnr", "codebook_usage", "class_agreement", "classifier_accuracy"}
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {"figures/recon_digits.png", "figures/recon_photos.png", "figures/samples_by_class.png",
            "figures/curves.png", "metrics.json"} <= set(links)
    for link in links:
        assert (out / link).is_file(), link
    for stage in STAGES:
        assert (out / "logs" / f"{stage}.log").is_file()
        assert json.loads((out / "stages" / f"{stage}.json").read_text())["seconds"] > 0
    assert len(list((out / "samples").glob("class_*_grid.png"))) == 10


def test_second_run_reuses_every_stage(quick_demo, capsys):
    before = {s: (quick_demo / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}
    main(["--out", str(quick_demo), *QUICK])
    printed = capsys.readouterr().out
    assert all(f"[demo] {s}: reusing" in printed for s in STAGES)
    assert before == {s: (quick_demo / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}


def test_changed_settings_rerun_the_stage_and_fresh_starts_over(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_entry(name, module, flags, out, artifact, threads, workdir=None):
        calls.append(name)
        raise demo_module.DemoError("stop here")

    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    monkeypatch.setattr(demo_module, "run_entry", fake_run_entry)
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--fresh", *QUICK])
    assert not (out / "stale").exists() and calls == ["tokenizer"]
    assert "error: stop here" in capsys.readouterr().err


def test_a_stage_reruns_only_when_its_flags_change(tmp_path, capsys):
    out, artifact, workdir = tmp_path / "out", tmp_path / "artifact", tmp_path / "work"
    artifact.write_text("x")
    workdir.mkdir()
    run = demo_module.run_entry
    assert run("stage", "gigatok.evaluate", ["--help"], out, artifact, 1, workdir) > 0  # no marker yet: runs
    assert workdir.is_dir() and "usage" in (out / "logs" / "stage.log").read_text()
    assert run("stage", "gigatok.evaluate", ["--help"], out, artifact, 1, workdir) == 0  # same flags: reused
    assert "[demo] stage: reusing" in capsys.readouterr().out
    assert run("stage", "gigatok.evaluate", ["--help", "--no-cache"], out, artifact, 1, workdir) > 0
    assert not workdir.exists()  # other flags: the old output was removed before the rerun
    with pytest.raises(demo_module.DemoError, match="stage 'bad' failed"):
        run("bad", "gigatok.evaluate", ["--no-such-flag"], out, artifact, 1)
