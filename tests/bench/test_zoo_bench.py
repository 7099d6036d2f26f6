"""`python -m gigatok.bench zoo`: the quantizer comparison bench, with tiny settings (2 quantizers, a few steps)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gigatok.bench import main, zoo
from gigatok.config import load_config
from gigatok.tokenizer.quantizer_zoo import QUANTIZERS

REPO = Path(__file__).resolve().parents[2]
METRICS = ("bits_per_image", "psnr_db", "ssim", "codebook_usage", "perplexity", "ar_val_loss")
TINY = ["--quantizers", "vq,fsq", "--vq-steps", "3", "--vq-batch-size", "8", "--gpt-steps", "2", "--gpt-batch-size",
        "8", "--eval-limit", "20", "--threads", "1"]


@pytest.mark.parametrize("codebook_size", [256, 1024])
def test_every_quantizer_gets_an_implicit_codebook_of_the_same_size(codebook_size):
    config = REPO / "configs" / "vq" / "VQ_demo_2d.yaml"
    for name in zoo.QUANTIZERS:
        overrides, _ = zoo.quantizer_overrides(name, codebook_size, lr=1e-4)
        # load_config refuses lfq / fsq settings whose implicit codebook is not codebook_size
        init = load_config(config, overrides + [f"--model.init_args.codebook_size={codebook_size}"]).model.init_args
        assert init.quantizer == name and init.codebook_size == codebook_size
    assert sorted(zoo.QUANTIZERS) == sorted(QUANTIZERS)  # the bench covers the whole zoo


def test_fsq_learning_rate_is_capped_and_only_fsq_s():
    """At the demo's lr (3e-3) fsq trains at FSQ_MAX_LR and says so; at the official lr (1e-4) nothing changes."""
    config = load_config(REPO / "configs" / "vq" / "VQ_demo_2d.yaml")
    demo_lr = config.trainer.lr
    assert demo_lr > zoo.FSQ_MAX_LR
    overrides, text = zoo.quantizer_overrides("fsq", 256, demo_lr)
    assert load_config(REPO / "configs" / "vq" / "VQ_demo_2d.yaml", overrides).trainer.lr == zoo.FSQ_MAX_LR
    assert f"lr {zoo.FSQ_MAX_LR:g}" in text
    assert not any("trainer.lr" in o for o in zoo.quantizer_overrides("fsq", 256, 1e-4)[0])
    for name in ("vq", "simvq", "ibq", "lfq"):
        assert not any("trainer.lr" in o for o in zoo.quantizer_overrides(name, 256, demo_lr)[0])


def test_code_stats_counts_usage_over_what_the_held_out_set_can_fill(tmp_path):
    codes = np.array([[0, 1, 2, 3], [0, 1, 2, 3]], dtype=np.int64)  # 2 images x 4 tokens: 4 codes, equally often
    np.save(tmp_path / "c.npy", np.stack([codes, codes + 4], axis=1))  # (N, A, L): a second view, not counted
    (tmp_path / "meta.json").write_text(json.dumps({"codebook_size": 256, "shards": [{"codes": "c.npy"}]}))
    stats = zoo.code_stats(tmp_path)
    assert stats["unique_codes"] == 4 and stats["codebook_usage"] == 4 / 8  # min(K=256, 8 held-out tokens)
    assert stats["perplexity"] == pytest.approx(4.0) and stats["bits_per_image"] == 4 * 8


def test_bad_quantizer_list_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["zoo", "--out", str(tmp_path), "--quantizers", "vq,vqq"])
    assert exit_info.value.code == 2 and "--quantizers 'vq,vqq'" in capsys.readouterr().err


def test_bench_writes_table_figure_json_and_a_rerun_reuses_the_runs(tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main(["zoo", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "zoo.json").read_text())
    rows = {r["quantizer"]: r for r in summary["quantizers"]}
    assert list(rows) == ["vq", "fsq"]
    for r in rows.values():
        assert all(math.isfinite(r[m]) for m in METRICS), r
        assert r["codebook_size"] == 256 and r["bits_per_image"] == 16 * 8 and r["num_heldout_images"] == 20
        assert 0 < r["codebook_usage"] <= 1 and 1 <= r["perplexity"] <= 256 and not r["reused"]
        assert (r["lpips"] is None) == (r["lpips_note"] is not None)  # a value, or "n/a" with its reason
        assert r["lpips"] is None or math.isfinite(r["lpips"])
        assert r["usage_target_met"] == (r["codebook_usage"] >= zoo.USAGE_TARGET)
    table = (out / "zoo.md").read_text()
    assert "| vq |" in table and "| fsq |" in table and "levels [16,16]" in table and "zoo.png" in table
    with Image.open(out / "zoo.png") as figure:
        assert figure.size[0] > 300 and figure.size[1] > 3 * 16  # ground truth + one row per quantizer
    stamps = {p.name: json.loads(p.read_text())["stamp"] for p in (out / "stages").glob("*.json")}
    assert len(stamps) == 1 + 2 * 6  # data + six stages per quantizer
    capsys.readouterr()

    assert main(["zoo", "--out", str(out), *TINY]) == 0  # rerun: every stage is reused, the table rewritten
    assert capsys.readouterr().out.count("-- reused") == len(stamps)
    assert stamps == {p.name: json.loads(p.read_text())["stamp"] for p in (out / "stages").glob("*.json")}
    again = json.loads((out / "zoo.json").read_text())
    assert all(r["reused"] for r in again["quantizers"])
    assert [r["ar_val_loss"] for r in again["quantizers"]] == [r["ar_val_loss"] for r in rows.values()]
