"""Every registry size has exactly the official state_dict keys, shapes and parameter counts (built on meta)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gigatok.builders import build_gpt, build_gpt_config
from gigatok.gpt.model import GPT_MODELS

KEYS = Path(__file__).resolve().parents[1] / "assets" / "keys"

# LlamaGen gpt.py parameter counts (c2i, K=16384, 1000 classes, 2D RoPE: no position parameters), SPEC_llamagen §1.2
LLAMAGEN_PARAMS = {
    "GPT-B": 110_888_448, "GPT-L": 342_910_976, "GPT-XL": 774_699_520, "GPT-XXL": 1_410_972_672,
    "GPT-XXXL": 3_893_027_840, "GPT-1B": 1_199_616_000, "GPT-3B": 3_096_659_200, "GPT-7B": 6_614_589_440,
}
# GigaTok gpt_1d counts (learned (1 + 256, dim) positions), SPEC_gigatok §4.3
GIGATOK_PARAMS = {
    "GPT-B": 111_085_824, "GPT-L": 343_174_144, "GPT-XL": 775_028_480, "GPT-XXL": 1_411_367_424,
    "GPT-XXXL": 3_893_685_760,
}


def read_key_file(name: str) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
    """Parse `keys/<name>.txt`: header `total_params<TAB>N...`, then `key<TAB>(shape)<TAB>dtype` lines."""
    lines = (KEYS / f"{name}.txt").read_text().splitlines()
    total = int(lines[0].split("\t")[1])
    entries = []
    for line in lines[1:]:
        key, shape, _ = line.split("\t")
        entries.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return total, entries


def meta_gpt(name: str, **overrides):
    with torch.device("meta"):
        return build_gpt(name, **overrides)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key_file, name, pos_type", [
    ("gpt1d_GPT-B", "GPT-B", "learned_1d"), ("gpt1d_GPT-L", "GPT-L", "learned_1d"),
    ("gpt1d_GPT-XL", "GPT-XL", "learned_1d"), ("gpt1d_GPT-XXL", "GPT-XXL", "learned_1d"),
    ("gpt2d_LlamaGen-B", "GPT-B", "rope_2d"),
])
def test_official_keys_shapes_and_order(key_file, name, pos_type):
    total, entries = read_key_file(key_file)
    model = meta_gpt(name, pos_type=pos_type)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == entries
    assert n_params(model) == total
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


@pytest.mark.parametrize("name", [n for n in GPT_MODELS if n != "debug"])
def test_parameter_counts_of_every_size(name):
    dim = GPT_MODELS[name]["dim"]
    assert n_params(meta_gpt(name, pos_type="rope_2d")) == LLAMAGEN_PARAMS[name]
    assert n_params(meta_gpt(name, pos_type="rope_1d")) == LLAMAGEN_PARAMS[name]
    learned = n_params(meta_gpt(name, pos_type="learned_1d"))
    assert learned == LLAMAGEN_PARAMS[name] + 257 * dim
    if name in GIGATOK_PARAMS:
        assert learned == GIGATOK_PARAMS[name]


def test_gpt_3b_head_dim_and_qk_norm_keys():
    assert build_gpt_config("GPT-3B").head_dim == 100
    keys = set(meta_gpt("debug", use_qk_norm=True).state_dict())
    qk = {f"layers.0.attention.{n}_norm.{p}" for n in "qk" for p in ("weight", "bias")}  # nn.LayerNorm(head_dim)
    assert qk <= keys


def test_registry_and_config_errors():
    assert all(set(v) == {"n_layer", "n_head", "dim"} for v in GPT_MODELS.values())
    with pytest.raises(ValueError, match="unknown gpt_model"):
        build_gpt_config("GPT-Z")
    with pytest.raises(ValueError, match="unknown GPT config field"):
        build_gpt_config("debug", n_layers=3)
    with pytest.raises(ValueError, match="pos_type"):
        build_gpt_config("debug", pos_type="rope_3d")
    with pytest.raises(ValueError, match="square"):
        build_gpt_config("debug", pos_type="rope_2d", block_size=10)
    with pytest.raises(ValueError, match="cls_token_num"):
        build_gpt_config("debug", cls_token_num=120)
