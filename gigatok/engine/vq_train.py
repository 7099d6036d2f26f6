"""The tokenizer's training machinery: the parts of a run (models wrapped for data parallelism, optimizers,
schedule, scalers, guards; `build_step_parts`), what its checkpoints hold (`checkpoint_manager`), and the step: the
generator update, then the discriminator's once it is active (official `vq_train.py` loop body), with gradient
accumulation, mixed precision, non-finite-loss guards and an EMA.

Shape letters: B batch; C channels; S image side (square images, H = W = S). Here C = 3 and S = image_size.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from gigatok.config import CausalSettings, ConfigError, VQConfig, to_dict
from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.data.train_images import TrainImageDataset
from gigatok.data.transforms import to_uint8
from gigatok.infra import states as st
from gigatok.infra.codebook_stats import CodebookUsageTracker
from gigatok.infra.dist import get_world_size, is_main_process
from gigatok.infra.ema import EMA
from gigatok.infra.io import save_png_atomic
from gigatok.infra.logging import NonFiniteGuard, reduce_metrics
from gigatok.infra.optim import build_adamw
from gigatok.infra.parallel import (
    grad_reduce_precision,
    grad_sync,
    local_norm,
    optimizer_format,
    parallelize,
    params_finite,
    unwrap,
)
from gigatok.infra.run_state import CheckpointManager, Retention
from gigatok.infra.runtime import autocast
from gigatok.infra.schedules import build_lr_schedule, set_lr
from gigatok.tokenizer.losses import TokenizerLoss

PREVIEW_IMAGES = 8


@dataclasses.dataclass
class RunPlan:
    """Quantities derived from the config and the world size (all printed at startup)."""

    world_size: int
    micro_batch_size: int
    grad_accum_steps: int
    total_steps: int
    stop_step: int
    amp_dtype: torch.dtype | None
    data_parallel: str
    decay_policy: str
    preview_every: int


@dataclasses.dataclass
class Counters:
    """Loop counters that live in the checkpoint: unreadable images replaced so far (this rank's share)."""

    corrupt_local: int = 0


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
    causal: CausalSettings = dataclasses.field(default_factory=CausalSettings)
    replace_ratio: float | None = None  # trainer.random_mix_reg on: the token replacement probability
    freeze_at: int | None = None  # trainer.freeze_but_decoder_iter
    frozen: bool = False  # only the CNN pixel decoder trains (set at `freeze_at`)


def dynamic_num_tokens(causal: CausalSettings, num_latent_tokens: int, step: int, epoch: int) -> int | None:
    """Tokens kept at `step` of a dynamic-length run (official `dynamic_length_train`); None: all of them.

    The draw is seeded by the step alone (official `random.seed(train_steps)`), so a resumed run draws the same.
    """
    if causal.causal_type is None or not causal.dynamic_length_train:
        return None
    per_level = causal.causal_type == "per-level"
    if causal.dynamic_level_range is None:
        top = round(np.log2(num_latent_tokens)) if per_level else num_latent_tokens
        choices = list(range(causal.min_level, top + 1))
    elif not per_level and len(causal.dynamic_level_range) > 2:
        choices = [int(c) for c in causal.dynamic_level_range]
    else:
        first, last = (int(c) for c in causal.dynamic_level_range)
        choices = list(range(first, last + 1, first))
    weights = [1.0] * len(choices)
    if causal.power_sample_T is not None:
        weights = [(c / max(choices)) ** (epoch / causal.power_sample_T) for c in choices]
    level = random.Random(step).choices(choices, weights=weights)[0]
    return 2**level if per_level else level


def freeze_but_pixel_decoder(model: nn.Module) -> None:
    """Leave only the CNN pixel decoder (`decoder.*`) trainable (official `freeze_but_2d_decoder`)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("decoder."))


def train_step(parts: StepParts, micro_batches: list[torch.Tensor], step: int,
               epoch: int = 0) -> dict[str, torch.Tensor] | None:
    """One optimizer step of the tokenizer, then one of the discriminator once it is active.

    Args:
        micro_batches: `grad_accum_steps` image batches, each (B, C, S, S) in [-1, 1] on the device.
        step: optimizer steps taken so far (the official 1-indexed global step is step + 1).
        epoch: the data epoch (dynamic-length runs weight their token counts by it).

    Returns:
        Detached per-step scalars (loss terms averaged over micro-batches, grad norms, lr) and "preview" (the last
        reconstructions, (PREVIEW_IMAGES, C, S, S)), or None when the loss was not finite on some rank and the update
        was skipped. Before `loss.params.gen_start` the tokenizer is not updated (no grad_norm).
    """
    p, t, n = parts, step + 1, len(micro_batches)
    if p.freeze_at is not None and step >= p.freeze_at and not p.frozen:
        freeze_but_pixel_decoder(unwrap(p.model))
        p.loss.drop_teacher()  # official: the semantic loss goes off with the freeze
        p.distill, p.frozen = False, True
    num_tokens = dynamic_num_tokens(p.causal, unwrap(p.model).num_tokens, step, epoch)
    lr = p.lr_at(step)
    p.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}
    recons = []
    last_layer = unwrap(p.model).decoder.last_layer if p.loss.params.disc_adaptive_weight else None
    # Official loss.params.gen_start: before it the tokenizer is not updated, only run (no graph) for the fakes.
    gen_on = t >= p.loss.params.gen_start
    for i, images in enumerate(micro_batches):
        with grad_sync(p.model, i == n - 1), torch.set_grad_enabled(gen_on):
            with autocast(p.device, p.amp_dtype):
                out = p.model(images, rec_loss=p.loss.aux_active(t), ret_inner_feat=p.distill, num_tokens=num_tokens,
                              replace_ratio=p.replace_ratio)
                loss, terms = p.loss.generator_loss(images, out, t, last_layer=last_layer)
            if gen_on:
                p.scaler.scale(loss / n).backward()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value / n
        p.tracker.update(out.codes)
        direct = out.recon_direct.detach() if out.recon_direct is not None else None
        recons.append((images, out.recon.detach(), direct))
    if gen_on and p.guard.check(sums["total"], step=t):
        p.optimizer.zero_grad(set_to_none=True)
        return None
    if gen_on:
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


def build_step_parts(config: VQConfig, plan: RunPlan, tokenizer: nn.Module, loss: TokenizerLoss, ema: EMA | None,
                     device: torch.device) -> StepParts:
    """Wrap the models for data parallelism and build optimizers, the LR schedule, scalers and counters."""
    t = config.trainer
    grad_dtype = grad_reduce_precision(t.grad_precision, t.mixed_precision)  # official: grad or mixed precision
    model = parallelize(tokenizer, plan.data_parallel, device=device, reduce_dtype=grad_dtype,
                        find_unused_parameters=True, compile_model=t.compile,
                        activation_checkpointing=t.activation_checkpointing)
    # The discriminator is small: plain DDP in both modes (official: VQLoss in its own DDP).
    disc_step = parallelize(DiscriminatorStep(loss), "none" if plan.data_parallel == "none" else "ddp", device=device)
    betas = (t.beta1, t.beta2)
    optimizer = build_adamw(model, t.lr, betas, t.weight_decay, plan.decay_policy, algorithm=t.optimizer)
    optimizer_disc = build_adamw(loss.discriminator, t.lr, betas, t.weight_decay, plan.decay_policy,
                                 algorithm=t.optimizer)
    try:
        lr_at = build_lr_schedule(t.lr_scheduler, t.lr, warmup=t.warmup, total_steps=plan.total_steps,
                                  end_lr=t.end_lr, fract_decay=t.fract_decay)
    except ValueError as err:
        raise ConfigError(f"trainer: {err}") from None
    use_scaler = plan.amp_dtype == torch.float16  # GradScalers only for fp16, one per optimizer (official)
    return StepParts(model, loss, disc_step, optimizer, optimizer_disc,
                     torch.amp.GradScaler(device.type, enabled=use_scaler),
                     torch.amp.GradScaler(device.type, enabled=use_scaler), ema,
                     NonFiniteGuard(t.max_consecutive_nonfinite), NonFiniteGuard(t.max_consecutive_nonfinite),
                     CodebookUsageTracker(tokenizer.codebook_size), lr_at, plan.amp_dtype, device, t.max_grad_norm,
                     t.distill_loss, config.model.causal_settings, t.replace_ratio if t.random_mix_reg else None,
                     t.freeze_but_decoder_iter)


def unhealthy(model: nn.Module, *guards: NonFiniteGuard) -> str | None:
    """Why the current weights must not become a checkpoint (None: they may): steps just skipped for a non-finite
    loss, or non-finite weights. COLLECTIVE (all ranks call it at the same step)."""
    skipped = max(guard.consecutive for guard in guards)
    if skipped:
        return f"the last {skipped} step(s) had a non-finite loss and were skipped; the weights may be diverging"
    if not params_finite(model):
        return "the weights hold NaN/inf"
    return None


def checkpoint_manager(config: VQConfig, run_dir: Path, parts: StepParts, sampler: ResumableDistributedSampler,
                       steps_per_epoch: int, counters: Counters) -> CheckpointManager:
    """Every object of the run that has state, under its checkpoint entry (official names first)."""
    loss, t = parts.loss, config.trainer

    def set_lecam(value: list[torch.Tensor]) -> None:
        loss.lecam_ema_real.copy_(value[0])
        loss.lecam_ema_fake.copy_(value[1])

    def set_corrupt(total: int) -> None:  # the saved total lives on rank 0
        counters.corrupt_local = int(total) if is_main_process() else 0

    entries = {
        "model": st.ModelState(parts.model), "ema": st.EMAState(parts.ema, parts.model) if parts.ema else None,
        "discriminator": st.ModelState(loss.discriminator, "discriminator", required=False),
        "optimizer": st.OptimizerState(parts.optimizer, parts.model),
        "optimizer_disc": st.OptimizerState(parts.optimizer_disc, loss.discriminator, "optimizer_disc"),
        "scaler": st.ScalerState(parts.scaler), "scaler_disc": st.ScalerState(parts.scaler_disc, "scaler_disc"),
        "data_state": st.SamplerState(sampler, steps_per_epoch),
        "extra.optimizer_format": st.ConstState(optimizer_format(parts.model)),
        "extra.guard": st.ObjectState(parts.guard), "extra.guard_disc": st.ObjectState(parts.guard_disc),
        "extra.codebook_stats": st.ObjectState(parts.tracker),
        "extra.corrupt_images": st.ValueState(lambda: round(reduce_metrics({"c": counters.corrupt_local})["c"]
                                                            * get_world_size()), set_corrupt),
        "extra.lecam": st.ValueState(lambda: [loss.lecam_ema_real.detach().cpu(), loss.lecam_ema_fake.detach().cpu()],
                                     set_lecam),
    }
    retention = Retention(t.keep_last, t.milestone_step, t.milestone_start, t.max_milestone_num)
    return CheckpointManager(run_dir, {k: v for k, v in entries.items() if v is not None}, to_dict(config), retention,
                             health=lambda: unhealthy(parts.model, parts.guard, parts.guard_disc))
