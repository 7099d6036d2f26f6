"""Convolutional building blocks of the tokenizer's CNN encoder and decoder (taming/MAGVIT-v2 style).

Module and parameter names follow the official GigaTok blocks (`norm1`, `conv1`, `nin_shortcut`, `downsample.conv`,
`upsample.conv1`, `gamma`, `beta`) so official checkpoints load strictly.

Shape letters: B batch; C channels; H, W height and width of an image or feature map; Cz z_channels. Here Cz is
the channel count of the style map (the decoder input); C_in, C_out and C' are channel counts too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU, in place when no graph is being recorded (x must then be a temporary): saves a full-size allocation
    and a memory pass per call, which matters on the CPU at 256 px."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32 groups, eps 1e-6), the official `Normalize`; `channels` must be a multiple of 32."""
    if channels % 32:
        raise ValueError(f"GroupNorm with 32 groups needs a channel count divisible by 32, got {channels}")
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> dropout -> conv3x3, plus a (1x1 when C changes) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(self.dropout(silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(shortcut)  # h is a fresh conv output that no backward needs: safe in place


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 conv3x3: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """DCR depth-to-space: input channel (i * block + j) * C' + c goes to output channel c at sub-pixel (i, j).

    Here C is the input's channel count and C' = C / block**2 the output's. This ordering differs from
    `F.pixel_shuffle` (CRD, channel c * block**2 + i * block + j); the official decoder's `upsample.conv1` weights
    are laid out for DCR. The rearrangement runs on the channels-last view (B, H, W, block, block, C') ->
    (B, H, block, W, block, C') (axes y, x, i, j -> y, i, x, j), so a channels-last input yields a channels-last
    output with one copy of contiguous C'-runs, instead of a strided NCHW copy the next convolution would have to undo.
    """
    b, c, h, w = x.shape
    c_out = c // block**2
    x = x.permute(0, 2, 3, 1).reshape(b, h, w, block, block, c_out)  # (B, C, H, W) -> (B, H, W, block, block, C')
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * block, w * block, c_out)  # -> (B, H*block, W*block, C')
    return x.permute(0, 3, 1, 2)  # (B, C', H*block, W*block) with channels-last strides


class D2SUpsampler(nn.Module):
    """conv3x3 C -> 4C, then DCR depth-to-space: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class NearestUpsample(nn.Module):
    """Nearest 2x upsampling followed by conv3x3 (official `Upsample(with_conv=True)`, used when d2s_up is off)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class AdaptiveGroupNorm(nn.Module):
    """MAGVIT-v2 adaptive GroupNorm: GN(x) * gamma(std(style)) + beta(mean(style)).

    The style statistics are per channel over the spatial positions of the decoder input; the variance is the
    unbiased `Tensor.var` (the official code does this despite a comment saying otherwise), plus eps, then sqrt.
    """

    def __init__(self, style_channels: int, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(num_groups=32, num_channels=channels, eps=eps, affine=False)
        self.gamma = nn.Linear(style_channels, channels)
        self.beta = nn.Linear(style_channels, channels)
        self.eps = eps

    def forward(self, x: torch.Tensor, style_std: torch.Tensor, style_mean: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W); style_std and style_mean (B, Cz) from `style_statistics`. Returns (B, C, H, W)."""
        scale = self.gamma(style_std)[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        bias = self.beta(style_mean)[:, :, None, None]
        return torch.addcmul(bias, self.gn(x), scale)


def style_statistics(style: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel spatial std (unbiased var + eps, sqrt) and mean of (B, Cz, H, W); each (B, Cz)."""
    flat = style.flatten(2)  # (B, Cz, H, W) -> (B, Cz, H*W)
    return (flat.var(dim=-1) + eps).sqrt(), flat.mean(dim=-1)
