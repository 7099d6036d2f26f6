"""Attention and transformer layers of the tokenizer's Q-Formers, on `scaled_dot_product_attention`.

The parameter names are those of `nn.MultiheadAttention` (`in_proj_weight`, `in_proj_bias`, `out_proj.*`) and of
the official DETR-style layers (`self_attn`, `multihead_attn`, `linear1/2`, `norm1/2/3`), so official checkpoints
load strictly. Unlike `nn.MultiheadAttention` called with its defaults, we never materialise the head-averaged
attention weights, which lets SDPA use its fused kernels.

Shape letters: B batch; D width; Dh head dim; nh query heads; T sequence positions (the GPT: class token + codes;
attention: query positions); Tk key/value positions. Here Dh = D / nh; in the Q-Formers T and Tk are L latent tokens or
G*G 2D tokens, depending on the direction. All tensors here are batch-first (B, T, D); the official code is
sequence-first, which changes no value.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class MultiheadAttention(nn.Module):
    """Multi-head attention with packed input projection, parameter-compatible with `nn.MultiheadAttention`.

    Args:
        dim: model width D.
        num_heads: nh; D must be divisible by nh.
        dropout: attention-probability dropout, active in training only.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # PyTorch's MHA init, which the official code keeps
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b t (nh dh) -> b nh t dh", nh=self.num_heads)  # t: T or Tk

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, same_qk: bool = False) -> torch.Tensor:
        """Attend `query` (B, T, D) over `key`/`value` (B, Tk, D); returns (B, T, D).

        Args:
            attn_mask: optional boolean (T, Tk) mask, True = masked out (the official convention).
            same_qk: `query is key` (self-attention with q = k): one matmul produces both projections.
        """
        d = self.dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if same_qk:
            q, k = F.linear(query, w[: 2 * d], b[: 2 * d]).chunk(2, dim=-1)  # (B, T, 2D) -> 2 x (B, T, D)
        else:
            q = F.linear(query, w[:d], b[:d])
            k = F.linear(key, w[d: 2 * d], b[d: 2 * d])
        v = F.linear(value, w[2 * d:], b[2 * d:])
        mask = None if attn_mask is None else ~attn_mask  # SDPA: True = attend
        out = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, Dh)
        out = rearrange(out, "b nh t dh -> b t (nh dh)")  # heads concatenated, as nn.MultiheadAttention
        return self.out_proj(out)


class QKNormAttention(nn.Module):
    """The official `AttentionCustom` used when `use_qk_norm` is on: separate q/k/v projections, a per-head
    LayerNorm on q and k, output projection `wo`. Parameter names follow the official module."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads = dim, num_heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.wo = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // num_heads)
        self.k_norm = nn.LayerNorm(dim // num_heads)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, same_qk: bool = False) -> torch.Tensor:
        heads = "b t (nh dh) -> b t nh dh"  # per-head LayerNorm over Dh before the head axis moves
        q = self.q_norm(rearrange(self.q_proj(query), heads, nh=self.num_heads))  # (B, T, nh, Dh)
        k = self.k_norm(rearrange(self.k_proj(key), heads, nh=self.num_heads))  # (B, Tk, nh, Dh)
        v = rearrange(self.v_proj(value), heads, nh=self.num_heads)  # (B, Tk, nh, Dh)
        mask = None if attn_mask is None else ~attn_mask
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        out = rearrange(out, "b nh t dh -> b t (nh dh)")
        return self.resid_dropout(self.wo(out))


def _attention(dim: int, num_heads: int, dropout: float, use_qk_norm: bool) -> nn.Module:
    return QKNormAttention(dim, num_heads, dropout) if use_qk_norm else MultiheadAttention(dim, num_heads, dropout)


class QFormerLayer(nn.Module):
    """DETR decoder layer, pre-norm (official `TransformerDecoderLayer` with `normalize_before=True`).

    tgt += SelfAttn(q = k = norm1(tgt) + query_pos, v = norm1(tgt))
    tgt += CrossAttn(q = norm2(tgt) + query_pos, k = memory + pos, v = memory)
    tgt += FFN(norm3(tgt))

    The memory is neither normalised nor updated here. The FFN (`linear1`, `linear2`, exact GELU) sits on the
    layer itself to keep the official key names.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 use_qk_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = _attention(dim, num_heads, dropout, use_qk_norm)
        self.multihead_attn = _attention(dim, num_heads, dropout, use_qk_norm)
        self.linear1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None,
                query_pos: torch.Tensor | None, memory_with_pos: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tgt (B, T, D) queries, memory (B, Tk, D); pos (1|B, Tk, D) and query_pos (1|B, T, D) are added to keys and
        queries only. `memory_with_pos` (= memory + pos) may be passed precomputed when shared across layers."""
        t2 = self.norm1(tgt)
        qk = t2 if query_pos is None else t2 + query_pos
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, t2, attn_mask=tgt_mask, same_qk=True))
        t2 = self.norm2(tgt)
        if memory_with_pos is None:
            memory_with_pos = memory if pos is None else memory + pos
        q = t2 if query_pos is None else t2 + query_pos
        tgt = tgt + self.dropout2(self.multihead_attn(q, memory_with_pos, memory))
        t2 = self.norm3(tgt)
        return tgt + self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(t2)))))


class ViTLayer(nn.Module):
    """Plain pre-norm transformer block (official `TransformerLayer`): self-attention then MLP, no positions."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 use_qk_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = _attention(dim, num_heads, dropout, use_qk_norm)
        self.linear1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """tgt (B, T, D) -> (B, T, D)."""
        t2 = self.norm1(tgt)
        tgt = tgt + self.dropout1(self.self_attn(t2, t2, t2, same_qk=True))
        t2 = self.norm2(tgt)
        return tgt + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(t2)))))
