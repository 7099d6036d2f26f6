"""The 1D decoder's 2D query inits (official `last_level_2d_query_init` / `multi_level_2d_query_init`, parity with
the official functions) and `token_init: distinct` (ours), which the 1D CPU demo needs to learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT

from gigatok.builders import build_tokenizer
from gigatok.config import load_config
from gigatok.tokenizer.qformer import last_level_2d_queries, multi_level_2d_queries

VECTORS = ROOT / "tests" / "assets" / "query_init_vectors.npz"
DEBUG_1D = ROOT / "configs" / "vq" / "VQ_debug.yaml"
DEMO_1D = ROOT / "configs" / "vq" / "VQ_demo.yaml"


def _cases() -> list[str]:
    with np.load(VECTORS) as data:
        return sorted({key.rsplit("/", 1)[0] for key in data.files})


@pytest.mark.parametrize("case", _cases())
def test_matches_the_official_functions(case: str) -> None:
    kind, shape = case.split("/")
    grid = int(shape.split("_G")[1])
    fn = {"last_level": last_level_2d_queries, "multi_level": multi_level_2d_queries}[kind]
    with np.load(VECTORS) as data:
        x, expected = torch.from_numpy(data[f"{case}/x"]), data[f"{case}/out"]
    np.testing.assert_allclose(fn(x, grid).numpy(), expected, rtol=0, atol=1e-6)


def test_last_level_queries_start_from_the_token_that_pooled_their_region() -> None:
    x = torch.arange(16.0).view(1, 16, 1)  # 16 tokens: the last 8 form a 2 x 4 grid over the 4 x 4 cells
    queries = last_level_2d_queries(x, 4).view(4, 4)
    assert queries[0].tolist() == [8, 9, 10, 11] and queries[1].tolist() == [8, 9, 10, 11]
    assert queries[2].tolist() == [12, 13, 14, 15] and queries[3].tolist() == [12, 13, 14, 15]


@pytest.mark.parametrize("switch", ["last_level_2d_query_init", "multi_level_2d_query_init"])
def test_decoder_query_inits_train_with_the_official_keys(switch: str) -> None:
    base = build_tokenizer(load_config(DEBUG_1D))
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(DEBUG_1D, [f"model.init_args.{switch}=true"]))
    assert tokenizer.state_dict().keys() == base.state_dict().keys()  # an init rule, no new weights
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    out = tokenizer(images, rec_loss=False)
    out.recon.square().mean().backward()
    grad = tokenizer.s2to1encoder.global_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    base.load_state_dict(tokenizer.state_dict())
    with torch.no_grad():  # same weights, another query init: another decoding
        codes = tokenizer.encode_to_codes(images)
        assert not torch.allclose(tokenizer.decode_code(codes), base.decode_code(codes))


def test_two_decoder_query_inits_at_once_are_refused() -> None:
    config = load_config(DEBUG_1D, ["model.init_args.last_level_2d_query_init=true",
                                    "model.init_args.learnable_2d_query_init=true"])
    with pytest.raises(ValueError, match="at most one"):
        build_tokenizer(config)


def test_distinct_token_init_sets_only_the_two_inits() -> None:
    torch.manual_seed(0)
    official = build_tokenizer(load_config(DEBUG_1D))
    torch.manual_seed(0)
    distinct = build_tokenizer(load_config(DEBUG_1D, ["model.init_args.token_init=distinct"]))
    assert official.state_dict().keys() == distinct.state_dict().keys()
    with torch.no_grad():
        assert float(official.quant_conv.bias.abs().sum()) > 0 and float(distinct.quant_conv.bias.abs().sum()) == 0
        width = distinct.s2to1encoder.width
        assert abs(float(distinct.s2to1encoder.global_proj.weight.std()) * width**0.5 - 1) < 0.1
        assert float(official.s2to1encoder.global_proj.weight.std()) < 0.021
        for name, value in official.state_dict().items():  # everything else: the same draws
            if name not in ("quant_conv.bias", "s2to1encoder.global_proj.weight"):
                assert torch.equal(value, distinct.state_dict()[name]), name


def test_distinct_token_init_gives_distinct_codes_at_initialisation() -> None:
    """The failure it fixes: at width 64 the official init maps every token of every image to a handful of codes."""
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    used = {}
    for init in ("official", "distinct"):
        torch.manual_seed(0)
        tokenizer = build_tokenizer(load_config(DEMO_1D, [f"model.init_args.token_init={init}"])).eval()
        with torch.no_grad():
            used[init] = tokenizer.encode_to_codes(images).unique().numel()
    assert used["official"] < 30 and used["distinct"] > 3 * used["official"], used
