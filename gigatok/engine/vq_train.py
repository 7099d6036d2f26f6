"""The tokenizer's training step: the generator update, then the discriminator's once it is active (official
`vq_train.py` loop body), with gradient accumulation, mixed precision, non-finite-loss guards and an EMA.

Shape letters: B batch; C channels; S image side (square images, H = W = S). Here C = 3 and S = image_size.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.data.train_images import TrainImageDataset
from gigatok.data.transforms import to_uint8
from gigatok.infra.codebook_stats import CodebookUsageTracker
from gigatok.infra.ema import EMA
from gigatok.infra.io import save_png_atomic
from gigatok.infra.logging import NonFiniteGuard
from gigatok.infra.parallel import grad_sync, local_norm, unwrap
from gigatok.infra.runtime import autocast
from gigatok.infra.schedules import set_lr
from gigatok.tokenizer.losses import TokenizerLoss

PREVIEW_IMAGES = 8


class DiscriminatorStep(nn.Module):
    """The discriminator objective as a `forward`, so that DDP (which only hooks `forward`) can wrap it."""

    def __init__(self, loss: TokenizerLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, images: torch.Tensor, recon: torch.Tensor, step: int,
                recon_direct: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss.discriminator_loss(images, recon, step, recon_direct)


@dataclasses.dataclass
class StepParts:
    """Everything one optimizer step touches."""

    model: nn.Module  # the (wrapped) tokenizer used for the forward pass
    loss: TokenizerLoss
    disc_step: nn.Module  # (wrapped) `DiscriminatorStep`
    optimizer: torch.optim.Optimizer
    optimizer_disc: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scaler_disc: torch.amp.GradScaler
    ema: EMA | None
    guard: NonFiniteGuard
    guard_disc: NonFiniteGuard
    tracker: CodebookUsageTracker
    lr_at: Callable[[int], float]
    amp_dtype: torch.dtype | None
    device: torch.device
    max_grad_norm: float
    distill: bool


def train_step(parts: StepParts, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor] | None:
    """One optimizer step of the tokenizer, then one of the discriminator once it is active.

    Args:
        micro_batches: `grad_accum_steps` image batches, each (B, C, S, S) in [-1, 1] on the device.
        step: optimizer steps taken so far (the official 1-indexed global step is step + 1).

    Returns:
        Detached per-step scalars (loss terms averaged over micro-batches, grad norms, lr) and "preview" (the last
        reconstructions, (PREVIEW_IMAGES, C, S, S)), or None when the loss was not finite on some rank and the update
        was skipped.
    """
    p, t, n = parts, step + 1, len(micro_batches)
    lr = p.lr_at(step)
    p.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}
    recons = []
    last_layer = unwrap(p.model).decoder.last_layer if p.loss.params.disc_adaptive_weight else None
    for i, images in enumerate(micro_batches):
        with grad_sync(p.model, i == n - 1):
            with autocast(p.device, p.amp_dtype):
                out = p.model(images, rec_loss=p.loss.aux_active(t), ret_inner_feat=p.distill)
                loss, terms = p.loss.generator_loss(images, out, t, last_layer=last_layer)
            p.scaler.scale(loss / n).backward()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value / n
        p.tracker.update(out.codes)
        direct = out.recon_direct.detach() if out.recon_direct is not None else None
        recons.append((images, out.recon.detach(), direct))
    if p.guard.check(sums["total"], step=t):
        p.optimizer.zero_grad(set_to_none=True)
        return None
    p.scaler.unscale_(p.optimizer)
    sums["grad_norm"] = local_norm(torch.nn.utils.clip_grad_norm_(p.model.parameters(), p.max_grad_norm))
    set_lr(p.optimizer, lr)
    p.scaler.step(p.optimizer)
    p.scaler.update()
    if p.ema is not None:
        p.ema.update(p.model)
    sums["lr"] = torch.tensor(lr, dtype=torch.float64)
    sums["preview"] = recons[-1][1][:PREVIEW_IMAGES]  # popped by the loop, not logged
    if p.loss.disc_active(t):
        sums.update(discriminator_step(p, recons, t, lr))
    return sums


def discriminator_step(p: StepParts, recons: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], t: int,
                       lr: float) -> dict[str, torch.Tensor]:
    """The discriminator update on the generator step's (images, reconstructions, shortcut reconstructions)."""
    # The generator pass also left gradients on the discriminator (its adversarial term): drop them.
    p.optimizer_disc.zero_grad(set_to_none=True)
    n = len(recons)
    disc_sums: dict[str, torch.Tensor] = {}
    for i, (images, recon, direct) in enumerate(recons):
        with grad_sync(p.disc_step, i == n - 1):
            with autocast(p.device, p.amp_dtype):
                d_loss, d_terms = p.disc_step(images, recon, t, direct)
            p.scaler_disc.scale(d_loss / n).backward()
        for key, value in {**d_terms, "disc_total": d_loss.detach().float()}.items():
            disc_sums[key] = disc_sums.get(key, 0.0) + value / n
    if p.guard_disc.check(disc_sums["disc_total"], step=t):
        p.optimizer_disc.zero_grad(set_to_none=True)
        return disc_sums
    p.scaler_disc.unscale_(p.optimizer_disc)
    disc_params = p.loss.discriminator.parameters()
    disc_sums["grad_norm_disc"] = local_norm(torch.nn.utils.clip_grad_norm_(disc_params, p.max_grad_norm))
    set_lr(p.optimizer_disc, lr)  # same schedule as the generator (official)
    p.scaler_disc.step(p.optimizer_disc)
    p.scaler_disc.update()
    return disc_sums


def iterate_batches(loader: DataLoader, sampler: ResumableDistributedSampler,
                    dataset: TrainImageDataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images (B, C, S, S), num_unreadable (B,)) batches, epoch after epoch, recording the consumed
    position."""
    while True:
        dataset.set_epoch(sampler.epoch)  # workers copy the dataset when the iterator starts
        for images, _, unreadable in loader:
            sampler.advance(images.shape[0])  # consumed by the step that asked for it
            yield images, unreadable
        sampler.set_epoch(sampler.epoch + 1)


def save_preview(path: Path, images: torch.Tensor, recon: torch.Tensor) -> None:
    """A PNG with the inputs (top row) above their reconstructions (bottom row); tensors (B, C, S, S)."""
    top, bottom = to_uint8(images).numpy(), to_uint8(recon).numpy()  # (B, S, S, C) uint8
    grid = np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], axis=0)
    save_png_atomic(path, grid)
