"""`python -m gigatok.bench`: every subcommand ends with one JSON line holding the figures it promises."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gigatok.bench import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "vq" / "VQ_debug.yaml"


@pytest.fixture(autouse=True)
def keep_thread_count():
    """--threads changes the process-wide torch setting; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


@pytest.mark.parametrize("mode, rate", [("generate", "images_per_s"), ("train", "tokens_per_s")])
def test_gpt(mode, rate, capsys):
    result = _run(["gpt", "--gpt-model", "debug", "--mode", mode, "--batch-size", "2", "--num-tokens", "16",
                   "--vocab-size", "1024", "--num-classes", "10", "--repeat", "2", "--threads", "1"], capsys)
    assert result["bench"] == "gpt" and result["mode"] == mode and result["threads"] == 1
    assert len(result["times_s"]) == 2 and result["median_s"] > 0 and result[rate] > 0
    assert result["peak_rss_mb"] > 0
    if mode == "generate":
        assert result["cfg_scale"] == 4.0
        assert result["images_per_s"] == pytest.approx(2 / result["median_s"])
    else:
        assert result["tokens_per_s"] == pytest.approx(2 * 16 / result["median_s"])


def test_gpt_generate_reports_forward_passes_per_sampler(capsys):
    common = ["gpt", "--gpt-model", "debug", "--batch-size", "1", "--num-tokens", "16", "--vocab-size", "64",
              "--num-classes", "10", "--repeat", "1", "--threads", "1", "--temperature", "0.5"]
    plain = _run([*common, "--sampler", "plain"], capsys)
    assert plain["sampler"] == "plain" and plain["forwards"] == 16 and plain["codes_per_forward"] == 1
    sjd = _run([*common, "--sampler", "sjd", "--sjd-window", "8"], capsys)
    assert sjd["sampler"] == "sjd" and sjd["sjd_window"] == 8 and 0 <= sjd["acceptance_rate"] <= 1
    # random weights have a zero output head: every code is uniform, every draft accepted (window 8: 2 passes)
    assert sjd["forwards"] == 2 and sjd["codes_per_forward"] == 8
    assert sjd["images_per_s"] > 0


def test_gpt_bf16_without_guidance(capsys):
    result = _run(["gpt", "--gpt-model", "debug", "--batch-size", "1", "--num-tokens", "8", "--vocab-size", "64",
                   "--cfg-scale", "1.0", "--precision", "bf16", "--repeat", "1", "--threads", "1"], capsys)
    assert result["precision"] == "bf16" and result["images_per_s"] > 0


@pytest.mark.parametrize("mode", ["encode_decode", "train"])
def test_tokenizer(mode, capsys):
    result = _run(["tokenizer", "--model-config", str(CONFIG), "--mode", mode, "--batch-size", "1", "--repeat", "1",
                   "--threads", "1"], capsys)
    assert result["bench"] == "tokenizer" and result["impl"] == "ours" and result["mode"] == mode
    assert {"median_s", "images_per_s", "peak_rss_mb"} <= set(result) and result["images_per_s"] > 0


def test_unknown_gpt_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["gpt", "--gpt-model", "GPT-Z"])
    assert info.value.code == 2 and "invalid choice: 'GPT-Z'" in capsys.readouterr().err
