"""Train a GigaTok tokenizer (official `vq_train.py`, DDP, and `vq_train_fsdp.py`, FSDP).

Run it with torchrun (scripts/train_vq.sh, scripts/train_vq_fsdp.sh) or as a single process
(`python -m gigatok.stages.train_vq ...`). The run directory is `<--save-path>/<--sub-exp-dir>/`:
  config.yaml                  the resolved config (YAML < official flags < --section.key=value overrides)
  checkpoints/{step:07d}.pt    self-describing, atomic checkpoints (official entries + EMA, scalers, RNG, data state)
  metrics.jsonl, log.txt       every `log_every` steps: all loss terms, codebook usage, grad norms, lr, throughput
  previews/{step:07d}.png      inputs above their reconstructions
Restarting the same command resumes from the newest readable checkpoint of the run directory, bit for bit on CPU
(same data order and augmentation, optimizer, scalers, RNG and position inside the epoch). `--vq-ckpt FILE`
starts from another run's (or an official) checkpoint; with `--finetune` only its weights are taken, at step 0.

Differences from the official trainer, on purpose: the loss flags and --gradient-accumulation-steps are applied
(officially parsed and ignored); augmentation is seeded per (seed, epoch, image) instead of per worker; an
unreadable image is replaced and counted instead of crashing; the LR schedule is set before each optimizer step.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gigatok.builders import build_tokenizer
from gigatok.config import (
    ConfigError,
    VQConfig,
    config_from_dict,
    load_config,
    parse_overrides,
    to_dict,
    to_yaml,
)
from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.data.train_images import TrainImageDataset
from gigatok.data.transforms import to_uint8
from gigatok.errors import UserError
from gigatok.infra.cli import run_stage
from gigatok.infra.codebook_stats import CodebookUsageTracker
from gigatok.infra.dist import (
    DistInfo,
    barrier,
    cnn_channels_last_for_training,
    cpu_bf16_warning,
    get_rank,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.ema import EMA
from gigatok.infra.io import write_text_atomic
from gigatok.infra.logging import (
    WANDB_MODES,
    MetricsLogger,
    NonFiniteGuard,
    reduce_metrics,
)
from gigatok.infra.optim import DECAY_POLICIES, build_adamw, load_optimizer_state
from gigatok.infra.parallel import parallelize, unwrap
from gigatok.infra.run_state import (
    checkpoint_dir,
    find_latest_checkpoint,
    load_training_checkpoint,
    prune_checkpoints,
    restore_rng,
    restore_training_state,
    save_training_checkpoint,
)
from gigatok.infra.schedules import SCHEDULES, build_lr_schedule, set_lr
from gigatok.tokenizer.losses import TokenizerLoss

logger = logging.getLogger("gigatok")

PREVIEW_IMAGES = 8



# Official flags that set a config field: argparse dest -> dotted config key(s). The loss flags and
# --gradient-accumulation-steps are parsed but ignored by the official trainer; here they override the YAML.
FLAG_TO_CONFIG: dict[str, tuple[str, ...]] = {
    "data_path": ("trainer.data_path",), "dataset": ("trainer.dataset",),
    "image_size": ("model.init_args.image_size", "loss.params.image_size"),
    "iterations": ("trainer.iterations",), "global_batch_size": ("trainer.global_batch_size",),
    "global_seed": ("trainer.global_seed",), "num_workers": ("trainer.num_workers",),
    "gradient_accumulation_steps": ("trainer.grad_accum_steps",), "mixed_precision": ("trainer.mixed_precision",),
    "warmup": ("trainer.warmup",), "fract_decay": ("trainer.fract_decay",), "log_every": ("trainer.log_every",),
    "ckpt_every": ("trainer.ckpt_every",), "milestone_step": ("trainer.milestone_step",),
    "milestone_start": ("trainer.milestone_start",), "max_milestone_num": ("trainer.max_milestone_num",),
    "early_stop_iter": ("trainer.early_stop_iter",), "wandb_project": ("trainer.wandb_project",),
    "data_parallel": ("trainer.data_parallel",), "grad_precision": ("trainer.grad_precision",),
    "codebook_weight": ("loss.params.codebook_weight",), "entropy_loss_ratio": ("model.init_args.entropy_loss_ratio",),
    "commit_loss_beta": ("model.init_args.commit_loss_beta",),
    "reconstruction_weight": ("loss.params.reconstruction_weight",),
    "reconstruction_loss": ("loss.params.reconstruction_loss",),
    "perceptual_weight": ("loss.params.perceptual_weight",),
    "disc_weight": ("loss.params.disc_weight",), "disc_start": ("loss.params.disc_start",),
    "disc_type": ("loss.params.disc_type",), "disc_loss": ("loss.params.disc_loss",),
    "gen_loss": ("loss.params.gen_adv_loss",), "aux_loss_end": ("loss.params.aux_loss_end",),
}
SWITCH_TO_CONFIG = {"ema": ("trainer.ema", True), "compile": ("trainer.compile", True),
                    "no_wandb": ("trainer.wandb_mode", "disabled")}


def _int_or_none(text: str) -> int | None:
    return None if text in ("None", "none", "") else int(text)


def _str_or_none(text: str) -> str | None:
    return None if text in ("None", "none", "") else text


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Official `vq_train.py` / `vq_train_fsdp.py` flags (defaults None = "take the config's value"), plus
    `--section.key=value` config overrides, returned separately."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-config", type=str, required=True, help="tokenizer YAML, e.g. configs/vq/VQ_SS256.yaml")
    p.add_argument("--data-path", type=str, default=None, help="ImageFolder (ILSVRC2012_img_train/) or flat folder")
    p.add_argument("--data-face-path", type=_str_or_none, default=None, help="official face data: not supported")
    p.add_argument("--save-path", type=str, default="results_tokenizer_image")
    p.add_argument("--sub-exp-dir", type=str, default=None, help="run name; the run dir is <save-path>/<sub-exp-dir>")
    p.add_argument("--vq-ckpt", type=_str_or_none, default=None, help="start from this checkpoint (resume its state)")
    p.add_argument("--finetune", action="store_true", help="with --vq-ckpt: take only its weights, start at step 0")
    p.add_argument("--ema", action="store_true", help="keep an EMA of the weights (decay trainer.ema_decay)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--dataset", type=str, default=None, help="imagenet (an image folder; the only choice here)")
    p.add_argument("--json-path", type=_str_or_none, default=None, help="official json image lists: not supported")
    p.add_argument("--image-size", type=int, default=None, help="default: model.init_args.image_size")
    p.add_argument("--iterations", "--iteration", type=int, default=None, help="total optimizer steps")
    p.add_argument("--global-batch-size", type=int, default=None)
    p.add_argument("--global-seed", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--gradient-accumulation-steps", type=int, default=None)
    p.add_argument("--mixed-precision", type=str, choices=["none", "fp16", "bf16"], default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--fract-decay", type=float, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--milestone-step", type=int, default=None)
    p.add_argument("--milestone-start", type=int, default=None)
    p.add_argument("--max-milestone-num", type=int, default=None)
    p.add_argument("--early-stop-iter", type=_int_or_none, default=None)
    p.add_argument("--wandb-project", type=str, default=None)
    p.add_argument("--no-wandb", action="store_true")
    p.add_argument("--data-parallel", type=str, choices=["ddp", "fsdp", "none", "sdp", "hsdp"], default=None)
    p.add_argument("--grad-precision", type=_str_or_none, default=None, help="FSDP gradient reduce dtype")
    loss = p.add_argument_group("loss flags (override the YAML; the official trainer ignores them)")
    loss.add_argument("--codebook-weight", type=float, default=None)
    loss.add_argument("--entropy-loss-ratio", type=float, default=None)
    loss.add_argument("--commit-loss-beta", type=float, default=None)
    loss.add_argument("--reconstruction-weight", type=float, default=None)
    loss.add_argument("--reconstruction-loss", type=str, default=None)
    loss.add_argument("--perceptual-weight", type=float, default=None)
    loss.add_argument("--disc-weight", type=float, default=None)
    loss.add_argument("--disc-start", type=int, default=None)
    loss.add_argument("--disc-type", type=str, default=None)
    loss.add_argument("--disc-loss", type=str, default=None)
    loss.add_argument("--gen-loss", type=str, default=None)
    loss.add_argument("--aux-loss-end", type=int, default=None)
    p.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and "=" in a and "." in a.split("=", 1)[0])]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --section.key=value)")
    return args, rest


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data[key]
    data[leaf] = value


def resolve_config(args: argparse.Namespace, overrides: list[str]) -> tuple[VQConfig, list[str]]:
    """YAML < official flags < `--section.key=value` overrides. Returns the config and one report line per
    changed setting."""
    if args.data_face_path is not None or args.json_path is not None:
        raise UserError("--data-face-path and --json-path (official face data / json image lists) are not supported: "
                         "pass an image folder with --data-path")
    if args.data_parallel in ("sdp", "hsdp"):
        raise UserError(f"--data-parallel {args.data_parallel} is not supported: use ddp or fsdp (full sharding)")
    yaml_config = load_config(args.model_config)
    in_file = OmegaConf.load(args.model_config)  # to tell the file's values from dataclass defaults
    resolved = OmegaConf.create(to_dict(yaml_config))
    data = to_dict(yaml_config)
    report = []
    flags = {dest: getattr(args, dest) for dest in FLAG_TO_CONFIG if getattr(args, dest) is not None}
    flags.update({dest: value for dest, (_, value) in SWITCH_TO_CONFIG.items() if getattr(args, dest)})
    for dest, value in flags.items():
        keys = FLAG_TO_CONFIG[dest] if dest in FLAG_TO_CONFIG else (SWITCH_TO_CONFIG[dest][0],)
        for key in keys:
            old = OmegaConf.select(resolved, key)
            _set(data, key, value)
            if OmegaConf.select(in_file, key) is None:
                verdict = f"default {old!r}"
            else:
                verdict = f"{'overrides' if old != value else 'same as'} the YAML: {old!r}"
            report.append(f"--{dest.replace('_', '-')}: {key} = {value!r} ({verdict})")
    config = config_from_dict(data, source=f"{args.model_config} + command-line flags")
    if overrides:
        merged = OmegaConf.merge(OmegaConf.create(to_dict(config)), parse_overrides(overrides))
        config = config_from_dict(OmegaConf.to_container(merged), source=f"{args.model_config} + {overrides}")
        report += [f"override {item}" for item in overrides]
    return config, report


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
    optimizer_format: str  # how the generator optimizer state is saved: "param_ids" (official) or "fqn" (FSDP)


def plan_run(config: VQConfig, world_size: int) -> RunPlan:
    """Check the run settings (user errors name the flag to fix) and derive the plan."""
    t = config.trainer
    if t.iterations is None or t.iterations <= 0:
        raise UserError("the number of training steps is not set: pass --iterations N (official recipes: "
                         "epochs * 5000 * 256 / global batch size, e.g. 1,000,000 for S-S at batch 128)")
    if t.global_batch_size is None or t.global_batch_size <= 0:
        raise UserError("the global batch size is not set: pass --global-batch-size or set trainer.global_batch_size")
    if not t.data_path:
        raise UserError("no training data: pass --data-path (an ImageNet-style folder such as ILSVRC2012_img_train/)")
    if not os.path.isdir(t.data_path):
        raise UserError(f"--data-path '{t.data_path}' does not exist or is not a folder")
    if t.dataset != "imagenet":
        raise UserError(f"--dataset {t.dataset} is not supported: use imagenet (any ImageFolder or flat image folder)")
    accum = t.grad_accum_steps
    if accum < 1 or t.global_batch_size % (world_size * accum):
        raise UserError(f"--global-batch-size {t.global_batch_size} must be a multiple of world size {world_size} x "
                         f"gradient accumulation steps {accum}")
    checks = {"trainer.mixed_precision": (t.mixed_precision, ("none", "fp16", "bf16")),
              "trainer.data_parallel": (t.data_parallel, ("ddp", "fsdp", "none")),
              "trainer.wandb_mode": (t.wandb_mode, WANDB_MODES),
              "trainer.lr_scheduler": (t.lr_scheduler, SCHEDULES + ("none",)),
              "trainer.grad_precision": (t.grad_precision, (None, "fp32", "bf16", "fp16", "none")),
              "trainer.decay_policy": (t.decay_policy, (None,) + DECAY_POLICIES)}
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise UserError(f"{key} '{value}' is not one of {[a for a in allowed if a is not None]}")
    if min(t.log_every, t.ckpt_every, t.keep_last, t.milestone_step) < 1:
        raise UserError("--log-every, --ckpt-every, keep_last and --milestone-step must be >= 1")
    if t.data_parallel == "none" and world_size > 1:
        raise UserError("trainer.data_parallel none runs one process: launch without torchrun, or use ddp/fsdp")
    data_parallel = t.data_parallel if torch.distributed.is_initialized() else "none"  # no torchrun: one process
    if t.ema and data_parallel == "fsdp":
        raise UserError("--ema is not supported with --data-parallel fsdp (sharded weights); use ddp or drop --ema")
    if t.wandb_mode != "disabled":  # checked on every rank, so that all of them stop
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UserError("W&B logging is on (the official default) but the 'wandb' package is not installed: "
                             "`pip install wandb`, or pass --no-wandb")
    stop = t.iterations if t.early_stop_iter is None else min(t.early_stop_iter, t.iterations)
    dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[t.mixed_precision]
    policy = t.decay_policy or ("no_norm_bias" if t.data_parallel == "fsdp" else "all")
    preview = t.ckpt_every if t.preview_every is None else t.preview_every
    return RunPlan(world_size, t.global_batch_size // (world_size * accum), accum, t.iterations, stop, dtype,
                   data_parallel, policy, preview, "fqn" if data_parallel == "fsdp" else "param_ids")


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
    lr_at: Any
    amp_dtype: torch.dtype | None
    device: torch.device
    max_grad_norm: float
    distill: bool


class DiscriminatorStep(nn.Module):
    """The discriminator objective as a `forward`, so that DDP (which only hooks `forward`) can wrap it."""

    def __init__(self, loss: TokenizerLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, images: torch.Tensor, recon: torch.Tensor, step: int,
                recon_direct: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss.discriminator_loss(images, recon, step, recon_direct)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _grad_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of non-final micro-batches (DDP `no_sync`, FSDP2 `set_requires_gradient_sync`)."""
    inner = getattr(module, "_orig_mod", module)
    if enabled or not hasattr(inner, "no_sync") and not hasattr(inner, "set_requires_gradient_sync"):
        yield
    elif hasattr(inner, "no_sync"):
        with inner.no_sync():
            yield
    else:
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)


def _norm(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if hasattr(value, "full_tensor") else value  # FSDP2 returns a DTensor norm


def train_step(parts: StepParts, micro_batches: list[torch.Tensor], step: int) -> dict[str, torch.Tensor] | None:
    """One optimizer step of the tokenizer, then one of the discriminator once it is active.

    Args:
        micro_batches: `grad_accum_steps` image batches, each (b, 3, S, S) in [-1, 1] on the device.
        step: optimizer steps taken so far (the official 1-indexed global step is step + 1).

    Returns:
        Detached per-step scalars (loss terms averaged over micro-batches, grad norms, lr), or None when the
        loss was not finite on some rank and the update was skipped.
    """
    p, t, n = parts, step + 1, len(micro_batches)
    lr = p.lr_at(step)
    p.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}
    recons = []
    last_layer = unwrap(p.model).decoder.last_layer if p.loss.params.disc_adaptive_weight else None
    for i, images in enumerate(micro_batches):
        with _grad_sync(p.model, i == n - 1):
            with _autocast(p.device, p.amp_dtype):
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
    sums["grad_norm"] = _norm(torch.nn.utils.clip_grad_norm_(p.model.parameters(), p.max_grad_norm))
    set_lr(p.optimizer, lr)
    p.scaler.step(p.optimizer)
    p.scaler.update()
    if p.ema is not None:
        p.ema.update(p.model)
    sums["lr"] = torch.tensor(lr, dtype=torch.float64)
    sums["preview"] = recons[-1][1][:PREVIEW_IMAGES]  # popped by the loop, not logged

    if p.loss.disc_active(t):
        # The generator pass above also left gradients on the discriminator (its adversarial term): drop them.
        p.optimizer_disc.zero_grad(set_to_none=True)
        disc_sums: dict[str, torch.Tensor] = {}
        for i, (images, recon, direct) in enumerate(recons):
            with _grad_sync(p.disc_step, i == n - 1):
                with _autocast(p.device, p.amp_dtype):
                    d_loss, d_terms = p.disc_step(images, recon, t, direct)
                p.scaler_disc.scale(d_loss / n).backward()
            for key, value in {**d_terms, "disc_total": d_loss.detach().float()}.items():
                disc_sums[key] = disc_sums.get(key, 0.0) + value / n
        if p.guard_disc.check(disc_sums["disc_total"], step=t):
            p.optimizer_disc.zero_grad(set_to_none=True)
        else:
            p.scaler_disc.unscale_(p.optimizer_disc)
            disc_params = p.loss.discriminator.parameters()
            disc_sums["grad_norm_disc"] = _norm(torch.nn.utils.clip_grad_norm_(disc_params, p.max_grad_norm))
            set_lr(p.optimizer_disc, lr)  # same schedule as the generator (official)
            p.scaler_disc.step(p.optimizer_disc)
            p.scaler_disc.update()
        sums.update(disc_sums)
    return sums


def iterate_batches(loader: DataLoader, sampler: ResumableDistributedSampler,
                    dataset: TrainImageDataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, num_unreadable) batches, epoch after epoch, recording the consumed position."""
    while True:
        dataset.set_epoch(sampler.epoch)  # workers copy the dataset when the iterator starts
        for images, _, unreadable in loader:
            sampler.advance(images.shape[0])  # consumed by the step that asked for it
            yield images, unreadable
        sampler.set_epoch(sampler.epoch + 1)


def save_preview(path: Path, images: torch.Tensor, recon: torch.Tensor) -> None:
    """A PNG with the inputs (top row) above their reconstructions (bottom row); tensors (b, 3, S, S)."""
    top, bottom = to_uint8(images).numpy(), to_uint8(recon).numpy()  # (b, S, S, 3) uint8
    grid = np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def save_checkpoint(run_dir: Path, step: int, parts: StepParts, config: VQConfig, data_state: dict,
                    extra: dict, fsdp: bool) -> Path:
    """Collective: full state dicts (gathered under FSDP), rank 0 writes, then old checkpoints are pruned."""
    model_state, optim_state = parts.model, parts.optimizer
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(parts.model, options=options)
        optim_state = get_optimizer_state_dict(parts.model, parts.optimizer, options=options)
    path = save_training_checkpoint(
        run_dir, step, model=model_state, ema=parts.ema, optimizer=optim_state,
        discriminator=parts.loss.discriminator, optimizer_disc=parts.optimizer_disc, scaler=parts.scaler,
        scaler_disc=parts.scaler_disc, data_state=data_state, config_dict=to_dict(config), extra=extra)
    t = config.trainer
    prune_checkpoints(checkpoint_dir(run_dir), t.keep_last, t.milestone_step, t.milestone_start, t.max_milestone_num)
    return path


def _config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_step_parts(config: VQConfig, plan: RunPlan, tokenizer: nn.Module, loss: TokenizerLoss, ema: EMA | None,
                     device: torch.device) -> StepParts:
    """Wrap the models for data parallelism and build optimizers, the LR schedule, scalers and counters."""
    t = config.trainer
    if plan.data_parallel == "fsdp":
        tokenizer.to(memory_format=torch.contiguous_format)  # FSDP2 cannot shard channels-last conv weights
    grad_dtype = "fp32" if t.grad_precision in (None, "none") else t.grad_precision
    model = parallelize(tokenizer, plan.data_parallel, device=device, reduce_dtype=grad_dtype,
                        find_unused_parameters=True, compile_model=t.compile,
                        activation_checkpointing=t.activation_checkpointing)
    # The discriminator is small: plain DDP in both modes (official: VQLoss in its own DDP).
    disc_step = parallelize(DiscriminatorStep(loss), "none" if plan.data_parallel == "none" else "ddp", device=device)
    betas = (t.beta1, t.beta2)
    optimizer = build_adamw(model, t.lr, betas, t.weight_decay, plan.decay_policy)
    optimizer_disc = build_adamw(loss.discriminator, t.lr, betas, t.weight_decay, plan.decay_policy)
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
                     t.distill_loss)


def restore_run_state(ckpt: dict, parts: StepParts, sampler: ResumableDistributedSampler, plan: RunPlan,
                      steps_per_epoch: int) -> int:
    """Optimizer moments, scalers, data position and counters of a resumed run (the weights are already loaded).
    Returns this rank's share of the unreadable-image count."""
    extra = ckpt.get("extra") or {}
    saved_format = extra.get("optimizer_format", "param_ids")  # official files: param ids
    if "optimizer" in ckpt and saved_format == plan.optimizer_format:
        if plan.optimizer_format == "fqn":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(parts.model, parts.optimizer, ckpt["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            load_optimizer_state(parts.optimizer, ckpt["optimizer"])
    else:
        logger.warning("the checkpoint's generator optimizer state is missing or in another data-parallel layout "
                       f"({saved_format} vs {plan.optimizer_format}): AdamW moments restart from zero")
    if "optimizer_disc" in ckpt:
        load_optimizer_state(parts.optimizer_disc, ckpt["optimizer_disc"])
    for name in ("scaler", "scaler_disc"):
        if name in ckpt:
            getattr(parts, name).load_state_dict(ckpt[name])
    if "data_state" in ckpt:
        sampler.load_state_dict(ckpt["data_state"])
    else:  # official checkpoints: restart the epoch the step falls in (official behaviour)
        sampler.set_epoch(int(ckpt["step"]) // steps_per_epoch)
    parts.guard.load_state_dict(extra.get("guard", {}))
    parts.guard_disc.load_state_dict(extra.get("guard_disc", {}))
    if "codebook_stats" in extra:
        parts.tracker.load_state_dict(extra["codebook_stats"])
    lecam = extra.get("lecam")
    if lecam is not None:
        parts.loss.lecam_ema_real.copy_(lecam[0])
        parts.loss.lecam_ema_fake.copy_(lecam[1])
    return int(extra.get("corrupt_images", 0)) if get_rank() == 0 else 0  # the saved total lives on rank 0


def log_plan(config: VQConfig, plan: RunPlan, run_dir: Path, device: torch.device, dataset: TrainImageDataset,
             steps_per_epoch: int, num_workers: int, params: tuple[int, int], start: str) -> None:
    """Print every derived quantity of the run (rank 0)."""
    t, p = config.trainer, config.loss.params
    logger.info(f"run dir {run_dir} (resolved config: config.yaml); device {device}, world size {plan.world_size}, "
                f"data parallel {plan.data_parallel}, precision {t.mixed_precision}"
                f"{' + GradScaler' if plan.amp_dtype == torch.float16 else ''}, compile {t.compile}, activation "
                f"checkpointing {t.activation_checkpointing}")
    logger.info(f"global batch {t.global_batch_size} = {plan.micro_batch_size} per rank x {plan.world_size} ranks x "
                f"{plan.grad_accum_steps} accumulation steps; lr {t.lr:g} (not scaled with the batch, as official), "
                f"{t.lr_scheduler} schedule, warmup {t.warmup}, end lr {t.end_lr:g}"
                f"{f', fract_decay {t.fract_decay}' if t.lr_scheduler == 'wsd' else ''}, AdamW betas "
                f"{(t.beta1, t.beta2)}, weight decay {t.weight_decay:g} ({plan.decay_policy}), grad clip "
                f"{t.max_grad_norm}")
    logger.info(f"iterations {plan.total_steps:,} (stop at {plan.stop_step:,}); {len(dataset):,} images in "
                f"{len(dataset.classes) or 'no'} classes, {steps_per_epoch:,} steps per epoch = "
                f"{plan.total_steps / steps_per_epoch:.2f} epochs; {num_workers} loader workers per rank")
    logger.info(f"tokenizer {params[0] / 1e6:.2f}M params, discriminator ({p.disc_type}) {params[1] / 1e6:.2f}M; "
                f"disc_start {p.disc_start}, aux_loss_end {p.aux_loss_end}, entropy ratio "
                f"{config.model.init_args.entropy_loss_ratio}, perceptual weight {p.perceptual_weight}, semantic "
                f"teacher {t.distill_model if t.distill_loss else 'off'}, EMA {t.ema_decay if t.ema else 'off'}")
    logger.info(f"log every {t.log_every}, checkpoint every {t.ckpt_every} (keep last {t.keep_last}, milestones every "
                f"{t.milestone_step} from {t.milestone_start}, at most {t.max_milestone_num}), preview every "
                f"{plan.preview_every or 'never'}; {start}")


def train(config: VQConfig, run_dir: Path, dist_info: DistInfo, *, vq_ckpt: str | None = None,
          finetune: bool = False, report: list[str] = ()) -> int:
    """The training stage; returns the last step reached."""
    # -- Run directory, logging, resolved config, seeds.
    t, device, world = config.trainer, dist_info.device, dist_info.world_size
    plan = plan_run(config, world)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    barrier()
    setup_logging(run_dir)
    for line in report:
        logger.info(line)
    seed = t.global_seed * world + dist_info.rank  # official per-rank seed, drawn before the model is built
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # official
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu" and plan.amp_dtype == torch.float16:
        logger.warning("fp16 autocast on CPU is very slow (no fast fp16 kernels): prefer --mixed-precision bf16 or none")
    if (note := cpu_bf16_warning(device, plan.amp_dtype)) is not None:
        logger.warning(note)

    # -- Tokenizer, loss (discriminator, LPIPS, teacher), EMA, and the weights of the checkpoint we start from:
    # the newest one of this run (resume), else --vq-ckpt (resume its state, or only its weights with --finetune).
    tokenizer = build_tokenizer(config).to(device)
    channels_last = cnn_channels_last_for_training(config.model.init_args.cnn_channels_last, device)
    if channels_last != tokenizer.cnn_channels_last:
        tokenizer.set_cnn_channels_last(channels_last)  # before EMA and the optimizers copy the weights
    if config.model.init_args.cnn_channels_last is None:
        logger.info(f"CNN layout (model.init_args.cnn_channels_last: auto): "
                    f"{'channels-last' if channels_last else 'NCHW'}")
    try:
        loss = TokenizerLoss(config.loss.params, t, teacher_grid_size=tokenizer.grid_size,
                             teacher_weights=t.teacher_weights, teacher_random_init=t.teacher_random_init,
                             lpips_random_backbone=t.lpips_random_backbone, dino_disc_weights=t.dino_disc_weights,
                             dino_disc_random_init=t.dino_disc_random_init).to(device)
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"loss settings: {err}") from None
    ema = EMA(tokenizer, decay=t.ema_decay) if t.ema else None
    latest = find_latest_checkpoint(run_dir)
    source = latest or (Path(vq_ckpt) if vq_ckpt else None)
    resume = source is not None and (latest is not None or not finetune)
    ckpt = load_training_checkpoint(source) if source is not None else None
    step = 0
    if ckpt is not None:
        ckpt_step = restore_training_state(ckpt, model=tokenizer, ema=ema, discriminator=loss.discriminator)
        step = ckpt_step if resume else 0
        changes = _config_changes(ckpt.get("config") or {}, to_dict(config)) if ckpt.get("config") else []
        if changes and resume:
            logger.warning(f"the config differs from the checkpoint's ({len(changes)}): {'; '.join(changes[:8])}")
    params = (_num_params(tokenizer), _num_params(loss.discriminator))

    # -- Data parallelism, optimizers, LR schedule, GradScalers.
    parts = build_step_parts(config, plan, tokenizer, loss, ema, device)

    # -- Data: augmented images, a sampler with the same shuffle seed on every rank, one loader per rank.
    dataset = TrainImageDataset(t.data_path, tokenizer.image_size, seed=t.global_seed)
    sampler = ResumableDistributedSampler(dataset, shuffle=True, seed=t.global_seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // plan.micro_batch_size // plan.grad_accum_steps
    if steps_per_epoch < 1:
        raise UserError(f"{len(dataset)} images under '{t.data_path}' do not fill one step of global batch "
                         f"{t.global_batch_size}: add images or lower --global-batch-size")
    num_workers = min(t.num_workers, max((os.cpu_count() or 1) // world, 1)) if t.num_workers > 0 else 0
    loader = DataLoader(dataset, batch_size=plan.micro_batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        generator=torch.Generator().manual_seed(t.global_seed))  # leaves the global RNG alone
    corrupt_local = 0
    if ckpt is not None and resume:
        corrupt_local = restore_run_state(ckpt, parts, sampler, plan, steps_per_epoch)
        restore_rng(ckpt)  # last: after every random init, before the first data iterator
    start = (f"resuming from {source} at step {step:,} (epoch {sampler.epoch}, position {sampler.position})"
             if resume else f"fine-tuning the weights of {source} from step 0" if source else "from scratch")
    del ckpt
    log_plan(config, plan, run_dir, device, dataset, steps_per_epoch, num_workers, params, start)

    # -- Training loop.
    metrics_logger = MetricsLogger(run_dir, wandb_mode=t.wandb_mode, wandb_project=t.wandb_project,
                                   wandb_name=run_dir.name, config=to_dict(config), use_tensorboard=t.tensorboard)
    parts.model.train()
    loss.train()
    batches = iterate_batches(loader, sampler, dataset)
    progress = tqdm(total=plan.stop_step, initial=step, disable=not is_main_process(), desc="train", unit="step",
                    dynamic_ncols=True)
    sums: dict[str, torch.Tensor] = {}
    num_logged, images_seen, tic = 0, 0, time.perf_counter()
    start_step = step
    while step < plan.stop_step:
        micro = []
        for _ in range(plan.grad_accum_steps):
            images, unreadable = next(batches)
            micro.append(images.to(device, non_blocking=True))
            corrupt_local += int(unreadable.sum())
        images_seen += t.global_batch_size
        result = train_step(parts, micro, step)
        if result is None:
            continue  # non-finite loss: the data is consumed, the step is not taken
        preview = result.pop("preview")
        for key, value in result.items():
            sums[key] = sums.get(key, 0.0) + value
        num_logged += 1
        step += 1
        progress.update(1)
        last = step == plan.stop_step

        if step % t.log_every == 0 or last:
            metrics = {f"train/{k}": v / num_logged for k, v in sums.items()}  # interval means, then rank means
            metrics = reduce_metrics({**metrics, "train/corrupt_images": corrupt_local})
            metrics["train/corrupt_images"] *= world  # a total over ranks, not a mean
            metrics.update(parts.tracker.compute("train/codebook/"))  # already summed over ranks
            elapsed = time.perf_counter() - tic
            metrics.update({"train/skipped_steps": parts.guard.num_skipped,
                            "train/skipped_steps_disc": parts.guard_disc.num_skipped,
                            "train/steps_per_s": num_logged / elapsed, "train/images_per_s": images_seen / elapsed,
                            "train/epoch": sampler.epoch + sampler.position / sampler.num_samples})
            metrics_logger.log(step, metrics)
            progress.set_postfix(loss=f"{metrics['train/total']:.4f}", rec=f"{metrics['train/rec']:.4f}")
            sums, num_logged, images_seen, tic = {}, 0, 0, time.perf_counter()
        if plan.preview_every and (step % plan.preview_every == 0 or last) and is_main_process():
            save_preview(run_dir / "previews" / f"{step:07d}.png", micro[-1][:PREVIEW_IMAGES], preview)
        if step % t.ckpt_every == 0 or last:
            corrupt_total = int(round(reduce_metrics({"c": corrupt_local})["c"] * world))
            extra = {"optimizer_format": plan.optimizer_format, "guard": parts.guard.state_dict(),
                     "guard_disc": parts.guard_disc.state_dict(), "codebook_stats": parts.tracker.state_dict(),
                     "corrupt_images": corrupt_total,
                     "lecam": [loss.lecam_ema_real.detach().cpu(), loss.lecam_ema_fake.detach().cpu()]}
            save_checkpoint(run_dir, step, parts, config, sampler.state_dict(), extra, plan.optimizer_format == "fqn")
    progress.close()
    metrics_logger.close()
    if start_step >= plan.stop_step:
        logger.info(f"nothing to train: the run already reached step {step:,} (stop at {plan.stop_step:,})")
    logger.info(f"done at step {step:,}; checkpoints in {checkpoint_dir(run_dir)}")
    return step


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args, overrides = parse_args(argv)

    def stage() -> None:
        dist_info = init_distributed(args.device)
        setup_logging()
        config, report = resolve_config(args, overrides)
        if not args.sub_exp_dir:
            raise UserError("pass --sub-exp-dir NAME: the run directory is <--save-path>/<NAME>, and rerunning the "
                             "same command resumes it")
        train(config, Path(args.save_path) / args.sub_exp_dir, dist_info, vq_ckpt=args.vq_ckpt,
              finetune=args.finetune, report=report)

    run_stage(stage)


if __name__ == "__main__":
    main()
