"""Leaf layers of the GPT: RMSNorm, RoPE tables and rotation, SwiGLU sizes, static KV cache, causal attention."""
from __future__ import annotations

import pytest
import torch

from gigatok.layers.causal_attention import CausalSelfAttention
from gigatok.layers.kv_cache import KVCache
from gigatok.layers.norm import RMSNorm
from gigatok.layers.rope import apply_rope, precompute_rope_1d, precompute_rope_2d
from gigatok.layers.swiglu import FeedForward, find_multiple, swiglu_hidden_dim

torch.set_num_threads(2)


def test_rmsnorm_matches_formula_and_computes_in_fp32():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 8))
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    # bf16 input: statistics in fp32, cast back before the (fp32) weight, so the result promotes to fp32
    xb = (x * 1e3).bfloat16()
    ref = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16() * norm.weight
    assert torch.equal(norm(xb), ref)


def test_rope_2d_table_layout():
    table = precompute_rope_2d(grid_size=16, head_dim=64, base=10000, cls_token_num=1)
    assert table.shape == (257, 32, 2) and table.dtype == torch.float32
    assert torch.count_nonzero(table[0]) == 0  # class row: zeros, not the identity rotation
    theta = 10000.0 ** (-torch.arange(16).float() * 2 / 32)  # (16,) pair frequencies
    y, x = 1, 1
    row = table[1 + y * 16 + x]
    torch.testing.assert_close(row[:16, 0], torch.cos(y * theta))
    torch.testing.assert_close(row[16:, 1], torch.sin(x * theta))
    y, x = 3, 7  # first half follows the row, second half the column (raster order)
    row = table[1 + y * 16 + x]
    torch.testing.assert_close(row[:16, 0], torch.cos(y * theta))
    torch.testing.assert_close(row[16:, 0], torch.cos(x * theta))
    assert precompute_rope_2d(24, 64, cls_token_num=1).shape == (577, 32, 2)


def test_rope_1d_table_and_apply_interleaved_pairs():
    table = precompute_rope_1d(seq_len=10, head_dim=8, base=10000, cls_token_num=1)
    assert table.shape == (11, 4, 2) and torch.count_nonzero(table[0]) == 0
    theta = 10000.0 ** (-torch.arange(4).float() * 2 / 8)
    torch.testing.assert_close(table[1 + 3, :, 1], torch.sin(3 * theta))
    x = torch.randn(2, 11, 3, 8)
    out = apply_rope(x, table)
    assert torch.count_nonzero(out[:, 0]) == 0  # zero rows annihilate the class position
    # pair (2i, 2i+1) of position p is rotated by angle p * theta_i
    p, i = 5, 2
    ang = (p - 1) * theta[i]
    x0, x1 = x[:, p, :, 2 * i], x[:, p, :, 2 * i + 1]
    torch.testing.assert_close(out[:, p, :, 2 * i], x0 * torch.cos(ang) - x1 * torch.sin(ang))
    torch.testing.assert_close(out[:, p, :, 2 * i + 1], x1 * torch.cos(ang) + x0 * torch.sin(ang))
    assert apply_rope(x.bfloat16(), table).dtype == torch.bfloat16


def test_rope_tables_survive_a_meta_device_context():
    with torch.device("meta"):
        table = precompute_rope_2d(4, 8)
    assert table.device.type == "cpu" and table.abs().sum() > 0


@pytest.mark.parametrize("dim, hidden", [(768, 2048), (1024, 2816), (1280, 3584), (1536, 4096), (2560, 6912),
                                         (2048, 5632), (3200, 8704), (4096, 11008)])
def test_swiglu_hidden_sizes(dim, hidden):
    assert swiglu_hidden_dim(dim, 256) == hidden


def test_find_multiple_and_feed_forward():
    assert find_multiple(257, 8) == 264 and find_multiple(264, 8) == 264 and find_multiple(577, 8) == 584
    ff = FeedForward(16, 32).eval()
    x = torch.randn(2, 3, 16)
    expected = ff.w2(torch.nn.functional.silu(ff.w1(x)) * ff.w3(x))
    torch.testing.assert_close(ff(x), expected)
    assert sorted(n for n, _ in ff.named_parameters()) == ["w1.weight", "w2.weight", "w3.weight"]


def test_kv_cache_writes_positions_and_stays_out_of_state_dict():
    cache = KVCache(4, 8, 2, 3)
    k = torch.randn(2, 2, 2, 3)
    v = torch.randn(2, 2, 2, 3)
    k_all, v_all = cache.update(torch.tensor([3, 4]), k, v)
    assert k_all.shape == (2, 2, 8, 3)
    assert torch.equal(cache.k_cache[:2, :, 3:5], k) and torch.equal(cache.v_cache[:2, :, 3:5], v)
    assert torch.count_nonzero(cache.k_cache[2:]) == 0 and torch.count_nonzero(cache.k_cache[:, :, :3]) == 0
    assert cache.state_dict() == {}


@pytest.mark.parametrize("n_kv_head, use_qk_norm", [(4, False), (2, False), (4, True)])
def test_cached_attention_matches_full_causal_attention(n_kv_head, use_qk_norm):
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4, n_kv_head, use_qk_norm=use_qk_norm).eval()
    b, t = 2, 7
    x = torch.randn(b, t, 32)
    rope = precompute_rope_1d(t - 1, 8, cls_token_num=1)  # (T, 4, 2)
    full = attn(x, rope)
    attn.kv_cache = KVCache(b, find_multiple(t, 8), n_kv_head, 8)
    s_max = attn.kv_cache.max_seq_length
    outs = []
    for chunk in (torch.arange(0, 3), torch.arange(3, 4), torch.arange(4, 7)):  # prefill then steps
        mask = (torch.arange(s_max)[None, :] <= chunk[:, None])[None, None]
        outs.append(attn(x[:, chunk], rope[chunk], chunk, mask))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-6, rtol=1e-5)
    if use_qk_norm:
        assert {"q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias"} <= set(attn.state_dict())


def test_attention_parameter_layout_and_errors():
    attn = CausalSelfAttention(48, 4, 2)
    assert attn.wqkv.weight.shape == ((4 + 2 * 2) * 12, 48) and attn.wo.weight.shape == (48, 48)
    assert set(attn.state_dict()) == {"wqkv.weight", "wo.weight"}
    with pytest.raises(ValueError):
        CausalSelfAttention(50, 4)
    with pytest.raises(RuntimeError, match="KV cache"):
        attn(torch.randn(1, 1, 48), None, torch.tensor([0]), None)


def test_class_key_is_neutral_under_zero_rope_rows():
    """With the zero class row, the class key scores 0 for every query (it still contributes its value)."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(8, 1).eval()  # one head: Dh = 8
    x = torch.randn(1, 2, 8)
    rope = torch.stack([torch.zeros(4, 2), torch.tensor([[1.0, 0.0]]).expand(4, 2)])  # class row 0, identity row 1
    q, k, v = attn.wqkv(x).split(8, dim=-1)  # each (1, 2, 8)
    score_self = (q[0, 1] @ k[0, 1]) / 8 ** 0.5
    weights = torch.softmax(torch.stack([torch.tensor(0.0), score_self]), dim=0)  # class key logit is exactly 0
    expected_1 = weights[0] * v[0, 0] + weights[1] * v[0, 1]
    out = attn(x, rope)
    torch.testing.assert_close(out[0, 1], attn.wo(expected_1))
    torch.testing.assert_close(out[0, 0], attn.wo(v[0, 0]))
