"""Official ablation modes of the 1D tokenizer: the causal Q-Former encoder (`model.causal_settings.causal_type`),
encoding to a prefix of the tokens (`--mul-rec-levels`, dynamic-length training) and `random_mix_reg`."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from gigatok.builders import build_tokenizer
from gigatok.config import CausalSettings, ConfigError, load_config
from gigatok.engine.vq_train import dynamic_num_tokens, freeze_but_pixel_decoder
from gigatok.tokenizer.qformer import causal_query_mask
from gigatok.tokenizer.quantizer import VectorQuantizer

REPO = Path(__file__).resolve().parents[2]
DEBUG_1D = REPO / "configs" / "vq" / "VQ_debug.yaml"
DEBUG_2D = REPO / "configs" / "vq" / "VQ_debug_2d.yaml"


def tokenizer(causal_type: str | None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    overrides = [] if causal_type is None else [f"model.causal_settings.causal_type={causal_type}"]
    return build_tokenizer(load_config(DEBUG_1D, overrides)).eval()


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _level(i: int) -> int:  # tokens 0-1 are level 0, then [2, 4) level 1, [4, 8) level 2, ...
    return 0 if i < 2 else int(math.log2(i))


def test_causal_masks():
    per_token = causal_query_mask(6, "per-token")
    assert [[bool(per_token[i, j]) for j in range(6)] for i in range(6)] == [[j > i for j in range(6)] for i in range(6)]
    per_level = causal_query_mask(16, "per-level")
    expected = [[_level(j) > _level(i) for j in range(16)] for i in range(16)]
    assert [[bool(per_level[i, j]) for j in range(16)] for i in range(16)] == expected
    with pytest.raises(ValueError, match="causal_type"):
        causal_query_mask(4, "per-row")


@pytest.mark.parametrize("causal_type, prefix", [("per-token", 5), ("per-level", 8)])
def test_a_causal_encoder_encodes_every_prefix_as_the_start_of_the_full_sequence(causal_type, prefix):
    model, x = tokenizer(causal_type), images()
    with torch.no_grad():
        full = model.encode_to_codes(x)
        assert full.shape == (2, 64)
        assert torch.equal(model.encode_to_codes(x, num_tokens=prefix), full[:, :prefix])
        h_full = model.s2to1encoder(model.encoder(x), causal_type=causal_type)
        h_prefix = model.s2to1encoder(model.encoder(x), num_tokens=prefix, causal_type=causal_type)
        torch.testing.assert_close(h_prefix, h_full[..., :prefix], rtol=1e-5, atol=1e-5)
        pixels = model.decode_code(full[:, :prefix])  # a prefix decodes to a whole image
    assert pixels.shape == (2, 3, 32, 32) and torch.isfinite(pixels).all()


def test_without_causal_mask_a_prefix_is_a_different_encoding():
    model, x = tokenizer(None), images()
    with torch.no_grad():
        s = model.encoder(x)
        full = model.s2to1encoder(s)
        prefix = model.s2to1encoder(s, num_tokens=8)
    assert prefix.shape == (2, 64, 1, 8)
    assert not torch.allclose(prefix, full[..., :8], atol=1e-4)  # the 8 queries no longer see the other 56


def test_a_causal_mask_changes_the_full_encoding_and_the_mode_is_refused_where_it_cannot_apply():
    x = images()
    with torch.no_grad():
        free, causal = tokenizer(None).s2to1encoder, tokenizer("per-token").s2to1encoder
        s = tokenizer(None).encoder(x)
        assert not torch.allclose(free(s), causal(s, causal_type="per-token"), atol=1e-4)
    with pytest.raises(ConfigError, match="needs the 1D tokenizer"):
        build_tokenizer(load_config(DEBUG_2D, ["model.causal_settings.causal_type=per-level"]))
    model_2d = build_tokenizer(load_config(DEBUG_2D)).eval()
    with pytest.raises(ValueError, match="needs the 1D tokenizer"):
        model_2d.encode_to_codes(x, num_tokens=4)
    with pytest.raises(ValueError, match="num_tokens 65"):
        tokenizer(None).encode_to_codes(x, num_tokens=65)


def test_dynamic_token_counts_follow_the_official_choices_and_repeat_after_a_resume():
    per_level = CausalSettings(causal_type="per-level", dynamic_length_train=True, min_level=2)
    drawn = {dynamic_num_tokens(per_level, 64, step, epoch=0) for step in range(300)}
    assert drawn == {4, 8, 16, 32, 64}  # 2**k for k in min_level..log2(64)
    assert [dynamic_num_tokens(per_level, 64, s, 3) for s in range(20)] == \
        [dynamic_num_tokens(per_level, 64, s, 3) for s in range(20)]  # a function of the step: resumes draw the same
    # Official: random.seed(train_steps) then random.choices(choices, weights) on the global generator.
    random.seed(17)
    assert dynamic_num_tokens(per_level, 64, 17, 0) == 2 ** random.choices([2, 3, 4, 5, 6], weights=[1] * 5)[0]
    ranged = CausalSettings(causal_type="per-token", dynamic_length_train=True, dynamic_level_range=[8, 32])
    assert {dynamic_num_tokens(ranged, 64, s, 0) for s in range(200)} == {8, 16, 24, 32}
    listed = CausalSettings(causal_type="per-token", dynamic_length_train=True, dynamic_level_range=[3, 7, 50])
    assert {dynamic_num_tokens(listed, 64, s, 0) for s in range(200)} == {3, 7, 50}
    # power_sample_T: weights (k / max k) ** (epoch / T) favour the longest prefixes as the epochs go by.
    annealed = CausalSettings(causal_type="per-level", dynamic_length_train=True, min_level=0, power_sample_T=1.0)
    late = [dynamic_num_tokens(annealed, 64, s, epoch=40) for s in range(200)]
    assert late.count(64) > 150
    assert dynamic_num_tokens(CausalSettings(), 64, 5, 0) is None
    assert dynamic_num_tokens(CausalSettings(causal_type="per-level"), 64, 5, 0) is None  # not dynamic


def test_random_mix_keeps_the_continuous_value_of_a_fraction_of_the_tokens():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(64, 8, rot=True).train()
    z = torch.randn(4, 8, 1, 256)
    z_n = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    plain, _, codes = quantizer(z)
    everything, _, _ = quantizer(z, replace_ratio=1.0)
    torch.testing.assert_close(everything.permute(0, 2, 3, 1).reshape(-1, 8), z_n)
    half, _, codes_half = quantizer(z, replace_ratio=0.5)
    kept = torch.isclose(half, everything, atol=1e-6).all(dim=1).flatten()  # (B, Dc, 1, L) -> B*L tokens
    assert 0.4 < kept.float().mean() < 0.6 and torch.equal(codes, codes_half)  # the codes never change
    torch.testing.assert_close(half.permute(0, 2, 3, 1).reshape(-1, 8)[~kept],
                               plain.permute(0, 2, 3, 1).reshape(-1, 8)[~kept])
    quantizer.eval()
    torch.testing.assert_close(quantizer(z, replace_ratio=1.0)[0], quantizer(z)[0])  # training only


def test_freezing_leaves_only_the_pixel_decoder_trainable():
    model = tokenizer(None)
    freeze_but_pixel_decoder(model)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"decoder"}
