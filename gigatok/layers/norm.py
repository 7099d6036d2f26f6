"""RMSNorm as in LlamaGen: statistics in float32, result cast back to the input dtype before the scale.

Training in float32 (the CPU recipe, and the fp32 residual stream under autocast) goes through a hand-written
backward (`_RMSNormFp32`): the forward runs exactly LlamaGen's ops (bit-identical outputs), the backward needs 6
passes over (..., D) instead of the ~17 small ops autograd records for the formula (x*x, mean, rsqrt, two muls and
their derivatives), and it keeps only x and the (..., 1) inverse RMS alive instead of three (..., D) tensors. On a
2-core CPU each of those ops is a separate parallel region and a separate sweep over memory.

Shape letters: D width. Here D is the normalised (last) dim, `...` any leading dims and N their product.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaGen's formula, op for op: fp32 statistics, cast back to x's dtype BEFORE the multiply by `weight`."""
    xf = x.float()
    normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


class _RMSNormFp32(torch.autograd.Function):
    """`_rms_norm_reference` for float32 `x` and `weight`, with an analytic backward.

    With n = x * r, r = (mean(x^2) + eps)^-1/2 per row and out = n * w:
        dL/dw = sum_N r * (g * x)                       (one (1, N) @ (N, D) product)
        dL/dx = r * (g * w) - x * r^3 / D * ((g * x) @ w)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return x * rstd * weight  # the reference's ops in its order: (x * rstd) then * weight

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        d = x.shape[-1]
        gx = (grad * x).reshape(-1, d)  # (N, D)
        rows = rstd.view(1, -1)  # (1, N)
        grad_weight = (rows @ gx).view(d) if ctx.needs_input_grad[1] else None  # (D,)
        grad_x = None
        if ctx.needs_input_grad[0]:
            coef = (gx @ weight).view(rstd.shape) * rstd.pow(3).mul_(-1.0 / d)  # (..., 1)
            grad_x = (grad * weight).mul_(rstd).addcmul_(x, coef)  # (..., D)
        return grad_x, grad_weight, None


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
        if (x.dtype == torch.float32 and self.weight.dtype == torch.float32 and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad)):
            return _RMSNormFp32.apply(x, self.weight, self.eps)  # same forward, cheaper backward
        return _rms_norm_reference(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
