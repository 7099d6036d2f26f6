"""The quantizer zoo through the whole pipeline on CPU: `model.init_args.quantizer` (vq | simvq | ibq | lfq | fsq) in
the 1D and 2D debug tokenizers -> train_vq (and exact resume after SIGKILL) -> extract_codes (meta.json vocabulary =
K) -> train_c2i -> sample_c2i_visualization (codes in [0, K)).

The quantizers are selected by CLI overrides of the debug YAMLs (`QUANTIZER_OVERRIDES`), as a user would. To keep
CI short, each quantizer runs the whole chain on one of the two tokenizers (alternating 1D / 2D) and only trains on
the other one; resume after SIGKILL runs for every quantizer but vq (whose resume is tests/stages/test_train_vq.py's; slow). The parity of each quantizer with its reference
is tests/tokenizer/test_quantizers.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_digit_folder

from gigatok.builders import build_tokenizer, load_tokenizer
from gigatok.config import ConfigError, load_config
from gigatok.config.tokenizer import QUANTIZER_NAMES
from gigatok.stages.extract_codes import main as extract_main
from gigatok.stages.sample_c2i_visualization import main as sample_main
from gigatok.stages.train_c2i import main as train_c2i_main
from gigatok.stages.train_vq import main as train_vq_main
from gigatok.tokenizer.quantizer_zoo import QUANTIZERS
from gigatok.tokenizer.vq_model import _HybridTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"1d": REPO / "configs" / "vq" / "VQ_debug.yaml", "2d": REPO / "configs" / "vq" / "VQ_debug_2d.yaml"}
# The debug YAMLs are vq with K = 1024; the others keep K = 1024 (lfq: 10 bits, fsq: 8*8*4*4 levels).
QUANTIZER_OVERRIDES: dict[str, list[str]] = {
    "vq": [],
    "simvq": ["--model.init_args.quantizer=simvq", "--model.init_args.codebook_transform=linear",
              "--model.init_args.freeze_codebook=true"],
    "ibq": ["--model.init_args.quantizer=ibq"],
    "lfq": ["--model.init_args.quantizer=lfq", "--model.init_args.codebook_embed_dim=10"],
    "fsq": ["--model.init_args.quantizer=fsq", "--model.init_args.levels=[8,8,4,4]",
            "--model.init_args.codebook_embed_dim=4"],
}
K = 1024
# Whole chain on one tokenizer per quantizer; the other one only trains.
CHAIN_DIM = {"vq": "1d", "simvq": "2d", "ibq": "1d", "lfq": "2d", "fsq": "1d"}
# Cheap training: random LPIPS backbone, no teacher, no discriminator phase, no W&B, no workers, no auxiliary loss.
TRAIN_FLAGS = ["--mixed-precision", "none", "--no-wandb", "--num-workers", "0", "--trainer.lpips_random_backbone=true",
               "--trainer.distill_loss=false", "--model.init_args.distill_depth=null", "--disc-start", "100",
               "--aux-loss-end", "0", "--global-batch-size", "4", "--log-every", "1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digit_folder(tmp_path_factory.mktemp("data") / "digits", 8)


def _train(dim: str, quantizer: str, data: Path, save: Path, name: str, *extra: str) -> Path:
    train_vq_main(["--model-config", str(CONFIGS[dim]), "--data-path", str(data), "--save-path", str(save),
                   "--sub-exp-dir", name, *TRAIN_FLAGS, *QUANTIZER_OVERRIDES[quantizer], *extra])
    return save / name


def _metrics(run: Path) -> dict[int, dict]:
    from stages.test_train_vq import read_metrics

    return read_metrics(run)


def test_config_names_match_the_registry_and_bad_settings_fail_in_one_line():
    assert sorted(QUANTIZER_NAMES) == sorted(QUANTIZERS)
    with pytest.raises(ConfigError, match=r"quantizer.*'vqq'.*\['vq', 'simvq', 'ibq', 'lfq', 'fsq'\]"):
        load_config(CONFIGS["1d"], ["--model.init_args.quantizer=vqq"])
    with pytest.raises(ConfigError, match=r"lfq has codebook_size 2\*\*codebook_embed_dim = 256"):
        load_config(CONFIGS["1d"], ["--model.init_args.quantizer=lfq"])  # 8 bits but K = 1024
    with pytest.raises(ConfigError, match=r"fsq levels \[8, 5, 5, 5\] give codebook_size 1000"):
        load_config(CONFIGS["1d"], ["--model.init_args.quantizer=fsq", "--model.init_args.levels=[8,5,5,5]"])
    with pytest.raises(ConfigError, match="quantizer fsq needs levels"):
        load_config(CONFIGS["1d"], ["--model.init_args.quantizer=fsq"])
    with pytest.raises(ConfigError, match="levels .* is for quantizer 'fsq', not 'vq'"):
        load_config(CONFIGS["1d"], ["--model.init_args.levels=[4,4]"])
    with pytest.raises(ConfigError, match="simvq: True selects quantizer 'simvq' but quantizer is 'ibq'"):
        load_config(CONFIGS["1d"], ["--model.init_args.simvq=true", "--model.init_args.quantizer=ibq"])


def test_official_switches_select_simvq_and_lfq_and_vq_keeps_its_keys():
    # vq (every released config) keeps exactly its state_dict keys, so today's checkpoints load strictly.
    keys = {k for k in build_tokenizer(load_config(CONFIGS["1d"])).state_dict() if k.startswith("quantize.")}
    assert keys == {"quantize.embedding.weight", "quantize.codebook_used"}
    simvq = build_tokenizer(load_config(CONFIGS["1d"], ["--model.init_args.simvq=true",
                                                        "--model.init_args.freeze_codebook=true"]))
    assert type(simvq.quantize).__name__ == "SimVQ" and "quantize.codebook_transform.weight" in simvq.state_dict()
    assert not simvq.quantize.embedding.weight.requires_grad  # only the map learns
    lfq = build_tokenizer(load_config(CONFIGS["2d"], ["--model.init_args.use_lfq=true",
                                                      "--model.init_args.codebook_embed_dim=10"]))
    assert type(lfq.quantize).__name__ == "LFQ" and lfq.codebook_size == K


@pytest.mark.parametrize("quantizer", QUANTIZER_NAMES)
def test_each_quantizer_trains_extracts_codes_and_a_gpt_samples_from_them(quantizer, digits, tmp_path, monkeypatch):
    dim = CHAIN_DIM[quantizer]
    run = _train(dim, quantizer, digits, tmp_path, "tok", "--iterations", "2", "--ckpt-every", "2")
    metrics = _metrics(run)
    assert sorted(metrics) == [1, 2] and all(np.isfinite(m["train/total"]) for m in metrics.values())
    if quantizer == "fsq":  # no loss terms
        assert metrics[2]["train/vq"] == metrics[2]["train/commit"] == 0.0
    else:
        assert metrics[2]["train/vq"] + metrics[2]["train/commit"] > 0
    tokenizer = load_tokenizer(run / "checkpoints" / "0000002.pt", run / "config.yaml")
    assert type(tokenizer.quantize) is QUANTIZERS[quantizer] and tokenizer.codebook_size == K

    codes_dir = tmp_path / "codes"
    extract_main(["--data-path", str(digits), "--code-path", str(codes_dir), "--model-config",
                  str(run / "config.yaml"), "--vq-ckpt", str(run / "checkpoints" / "0000002.pt"),
                  "--num-workers", "0", "--device", "cpu"])
    meta = json.loads((codes_dir / "meta.json").read_text())
    assert meta["codebook_size"] == K and meta["num_tokens"] == 64

    train_c2i_main(["--code-path", str(codes_dir), "--save-path", str(tmp_path), "--sub-exp-dir", "gpt",
                    "--gpt-model", "debug", "--num-workers", "0", "--device", "cpu", "--mixed-precision", "none",
                    "--iterations", "2", "--global-batch-size", "4", "--ckpt-every", "2", "--log-every", "1"])
    gpt_ckpt = tmp_path / "gpt" / "checkpoints" / "0000002.pt"
    gpt_config = torch.load(gpt_ckpt, map_location="cpu", weights_only=False)["extra"]["gpt_config"]
    assert gpt_config["vocab_size"] == K  # the vocabulary followed meta.json

    sampled = []  # the codes the sampler hands to the tokenizer
    decode_code = _HybridTokenizer.decode_code
    monkeypatch.setattr(_HybridTokenizer, "decode_code", lambda self, codes: sampled.append(codes) or
                        decode_code(self, codes))
    out = tmp_path / "samples"
    sample_main(["--quant-way=vq", "--tok-config", str(run / "config.yaml"), "--vq-ckpt",
                 str(run / "checkpoints" / "0000002.pt"), "--gpt-model", "debug", "--gpt-ckpt", str(gpt_ckpt),
                 "--num-classes", "8", "--class-idx", "1,3", "--qual-num", "2", "--per-proc-batch-size", "2",
                 "--cfg-scale", "2.0", "--precision", "none", "--device", "cpu", "--sample-dir", str(out)])
    with np.load(out / "samples.npz") as data:
        images = data["arr_0"]
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    codes = torch.cat(sampled)
    assert codes.shape == (2, 64) and 0 <= int(codes.min()) and int(codes.max()) < K


@pytest.mark.parametrize("quantizer", QUANTIZER_NAMES)
def test_each_quantizer_trains_in_the_other_tokenizer(quantizer, digits, tmp_path):
    dim = "2d" if CHAIN_DIM[quantizer] == "1d" else "1d"
    run = _train(dim, quantizer, digits, tmp_path, "tok", "--iterations", "2", "--ckpt-every", "2")
    metrics = _metrics(run)
    assert sorted(metrics) == [1, 2] and all(np.isfinite(m["train/total"]) for m in metrics.values())
    tokenizer = load_tokenizer(run / "checkpoints" / "0000002.pt", run / "config.yaml")
    codes = tokenizer.encode_to_codes(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert codes.shape == (2, 64) and 0 <= int(codes.min()) and int(codes.max()) < K


@pytest.mark.slow
# lfq and fsq hold constant buffers outside the checkpoint, ibq a softmax-trained codebook, simvq a frozen codebook
# (no optimizer state) under a trained linear map
@pytest.mark.parametrize("quantizer, dim", [("lfq", "1d"), ("fsq", "2d"), ("ibq", "1d"), ("simvq", "2d")])
def test_resume_after_sigkill_is_exact(quantizer, dim, digits, tmp_path):
    from stages.test_train_vq import assert_same_metrics, run_killed_then_resumed

    args = ["--model-config", str(CONFIGS[dim]), "--data-path", str(digits), "--save-path", str(tmp_path),
            *TRAIN_FLAGS, *QUANTIZER_OVERRIDES[quantizer], "--iterations", "4", "--ckpt-every", "2",
            "--trainer.deterministic=true"]
    run_b, _ = run_killed_then_resumed(args, tmp_path, kill_at=2, steps=4)
    metrics_a, metrics_b = _metrics(tmp_path / "A"), _metrics(run_b)
    assert sorted(metrics_a) == sorted(metrics_b) == [1, 2, 3, 4]
    for step in range(1, 5):
        assert_same_metrics(metrics_a[step], metrics_b[step])
    final_a = torch.load(tmp_path / "A" / "checkpoints" / "0000004.pt", map_location="cpu", weights_only=False)
    final_b = torch.load(run_b / "checkpoints" / "0000004.pt", map_location="cpu", weights_only=False)
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key


def test_usage_window_of_a_large_implicit_codebook_is_sparse_and_equals_the_dense_one(monkeypatch):
    import gigatok.infra.codebook_stats as stats

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 4096, (4, 16), generator=generator) for _ in range(7)]
    dense = stats.CodebookUsageTracker(4096, window=3)
    for codes in batches:
        dense.update(codes)
    monkeypatch.setattr(stats, "SPARSE_WINDOW_ABOVE", 1024)  # 4096 codes now count as a large codebook
    sparse = stats.CodebookUsageTracker(4096, window=3)
    for codes in batches:
        sparse.update(codes)
    assert all(isinstance(entry, tuple) and entry[0].numel() <= 64 for entry in sparse._recent)
    assert torch.equal(sparse._window_counts, dense._window_counts)
    assert torch.equal(sparse._window_counts, torch.bincount(torch.cat(batches[-3:]).flatten(), minlength=4096))
    assert sparse.compute() == dense.compute()


@pytest.mark.parametrize("quantizer", [q for q in QUANTIZER_NAMES if q != "vq"])
def test_shipped_debug_configs_are_vq_debug_with_the_overrides(quantizer):
    shipped = load_config(REPO / "configs" / "vq" / f"VQ_debug_{quantizer}.yaml")
    assert shipped == load_config(CONFIGS["1d"], QUANTIZER_OVERRIDES[quantizer])
    assert build_tokenizer(shipped, device="meta").quantize.codebook_size == K
