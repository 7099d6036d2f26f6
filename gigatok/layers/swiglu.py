"""SwiGLU feed-forward block of Llama / LlamaGen: `w2(silu(w1 x) * w3 x)`, no biases.

Shape letters: B batch; D width; F feed-forward hidden width; T sequence positions (the GPT: class token + codes;
attention: query positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def find_multiple(n: int, k: int) -> int:
    """Round `n` up to the next multiple of `k` (`n` itself if already a multiple)."""
    return n if n % k == 0 else n + k - n % k


def swiglu_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """LlamaGen's hidden width: int(2 * 4D / 3), optionally scaled, rounded up to `multiple_of`.

    GPT-B (768) -> 2048, GPT-L (1024) -> 2816, GPT-3B (3200) -> 8704.
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return find_multiple(hidden, multiple_of)


class FeedForward(nn.Module):
    """SwiGLU MLP with the official parameter names `w1` (gate), `w3` (up) and `w2` (down).

    Args:
        dim: input/output width D.
        hidden_dim: F, see `swiglu_hidden_dim`.
        dropout_p: dropout on the output (LlamaGen's `ffn_dropout`), training only.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout_p: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))
