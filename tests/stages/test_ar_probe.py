"""AR probing: the report (`gigatok.stages.ar_probe_report`) and the whole pipeline (`scripts/ar_probe.sh`) on CPU.

The pipeline test trains the VQ_debug tokenizer for 2 steps on a tiny 2-class ImageFolder, extracts its codes,
trains a debug GPT for 6 of 10 WSD steps, samples 8 images for gFID (reference: the val images), computes the
validation loss, trains the linear probe for 2 epochs and checks the table; a rerun must skip every stage.
The stages run through the real launchers with TORCH_RUN_PATH (an official knob) set to a one-process stand-in
for torchrun, which saves a Python start per stage; torchrun itself is exercised by the stages' own tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import expect_exit_2
from helpers import make_colour_folders
from PIL import Image

from gigatok.stages.ar_probe_report import main as report_main

REPO = Path(__file__).resolve().parents[2]


def write_json(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


# -- report -------------------------------------------------------------------------------------------------------
def test_report_collects_every_stage(tmp_path, capsys):
    gpt = tmp_path / "gpt.pt"
    torch.save({"model": {}, "step": 250000, "config": {"gpt_model": "GPT-B", "global_batch_size": 256, "lr": 1e-4,
                                                          "secret": "not reported"}}, gpt)
    tok = tmp_path / "tok.pt"
    torch.save({"model": {}, "steps": 500000}, tok)  # official layout: "steps" only
    samples = tmp_path / "samples"
    samples.mkdir()
    write_json(samples / "cfg-1.5.json", {"fid": 4.1, "inception_score": 200.0})
    write_json(samples / "cfg-1.75.json", {"fid": 3.26, "inception_score": 220.0})  # the search's best
    write_json(samples / "cfg-1.75.plan.json", {"num_samples": 50000})
    argv = ["--exp-dir", str(tmp_path / "exp"), "--name", "SB", "--tok-ckpt", str(tok), "--gpt-ckpt", str(gpt),
            "--val-loss", write_json(tmp_path / "val.json", {"val_loss": 7.3456}),
            "--lin-probe", write_json(tmp_path / "lin.json", {"top1": 0.629, "top5": 0.85, "num_images": 50000}),
            "--gfid", str(samples), "--rfid", write_json(tmp_path / "rec.json", {"fid": 1.01})]
    report_main(argv)
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "exp" / "ar_probe.json").read_text())
    assert (report["tokenizer"]["steps"], report["gpt"]["steps"]) == (500000, 250000)
    assert (report["rfid"], report["gfid"], report["val_loss"], report["lin_probe_top1"]) == (1.01, 3.26, 7.3456, 0.629)
    assert report["generation"]["file"].endswith("cfg-1.75.json") and "secret" not in report["gpt"]
    row = "| SB | 500000 | 1.01 | GPT-B | 250000 | 3.26 | 7.3456 | 62.90 |"
    assert row in (tmp_path / "exp" / "ar_probe.md").read_text() and row in printed


def test_report_marks_missing_stages(tmp_path, capsys):
    report_main(["--exp-dir", str(tmp_path), "--gfid", str(tmp_path / "none"), "--val-loss", str(tmp_path / "x.json"),
                 "--rfid", "2.5"])
    assert f"| {tmp_path.name} | n/a | 2.50 | n/a | n/a | n/a | n/a | n/a |" in capsys.readouterr().out


@pytest.mark.parametrize("flag, content, message", [
    ("--val-loss", "{not json", "is not valid JSON"),
    ("--rfid", '{"psnr": 20}', "has no 'rfid' / 'fid' entry"),
])
def test_report_rejects_unusable_inputs(tmp_path, capsys, flag, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert message in expect_exit_2(report_main, ["--exp-dir", str(tmp_path), flag, str(bad)], capsys)


# -- pipeline -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_end_to_end_and_rerun_skips_every_stage(tmp_path):
    data = make_colour_folders(tmp_path / "imagenet", train_per_class=8, val_per_class=4)
    ref = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BICUBIC))
                    for p in sorted((data / "ILSVRC2012_img_val").rglob("*.png"))])  # (8, 32, 32, 3) uint8
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    shim = tmp_path / "one_process_launch.sh"
    shim.write_text(f'#!/usr/bin/env bash\nwhile [ $# -gt 0 ] && [ "$1" != "-m" ]; do shift; done\n'
                    f'exec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "TORCH_RUN_PATH": str(shim),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TOK_CONFIG": str(REPO / "configs" / "vq" / "VQ_debug.yaml"), "IMGNET_ROOT": str(data),
           "EXP_ROOT": str(tmp_path / "results"), "EXP_NAME": "tiny",
           "TOK_ITER": "2", "TOK_BSZ": "4", "CKPT_EVERY": "2", "PRECISION": "none",
           "TOK_ARGS": "--num-workers 0 --perceptual-weight 0 --trainer.distill_loss=false "
                       "--trainer.lpips_random_backbone=true",
           "TEN_CROP": "False", "CODE_BSZ": "16", "EXTRACT_ARGS": "--num-workers 0",
           "GPT_MODEL": "debug", "LM_BSZ": "4", "LM_ITER": "10", "LM_STOP_ITER": "6", "LM_CKPT_EVERY": "3",
           "LM_PRECISION": "none", "LM_ARGS": "--num-workers 0 --lr 1e-3",
           "GT_NPZ_PATH": str(tmp_path / "ref.npz"), "NUM_FID_SAMPLES": "8", "EVAL_BATCH_PER_GPU": "8",
           "CFG_SCALE": "2.0", "CFG_SEARCH": "False",
           "VAL_BSZ": "8", "VAL_ARGS": "--num-workers 0",
           "LIN_EPOCHS": "2", "LIN_WARMUP": "1", "LIN_BSZ": "4", "LIN_CKPT_EPOCH": "1",
           "LIN_ARGS": "--num-workers 0 --lr 2", "RFID": "12.5"}
    for name in ("GPUS", "gpus", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TRAIN_PATH", "VAL_PATH", "VQ_CKPT", "EXP_DIR"):
        env.pop(name, None)
    script = ["bash", str(REPO / "scripts" / "ar_probe.sh")]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]

    exp = tmp_path / "results" / "tiny"
    report = json.loads((exp / "ar_probe.json").read_text())
    assert report["tokenizer"]["steps"] == 2 and report["tokenizer"]["config"].endswith("tokenizer/config.yaml")
    assert (report["gpt"]["steps"], report["gpt"]["gpt_model"], report["gpt"]["iterations"]) == (6, "debug", 10)
    assert report["rfid"] == 12.5 and report["gfid"] > 0 and report["generation"]["num_samples"] == 8
    assert report["val_loss"] == json.loads((exp / "val_loss.json").read_text())["val_loss"] > 0
    probe = json.loads((exp / "lin_probe" / "lin_probe_acc.json").read_text())
    assert probe["num_images"] == 8 and report["lin_probe_top1"] == probe["top1"]
    assert (exp / "gpt" / "checkpoints" / "0000006.pt").is_file()  # stopped inside the stable phase (hold 8)
    table = (exp / "ar_probe.md").read_text()
    assert "| tiny | 2 | 12.50 | debug | 6 |" in table

    tic = time.perf_counter()
    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-4000:]
    for stage in ("1/7 tokenizer", "2/7 codes", "3/7 GPT", "4/7 gFID", "5/7 val loss", "6/7 linear probe"):
        assert f"=== ar_probe: {stage}: done" in again.stderr
    assert (exp / "ar_probe.md").read_text() == table and time.perf_counter() - tic < 60
