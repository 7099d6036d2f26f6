"""Causal multi-head self-attention of the LlamaGen/GigaTok GPT: fused `wqkv`, SDPA, RoPE, optional KV cache.

Two call modes:
- training / teacher forcing: no `input_pos`; SDPA with `is_causal=True` over the given sequence.
- cached decoding: `input_pos` (T,) gives the absolute positions of the T new tokens; their keys/values are
  written into the attached `KVCache` and the queries attend over the whole cache under a boolean mask.

Shape letters: B batch; D width; Dh head dim; nh query heads; nkv key/value heads; T sequence positions (the GPT:
class token + codes; attention: query positions); Tk key/value positions; Tmax cache length. Here T counts the
positions of this call, Tk is T without a cache and Tmax (or `kv_len`) with one, Dh = D / nh, and B is the R decoding
rows when decoding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache
from .rope import apply_rope


class CausalSelfAttention(nn.Module):
    """Self-attention with the official parameter names `wqkv` ([q | k | v] rows, no bias) and `wo`.

    Args:
        dim: width D.
        n_head: query heads nh (D must be divisible by nh).
        n_kv_head: key/value heads nkv (None: = nh; grouped-query attention when smaller).
        attn_dropout_p: dropout on attention probabilities, training only.
        resid_dropout_p: dropout after `wo` (LlamaGen's `resid_dropout`), training only.
        use_qk_norm: LayerNorm over Dh (affine, eps 1e-5: GigaTok's `--qk-norm` uses `nn.LayerNorm(head_dim)`,
            keys `q_norm.weight/bias`, `k_norm.weight/bias`) on queries and keys before RoPE; off in every
            released model.
    """

    def __init__(self, dim: int, n_head: int, n_kv_head: int | None = None, attn_dropout_p: float = 0.0,
                 resid_dropout_p: float = 0.0, use_qk_norm: bool = False) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if dim % n_head or n_head % n_kv_head:
            raise ValueError(f"need dim % n_head == 0 and n_head % n_kv_head == 0, got {dim}, {n_head}, {n_kv_head}")
        self.dim, self.n_head, self.n_kv_head = dim, n_head, n_kv_head
        self.head_dim = dim // n_head
        self.wqkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)
        self.q_norm = nn.LayerNorm(self.head_dim) if use_qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim) if use_qk_norm else None
        # Attached by the GPT's `setup_caches` for decoding, detached again by `remove_caches`.
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, input_pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, kv_len: int | None = None) -> torch.Tensor:
        """Attend causally.

        Args:
            x: (B, T, D) normalised hidden states.
            rope: (T, Dh/2, 2) cos/sin rows for these positions, or None (no rotary embedding).
            input_pos: (T,) int64 absolute positions; given = cached decoding (a cache must be attached).
            mask: (1 or B, 1, T, Tmax or kv_len), boolean (True = may attend) or additive (0 / -inf); with
                `input_pos`, required unless `kv_len`.
            kv_len: with `input_pos` and no mask: attend over cache slots [0, kv_len) only, causally when T > 1
                (valid for one new token, or a prefill of slots 0..T-1).

        Returns:
            (B, T, D), same dtype as `x`.
        """
        b, s, _ = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv_dim, kv_dim], dim=-1)
        q = q.view(b, s, self.n_head, self.head_dim)  # (B, T, D) -> (B, T, nh, Dh)
        k = k.view(b, s, self.n_kv_head, self.head_dim)  # (B, T, nkv, Dh)
        v = v.view(b, s, self.n_kv_head, self.head_dim)  # (B, T, nkv, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh or nkv, T, Dh)

        if input_pos is not None:
            if self.kv_cache is None or (mask is None and kv_len is None):
                raise RuntimeError("cached attention needs an attached KV cache and a mask or kv_len (call "
                                   "setup_caches)")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, nkv, Tmax, Dh)
            if kv_len is not None:
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]  # (B, nkv, kv_len, Dh): the filled prefix
        if self.n_kv_head != self.n_head:
            # grouped-query attention: every key/value head serves n_head // n_kv_head consecutive query heads
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, Tk, Dh)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # an additive mask follows the queries (autocast)
        out = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=mask is None and s > 1,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
        )  # (B, nh, T, Dh)
        out = out.transpose(1, 2).contiguous().view(b, s, self.dim)  # (B, nh, T, Dh) -> (B, T, D)
        return self.resid_dropout(self.wo(out))
