"""RMSNorm as in LlamaGen: statistics in float32, result cast back to the input dtype before the scale.

Shape letters: D width. Here D is the normalised (last) dim and `...` any leading dims.
"""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction or bias: `x / sqrt(mean(x^2) + eps) * weight`.

    Args:
        dim: size D of the last dimension.
        eps: added to the mean square (LlamaGen: 1e-5).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise `x` (..., D) of any float dtype; returns (..., D) in `x`'s dtype promoted with `weight`'s."""
        # fp32 statistics keep bf16/fp16 activations from under/overflowing in the mean of squares; the cast back
        # happens BEFORE the multiply by `weight`, exactly as LlamaGen does, so bf16 runs round at the same point.
        xf = x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
