"""CNN encoder (pixels -> 2D feature map) and decoder (2D feature map -> pixels) of the hybrid tokenizer.

Keys follow the official `Encoder`/`Decoder` (`conv_in`, `conv_blocks.{i}.res.{j}`, `conv_blocks.{i}.downsample`,
`conv_blocks.{i}.upsample`, `mid.{j}`, `adaptive.{i}`, `norm_out`, `conv_out`).

Shape letters: B batch; C channels; H, W height and width of an image or feature map; f CNN downsampling factor;
Cz z_channels. Here f = 2**(len(ch_mult) - 1); for the tokenizer's square images H/f = W/f = G, the latent grid side.
"""
from __future__ import annotations

import torch
from torch import nn

from gigatok.layers.conv import (
    AdaptiveGroupNorm,
    D2SUpsampler,
    Downsample,
    NearestUpsample,
    ResnetBlock,
    group_norm,
    silu,
    style_statistics,
)

# CHANNELS_LAST: conv weights and activations are kept channels-last (NHWC strides; shapes and state_dict keys
# unchanged). oneDNN on CPU and cuDNN on GPU then run the convolutions without reordering tensors on every call.
# `channels_last=False` keeps NCHW instead: for narrow CNNs on the CPU (the demo's, 32 channels), where GroupNorm
# has 1 channel per group and torch's channels-last GroupNorm kernel is ~10x slower than its NCHW one ((32, 32, 16,
# 16): 1.2-1.6 ms vs 0.1 ms), which outweighs the faster convolutions.


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, Cz, H/f, W/f).

    Args:
        ch: base channels; level i has ch * ch_mult[i] channels.
        ch_mult: per-level multipliers; every level but the last halves the resolution.
        num_res_blocks: ResnetBlocks per level.
        z_channels: Cz.
        channels_last: the layout of weights and activations (see CHANNELS_LAST).
    """

    def __init__(self, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 256, dropout: float = 0.0, in_channels: int = 3,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            block = nn.Module()
            res = nn.ModuleList()
            for _ in range(num_res_blocks):
                res.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
            block.res = res
            if level != len(ch_mult) - 1:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), ResnetBlock(block_in, block_in, dropout)])
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)  # see CHANNELS_LAST

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x.contiguous(memory_format=self.memory_format))
        for block in self.conv_blocks:
            for res in block.res:
                h = res(h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for res in self.mid:
            h = res(h)
        return self.conv_out(silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, Cz, H, W) -> (B, 3, H*f, W*f), not clamped.

    Args:
        adaptive_gn: modulate each up-level's input with AdaptiveGroupNorm conditioned on the decoder input.
        d2s_up: upsample with conv + DCR depth-to-space (else nearest + conv).
        channels_last: the layout of weights and activations (see CHANNELS_LAST).
    """

    def __init__(self, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 256, dropout: float = 0.0, out_channels: int = 3, adaptive_gn: bool = False,
                 d2s_up: bool = False, channels_last: bool = True) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), ResnetBlock(block_in, block_in, dropout)])
        self.adaptive = nn.ModuleList() if adaptive_gn else None
        self.conv_blocks = nn.ModuleList()
        for level, mult in enumerate(reversed(ch_mult)):
            if adaptive_gn:
                self.adaptive.append(AdaptiveGroupNorm(z_channels, block_in))
            block = nn.Module()
            res = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                res.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
            block.res = res
            if level != len(ch_mult) - 1:
                block.upsample = D2SUpsampler(block_in) if d2s_up else NearestUpsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)  # see CHANNELS_LAST

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv (for the adaptive GAN-loss weight)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        style = style_statistics(z.float()) if self.adaptive is not None else None
        h = self.conv_in(z.contiguous(memory_format=self.memory_format))
        for res in self.mid:
            h = res(h)
        for level, block in enumerate(self.conv_blocks):
            if self.adaptive is not None:
                std, mean = style
                h = self.adaptive[level](h, std.to(h.dtype), mean.to(h.dtype))
            for res in block.res:
                h = res(h)
            if hasattr(block, "upsample"):
                h = block.upsample(h).contiguous(memory_format=self.memory_format)  # D2S: channels-last strides
        return self.conv_out(silu(self.norm_out(h)))
