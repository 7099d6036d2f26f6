"""Every official config builds (on the meta device) with exactly the official state_dict keys, shapes and
parameter counts, so released checkpoints load strictly; the tiny configs build for real and stay tiny."""
from __future__ import annotations

import pytest
from conftest import ROOT, read_key_list

from gigatok.builders import build_tokenizer
from gigatok.config import TRANSFORMER_SIZES, load_config

OFFICIAL = ["VQ_SS256", "VQ_SB256", "VQ_BL256", "VQ_BL256_dino_disc", "VQ_BL256_train_new", "VQ_XLXXL256",
            "VQ_SS256_2d", "VQ_SB256_2d", "VQ_BL256_2d"]


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_keys_shapes_and_counts(name: str) -> None:
    total, ref_shapes = read_key_list(f"tok_{name}")
    tokenizer = build_tokenizer(load_config(ROOT / "configs" / "vq" / f"{name}.yaml"), device="meta")
    shapes = {k: tuple(v.shape) for k, v in tokenizer.state_dict().items()}
    assert sorted(set(shapes) - set(ref_shapes)) == [], "keys the official model does not have"
    assert sorted(set(ref_shapes) - set(shapes)) == [], "official keys we lack"
    wrong = {k: (shapes[k], ref_shapes[k]) for k in shapes if shapes[k] != ref_shapes[k]}
    assert wrong == {}
    assert sum(p.numel() for p in tokenizer.parameters()) == total
    buffers = dict(tokenizer.named_buffers())
    assert set(buffers) == {"quantize.codebook_used"}
    assert not buffers["quantize.codebook_used"].requires_grad


@pytest.mark.parametrize("name", ["VQ_debug", "VQ_debug_2d"])
def test_tiny_configs_are_tiny(name: str) -> None:
    tokenizer = build_tokenizer(load_config(ROOT / "configs" / "vq" / f"{name}.yaml"))
    n_params = sum(p.numel() for p in tokenizer.parameters())
    assert 1e5 < n_params < 1e7, n_params
    assert tokenizer.image_size <= 64


def test_every_size_in_the_registry_builds() -> None:
    for size in TRANSFORMER_SIZES:
        config = load_config(ROOT / "configs" / "vq" / "VQ_SS256.yaml",
                             [f"model.init_args.encoder_size={size}", f"model.init_args.decoder_size={size}",
                              "model.init_args.distill_depth=1"])
        tokenizer = build_tokenizer(config, device="meta")
        width = TRANSFORMER_SIZES[size][0]
        assert tokenizer.s2to1encoder.positional_embedding.shape == (256, 1, width)
        assert len(tokenizer.s1to2decoder.transformer) == TRANSFORMER_SIZES[size][1]


def test_distill_width_follows_the_teacher() -> None:
    config = load_config(ROOT / "configs" / "vq" / "VQ_SS256.yaml", ["trainer.distill_model=dinov2-vit-l"])
    tokenizer = build_tokenizer(config, device="meta")
    assert tokenizer.s1to2decoder.distill_mlp[4].out_features == 1024
    with pytest.raises(ValueError, match="distill_model"):
        build_tokenizer(load_config(ROOT / "configs" / "vq" / "VQ_SS256.yaml", ["trainer.distill_model=nope"]),
                        device="meta")


def test_unsupported_official_option_is_a_clear_error() -> None:
    config = load_config(ROOT / "configs" / "vq" / "VQ_SS256.yaml", ["model.init_args.use_rope=true"])
    with pytest.raises(ValueError, match="use_rope"):
        build_tokenizer(config, device="meta")
