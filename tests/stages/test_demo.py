"""The CPU demo end to end at a reduced budget: the default 1D pair (VQVitModelPlus + gpt_1d) learns visibly, every
artifact, metric and link of the report, stage reuse on a second run, reruns when settings change, --fresh, the 2D
pair (--tokenizer 2d) with both PSNR curves in one figure, and the stage runner's bookkeeping."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import expect_exit_2

from gigatok.engine.demo_plan import inception_available
from gigatok.errors import UserError
from gigatok.infra import warm_start
from gigatok.infra.stage_runner import Stage, StageRunner
from gigatok.stages import demo
from gigatok.stages.demo import main

QUICK = ["--vq-steps", "4", "--gpt-steps", "4", "--num-samples", "20", "--classifier-epochs", "1",
         "--eval-limit", "20", "--threads", "1"]
# Enough steps to learn visibly, in about 2 minutes on one core. Chance: about 11 dB (the mean digit) and 10% class
# agreement. Measured (AMD Zen 4, 1 thread): 19.6 dB, 91% usage, 52% class agreement (classifier: 92%).
REDUCED = ["--vq-steps", "240", "--gpt-steps", "400", "--num-samples", "40", "--classifier-epochs", "3",
           "--eval-limit", "60", "--threads", "1"]
MIN_PSNR_DB, MIN_USAGE, MIN_CLASS_AGREEMENT = 16.0, 0.5, 0.3
SCALARS = ["heldout_psnr_db", "heldout_ssim", "heldout_ssim_data_range_1", "codebook_usage", "class_agreement",
           "classifier_heldout_accuracy", "classifier_heldout_accuracy_mirrored"]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    main(["--out", str(out), *REDUCED])
    return out


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}


@pytest.mark.slow
def test_quick_demo_writes_every_artifact_metric_and_link(quick_demo):
    out = quick_demo
    metrics = json.loads((out / "metrics.json").read_text())
    use_fid = inception_available()[0]
    for key in SCALARS + (["fid"] if use_fid else []):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["heldout_rfid"] is None  # only with --rfid
    for key in ("codebook_usage", "class_agreement", "classifier_heldout_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert len(metrics["class_agreement_per_class"]) == 10
    assert metrics["num_samples"] == 40 and metrics["num_heldout"] == 60
    assert set(metrics["targets"]) == set(demo.TARGETS)
    assert all(t["met"] == (t["value"] >= t["target"]) for t in metrics["targets"].values())
    assert metrics["time"]["pipeline_wall_s"] > 0 and metrics["time"]["pipeline_cpu_s"] > 0
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    expected = {"figures/recon_heldout.png", "figures/recon_photos.png", "figures/samples_by_class.png",
                "figures/curves_tokenizer.png", "figures/curves_gpt.png", "figures/psnr_vs_step.png", "metrics.json",
                "samples/grids/class_9_grid.png", "logs/tokenizer.log", "runs/tokenizer/config.yaml"}
    assert expected <= set(links)
    for link in links:
        assert (out / link).is_file(), link
    records = _records(out)
    stages = ["data", "tokenizer", "tokenizer_curve", "recon_heldout", "codes_heldout", "recon_photos", "codes", "gpt",
              "grids", "samples", "classifier"] + (["reference"] if use_fid else [])
    assert set(stages) == set(records) - {"eval_subset"}
    assert all(records[s]["status"] == "done" and records[s]["wall_s"] > 0 for s in stages)
    for s in stages:
        if records[s]["command"]:
            assert records[s]["command"][0].startswith("gigatok.")  # a real entry point ...
            assert (out / "logs" / f"{s}.log").stat().st_size > 0  # ... whose output was kept


@pytest.mark.slow
def test_reduced_1d_demo_learns_visibly(quick_demo):
    """The default pair, GigaTok's 1D tokenizer and gpt_1d, trains to well above chance in a few hundred steps."""
    metrics = json.loads((quick_demo / "metrics.json").read_text())
    records = _records(quick_demo)
    assert "configs/vq/VQ_demo.yaml" in " ".join(records["tokenizer"]["command"])
    assert "--gpt-2d" not in records["gpt"]["command"] and "--gpt-2d" not in records["samples"]["command"]
    curve = metrics["psnr_curves"]["1d"]
    assert set(metrics["psnr_curves"]) == {"1d"} and curve["model_cls"] == "VQVitModelPlus"
    assert [p["step"] for p in curve["points"]] == [40, 80, 120, 160, 200, 240]
    assert abs(curve["points"][-1]["psnr_db"] - metrics["heldout_psnr_db"]) < 0.05  # same checkpoint, same rule
    assert curve["points"][-1]["psnr_db"] > curve["points"][0]["psnr_db"] + 2
    assert metrics["heldout_psnr_db"] > MIN_PSNR_DB, metrics["heldout_psnr_db"]
    assert metrics["codebook_usage"] > MIN_USAGE, metrics["codebook_usage"]
    assert metrics["class_agreement"] > MIN_CLASS_AGREEMENT, metrics["class_agreement"]
    report = (quick_demo / "report.md").read_text()
    assert "VQVitModelPlus" in report and "gpt_1d" in report


@pytest.mark.slow
def test_2d_pair_is_one_flag_away_and_the_figure_shows_both_curves(quick_demo, tmp_path):
    out = tmp_path / "out"
    main(["--out", str(out), "--tokenizer", "2d", *QUICK])
    records = _records(out)
    assert "configs/vq/VQ_demo_2d.yaml" in " ".join(records["tokenizer"]["command"])
    assert "--gpt-2d" in records["gpt"]["command"] and "--gpt-2d" in records["grids"]["command"]
    shutil.copy(quick_demo / "curves" / "tokenizer_1d.json", out / "curves")  # as if the 1D demo ran here too
    main(["--out", str(out), "--tokenizer", "2d", *QUICK])  # every stage reused, the report drawn again
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["psnr_curves"]) == {"1d", "2d"}
    assert metrics["psnr_curves"]["2d"]["model_cls"] == "VQVitModel2DPlus"
    report = (out / "report.md").read_text()
    assert "1d (VQVitModelPlus, 32 tokens, 240 steps)" in report
    assert "2d (VQVitModel2DPlus, 16 tokens, 4 steps)" in report and "LlamaGen GPT (2D RoPE)" in report
    assert (out / "figures" / "psnr_vs_step.png").is_file()


def test_second_run_reuses_every_stage_and_a_changed_setting_reruns_its_stage(quick_demo, capsys):
    before = _records(quick_demo)
    main(["--out", str(quick_demo), *REDUCED])
    printed = capsys.readouterr().out
    assert printed.count("-- reused") == len(before)
    assert _records(quick_demo) == before  # nothing ran, no record rewritten
    epochs = REDUCED.index("--classifier-epochs") + 1
    main(["--out", str(quick_demo), *REDUCED[:epochs], "4", *REDUCED[epochs + 1:]])
    printed = capsys.readouterr().out
    after = _records(quick_demo)
    assert after["classifier"]["stamp"] != before["classifier"]["stamp"]  # its setting changed: it ran again
    assert all(after[s]["stamp"] == before[s]["stamp"] for s in before if s != "classifier")
    assert printed.count("-- reused") == len(before) - 1


def test_rfid_reruns_only_the_heldout_reconstruction_in_the_quantitative_mode(quick_demo, capsys):
    if not inception_available()[0]:
        pytest.skip("no Inception weights: no rFID")
    main(["--out", str(quick_demo), *REDUCED])  # the REDUCED settings again (an earlier test changed one)
    before = _records(quick_demo)
    main(["--out", str(quick_demo), *REDUCED, "--rfid"])
    after = _records(quick_demo)
    assert after["recon_heldout"]["stamp"] != before["recon_heldout"]["stamp"]
    assert "--qualitative" not in after["recon_heldout"]["command"]
    assert [s for s in before if after[s]["stamp"] != before[s]["stamp"]] == ["recon_heldout"]
    metrics = json.loads((quick_demo / "metrics.json").read_text())
    assert math.isfinite(metrics["heldout_rfid"]) and metrics["num_heldout"] == 60
    assert 0.0 <= metrics["codebook_usage"] <= 1.0


def test_fresh_deletes_the_output_and_until_stops_early(tmp_path):
    out = tmp_path / "out"
    main(["--out", str(out), "--until", "data", *QUICK])
    first = _records(out)["data"]["stamp"]
    (out / "stale.txt").write_text("from an older run")
    main(["--out", str(out), "--fresh", "--until", "data", *QUICK])
    assert not (out / "stale.txt").exists()
    assert set(_records(out)) == {"data"} and _records(out)["data"]["stamp"] != first
    assert not (out / "report.md").exists()  # --until: no report


def test_rfid_without_fid_says_it_is_ignored(tmp_path, capsys):
    main(["--out", str(tmp_path / "out"), "--until", "data", "--no-fid", "--rfid", *QUICK])
    assert "--rfid ignored: rFID needs the Inception weights" in capsys.readouterr().out


def test_user_errors_exit_2(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("not a demo run")
    assert "holds no demo run" in expect_exit_2(main, ["--out", str(other)], capsys)
    assert "not a stage" in expect_exit_2(main, ["--out", str(tmp_path / "o"), "--until", "nope"], capsys)
    assert "--gpt-steps" in expect_exit_2(main, ["--out", str(tmp_path / "o"), "--gpt-steps", "0"], capsys)


@pytest.mark.parametrize("warm", [True, False], ids=["warm-start", "subprocess"])
def test_runner_reuses_reruns_on_changed_commands_and_inputs_and_reports_failures(tmp_path, capsys, warm):
    """Stages are `python -m json.tool ...` here: cheap commands with the same bookkeeping as the real ones, run
    in children of the warm-start zygote or as plain subprocesses."""
    work = tmp_path / "work"

    def stage(name: str, flags: list[str], deps: list[str] = ()) -> Stage:
        def artifact() -> Path | None:
            return work / name if (work / name).exists() else None

        # Only `a` declares its folder as output (deleted when `a` starts over).
        return Stage(name, name, artifact, [work / name] if name == "a" else [], list(deps), ["json.tool", *flags])

    (work / "a").mkdir(parents=True)
    (work / "b").mkdir()
    with StageRunner(tmp_path / "out", threads=1, warm=warm, modules=["json.tool"]) as runner:
        assert (runner.launcher is not None) == (warm and warm_start.available())
        record_a = runner.run(stage("a", ["--help"]), 1, 2)
        record_b = runner.run(stage("b", ["--help"], ["a"]), 2, 2)
        assert "usage" in (tmp_path / "out" / "logs" / "a.log").read_text()
        assert not record_a["reused"] and "usage" in capsys.readouterr().err  # the output reached the terminal
        assert record_a["cpu_s"] > 0  # counted for warm children too (the zygote reaps them, not the runner)
    with StageRunner(tmp_path / "out", threads=1, warm=warm) as runner:
        assert runner.run(stage("a", ["--help"]), 1, 2)["reused"]
        assert runner.run(stage("b", ["--help"], ["a"]), 2, 2)["reused"]
        # `a` with another command: its output is deleted before it runs (so it cannot prove completion any more).
        with pytest.raises(UserError, match="without producing its output"):
            runner.run(stage("a", ["--help", "--sort-keys"]), 1, 2)
        assert not (work / "a").exists()
        (work / "a").mkdir()
        runner.run(stage("a", ["--help", "--sort-keys"]), 1, 2)
        # ... and `b`, which reads `a`'s output, runs again although its own command is unchanged.
        assert runner.run(stage("b", ["--help"], ["a"]), 2, 2)["stamp"] != record_b["stamp"]
        with pytest.raises(UserError, match=r"stage 'bad' failed \(exit code 2\).*bad.log"):
            runner.run(stage("bad", ["--no-such-flag"]), 1, 1)


def test_a_moved_output_folder_reuses_its_stages_and_old_records_are_upgraded(tmp_path, capsys):
    """Keys hold the output folder and the checkout as placeholders: a copied --out folder reuses every stage (its
    commands name the new folder). A record written with the older, absolute-path key is reused once and upgraded."""
    def stages(out: Path) -> list[Stage]:
        def artifact(name: str):
            return lambda: out / name if (out / name).exists() else None
        # json.tool --help ignores the path it is given; the key still holds it, as real stages' keys hold theirs
        return [Stage("a", "a", artifact("a"), [out / "a"], [], ["json.tool", "--help", str(out / "data")]),
                Stage("b", "b", artifact("b"), [out / "b"], ["a"], ["json.tool", "--help", str(out / "a")])]

    def run_all(out: Path) -> list[dict]:
        with StageRunner(out, threads=1, warm=False) as runner:
            return [runner.run(stage, i + 1, 2) for i, stage in enumerate(stages(out))]

    first = tmp_path / "first"
    for name in ("a", "b"):
        (first / name).mkdir(parents=True)
    assert not any(r["reused"] for r in run_all(first))
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    assert all(r["reused"] for r in run_all(moved))
    record_b = json.loads((moved / "stages" / "b.json").read_text())  # it now names the moved files
    assert record_b["command"][-1] == str(moved / "a")
    # An old record: the key of the same stage without placeholders.
    legacy = tmp_path / "legacy"
    shutil.copytree(first, legacy)
    with StageRunner(legacy, threads=1, warm=False) as runner:
        stage_a = stages(legacy)[0]
        record = json.loads((legacy / "stages" / "a.json").read_text())
        record["key"] = runner.key(stage_a, portable=False)
        (legacy / "stages" / "a.json").write_text(json.dumps(record))
        assert record["key"] != runner.key(stage_a)
        assert runner.run(stage_a, 1, 1)["reused"]
        assert json.loads((legacy / "stages" / "a.json").read_text())["key"] == runner.key(stage_a)


@pytest.mark.parametrize("warm", [True, False], ids=["warm-start", "subprocess"])
def test_a_stage_stopped_by_ctrl_c_is_reported_as_an_interruption(tmp_path, monkeypatch, warm):
    """A stage that got Ctrl-C first (exit code 130) makes the runner raise KeyboardInterrupt, which run_demo turns
    into the "run the same command again to resume" message, not into a failed stage."""
    (tmp_path / "ctrl_c_stage.py").write_text("raise SystemExit(130)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    stage = Stage("s", "s", lambda: None, [], [], ["ctrl_c_stage"])
    with StageRunner(tmp_path / "out", threads=1, warm=warm) as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.run(stage, 1, 1)


def test_sjd_bench_on_the_demo_gpt(quick_demo, capsys):
    """`gigatok.bench sjd` times both samplers on the demo's GPT and re-runs its samples command per sampler."""
    from gigatok.bench import main as bench_main

    assert bench_main(["sjd", "--demo-dir", str(quick_demo), "--images", "2", "--rounds", "1", "--seeds", "0",
                       "--window", "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["greedy_identical"] is True and result["codes_per_image"] == 32  # the 1D tokenizer's 32 tokens
    batch1 = result["batch1"]
    assert batch1["plain"]["forwards_per_image"] == 32 and 8 <= batch1["sjd"]["forwards_per_image"] <= 32
    assert batch1["wall_speedup"] > 0 and 0 <= batch1["sjd"]["acceptance_rate"] <= 1
    runs = result["quality"]["runs"]
    assert [r["seed"] for r in runs["plain"]] == [0] and [r["seed"] for r in runs["sjd"]] == [0]
    for r in runs["plain"] + runs["sjd"]:
        assert 0 <= r["class_agreement"] <= 1
        assert (r["fid"] is not None) == inception_available()[0]


def test_sjd_bench_without_a_demo_run_is_a_user_error(tmp_path, capsys):
    from gigatok.bench import main as bench_main

    assert "run the demo first" in expect_exit_2(bench_main, ["sjd", "--demo-dir", str(tmp_path)], capsys)
