"""PatchGAN discriminator (pix2pix / taming `NLayerDiscriminator`), the default GAN critic of GigaTok.

State_dict keys are the official ones (`main.0` ... `main.{3*n_layers+2}`), so the `"discriminator"` entry of an
official training checkpoint loads strictly. With the released settings (ndf 64, 3 layers, kernel 4) the network
has 2,765,633 parameters and maps a 256 x 256 image to a 30 x 30 grid of logits.

Shape letters: B batch; C channels; H, W height and width of an image or feature map. H', W' are the output
grid's height and width.
"""
from __future__ import annotations

import torch
from torch import nn


class NLayerDiscriminator(nn.Module):
    """Fully convolutional critic: (B, 3, H, W) in [-1, 1] -> (B, 1, H', W') float logits, one per patch.

    Layout for n_layers = 3 (indices are the `main.{i}` keys):
        0  conv k s2 in->ndf (bias)          1  LeakyReLU(0.2)
        2  conv k s2 ndf->2ndf (no bias)      3  BatchNorm   4  LeakyReLU
        5  conv k s2 2ndf->4ndf (no bias)     6  BatchNorm   7  LeakyReLU
        8  conv k s1 4ndf->8ndf (no bias)     9  BatchNorm   10 LeakyReLU
        11 conv k s1 8ndf->1 (bias)
    All convs use padding 1. Widths are capped at 8 * ndf.

    Args:
        input_nc: image channels.
        ndf: width of the first conv (`loss.params.disc_dim`; 64 in every released config, smaller for tests).
        n_layers: number of stride-2 convs (`disc_num_layers`).
        kw: kernel size (`loss.params.kw`).
        norm: only "batch" (plain BatchNorm2d, not SyncBatchNorm, as the official code).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, kw: int = 4, norm: str = "batch") -> None:
        super().__init__()
        if norm != "batch":
            # The official non-batch branch calls nn.GroupNorm(C) without a channel count and cannot run.
            raise ValueError(f"PatchGAN norm must be 'batch' (the only working official choice), got '{norm}'")
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"PatchGAN needs n_layers >= 1 and ndf >= 1, got n_layers={n_layers}, ndf={ndf}")
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last widening conv keeps the resolution
            # No conv bias before BatchNorm: its affine shift makes one redundant.
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kw, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=1))  # one logit per patch
        self.main = nn.Sequential(*layers)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Official DCGAN-style init: conv weights N(0, 0.02) (biases keep PyTorch's default), BN N(1, 0.02) / 0."""
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, 1, H', W') logits (H' = 30 for H = 256 with the default layout)."""
        return self.main(images)
