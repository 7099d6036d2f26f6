"""Rotary position tables (1D and LlamaGen's 2D) and their application to attention heads.

Tables are stored as (rows, Dh/2, 2) float32 with [..., 0] = cos and [..., 1] = sin. Every table starts with
`cls_token_num` rows of ZEROS for the condition (class) positions. Zeros are not the identity rotation: they
multiply the class token's q and k to zero, so its key gives logit 0 to every query while its value still
contributes. LlamaGen and GigaTok weights were trained with this, so a faithful model must keep it.

Pairs are adjacent elements (2i, 2i+1) of a head vector (Llama / GPT-J "interleaved" convention), not the
NeoX half-split.

Shape letters: B batch; G latent grid side (G*G 2D tokens); Dh head dim; nh query heads; nkv key/value heads;
T sequence positions (the GPT: class token + codes; attention: query positions).
"""
from __future__ import annotations

import torch


def _inverse_frequencies(num: int, span: int, base: float) -> torch.Tensor:
    """theta_j = base^(-2j/span) for j < num, float32 on CPU (explicit device: safe under a meta-device build)."""
    exponents = torch.arange(0, span, 2, device="cpu")[:num].float() / span
    return 1.0 / (base ** exponents)


def _with_class_rows(table: torch.Tensor, cls_token_num: int) -> torch.Tensor:
    zeros = torch.zeros(cls_token_num, *table.shape[1:], dtype=table.dtype, device=table.device)
    return torch.cat([zeros, table])  # (cls + rows, Dh/2, 2)


def precompute_rope_1d(seq_len: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1) -> torch.Tensor:
    """1D RoPE table: image position p (0-based) rotates pair j by p * theta_j, theta_j = base^(-2j/Dh).

    Note: GigaTok-derived gpt_1d code calls the official helper as `precompute_freqs_cis(block_size, head_dim,
    cls_token_num)`, which binds cls_token_num to `base` (=1) and leaves the default 120 zero rows; a model
    trained that way with --rope (none was released) would need precompute_rope_1d(block_size, head_dim,
    base=1, cls_token_num=120).

    Returns:
        (cls_token_num + seq_len, Dh/2, 2) float32 on CPU; the first `cls_token_num` rows are zeros.
    """
    if head_dim % 2:
        raise ValueError(f"1D RoPE needs an even head dim, got {head_dim}")
    freqs = _inverse_frequencies(head_dim // 2, head_dim, base)  # (Dh/2,)
    angles = torch.outer(torch.arange(seq_len, device="cpu"), freqs)  # (seq_len, Dh/2)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (seq_len, Dh/2, 2)
    return _with_class_rows(table, cls_token_num)


def precompute_rope_2d(grid_size: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1) -> torch.Tensor:
    """LlamaGen 2D RoPE table for a G x G token grid in raster order.

    The first Dh/4 pairs rotate with the row index y, the last Dh/4 with the column index x, both with
    theta_j = base^(-2j/(Dh/2)), j < Dh/4. Image token n sits at (y, x) = divmod(n, G).

    Returns:
        (cls_token_num + G*G, Dh/2, 2) float32 on CPU; the first `cls_token_num` rows are zeros.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = _inverse_frequencies(half // 2, half, base)  # (Dh/4,)
    angles = torch.outer(torch.arange(grid_size, device="cpu"), freqs)  # (G, Dh/4)
    grid = torch.cat([
        angles[:, None, :].expand(-1, grid_size, -1),  # row angle, constant along x: (G, G, Dh/4)
        angles[None, :, :].expand(grid_size, -1, -1),  # column angle, constant along y: (G, G, Dh/4)
    ], dim=-1)  # (G, G, Dh/2)
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)  # (G*G, Dh/2, 2), raster order
    return _with_class_rows(table, cls_token_num)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of `x` (B, T, nh, Dh) by `table` (T, Dh/2, 2); computed in float32. Keys,
    (B, T, nkv, Dh), work the same way.

    Returns:
        (B, T, nh, Dh) in `x`'s dtype.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, nh, Dh/2, 2)
    rot = table.float().view(1, pairs.shape[1], 1, pairs.shape[3], 2)  # (1, T, 1, Dh/2, 2)
    cos, sin = rot[..., 0], rot[..., 1]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)  # (B, T, nh, Dh/2, 2)
    return out.flatten(3).type_as(x)  # (B, T, nh, Dh)
