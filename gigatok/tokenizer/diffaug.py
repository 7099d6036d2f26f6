"""Differentiable augmentation (DiffAug, Zhao et al. 2020) applied to real and fake images before the DINO critic.

Same policy as the official `DiffAug(prob=1.0, cutout=0.2)` (itself from StyleGAN-T): each of three groups is
switched on for the whole batch with probability `prob`, then drawn per image:
- translation: integer shift of up to +-12.5% of H and W, zero fill;
- colour: brightness + U(-0.5, 0.5), saturation x U(0, 2) around the per-pixel channel mean, contrast
  x U(0.5, 1.5) around the per-image mean;
- cutout: a zeroed square of `cutout` x H by `cutout` x W at a uniform centre (clipped at the borders).
Every operation is a gather or an affine map of the input, so gradients flow to the images.

Randomness: all draws are made on the CPU (from `generator` when given, else the global CPU RNG) and then moved to
the images' device, so a seeded generator gives the same augmentation on any device.

Shape letters: B batch; C channels; H, W height and width of an image or feature map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSLATION_RATIO = 0.125


class DiffAug:
    """Callable augmentation: `daug(images, generator=None)` -> augmented float32 images, same shape.

    Args:
        prob: probability of enabling each of the three groups (translation, colour, cutout) for a batch;
            0 disables augmentation (and cutout, as the official code).
        cutout: side of the cutout square as a fraction of the image side.
    """

    def __init__(self, prob: float = 1.0, cutout: float = 0.2) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"DiffAug prob must be in [0, 1], got {prob}")
        if not 0.0 <= cutout < 1.0:
            raise ValueError(f"DiffAug cutout must be in [0, 1), got {cutout}")
        self.prob = prob
        self.cutout = cutout

    def __repr__(self) -> str:
        return f"DiffAug(prob={self.prob}, cutout={self.cutout})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment (B, C, H, W) images (any float dtype; returned as float32, as the official code)."""
        x = images.float()
        if self.prob < 1e-6:
            return x
        b, _, h, w = x.shape
        device = x.device
        # One on/off switch per group for the whole batch, then 7 uniforms per image (official draw layout).
        use_trans, use_color, use_cut = (torch.rand(3, generator=generator) <= self.prob).tolist()
        rand01 = torch.rand(7, b, 1, 1, generator=generator).to(device)  # (7, B, 1, 1)

        if use_trans:
            dh, dw = round(h * TRANSLATION_RATIO), round(w * TRANSLATION_RATIO)
            shift_h = (rand01[0] * (2 * dh + 1)).floor().long() - dh  # (B, 1, 1), integer in [-dh, dh]
            shift_w = (rand01[1] * (2 * dw + 1)).floor().long() - dw
            grid_b, grid_h, grid_w = _grids(b, h, w, device)
            # Index into a 1-pixel zero-padded copy: source positions outside the image read the zero border.
            grid_h = (grid_h + shift_h + 1).clamp(0, h + 1)
            grid_w = (grid_w + shift_w + 1).clamp(0, w + 1)
            padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
            x = padded[grid_b, grid_h, grid_w].permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)

        if use_color:
            x = x + (rand01[2].unsqueeze(-1) - 0.5)  # brightness; (B, 1, 1) -> (B, 1, 1, 1)
            mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
            x = (x - mean) * (rand01[3].unsqueeze(-1) * 2) + mean  # saturation
            mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
            x = (x - mean) * (rand01[4].unsqueeze(-1) + 0.5) + mean  # contrast

        if use_cut:
            ch, cw = round(h * self.cutout), round(w * self.cutout)
            # Centre drawn in [0, H] for even sizes (official: H + (1 - ch % 2) choices).
            off_h = (rand01[5] * (h + (1 - ch % 2))).floor().long()  # (B, 1, 1)
            off_w = (rand01[6] * (w + (1 - cw % 2))).floor().long()
            grid_b, grid_h, grid_w = _grids(b, ch, cw, device)
            grid_h = (grid_h + off_h - ch // 2).clamp(0, h - 1)
            grid_w = (grid_w + off_w - cw // 2).clamp(0, w - 1)
            mask = torch.ones(b, h, w, dtype=x.dtype, device=device)
            mask[grid_b, grid_h, grid_w] = 0
            x = x * mask.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        return x


def _grids(b: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three int64 index grids of shape (`b`, `h`, `w`), the arguments, over batch, rows and columns."""
    return torch.meshgrid(
        torch.arange(b, device=device), torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
