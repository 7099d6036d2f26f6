"""Train a GigaTok tokenizer (official `vq_train.py`, DDP, and `vq_train_fsdp.py`, FSDP).

Run it with torchrun (scripts/train_vq.sh, scripts/train_vq_fsdp.sh) or as a single process
(`gigatok train_vq ...`). The run directory is `<--save-path>/<--sub-exp-dir>/`:
  config.yaml                  the resolved config (YAML < official flags < --section.key=value overrides)
  checkpoints/{step:07d}.pt    self-describing, atomic checkpoints (official entries + EMA, scalers, RNG, data state)
  metrics.jsonl, log.txt       every `log_every` steps: all loss terms, codebook usage, grad norms, lr, throughput
  tensorboard/, wandb/         the same metrics, with --tensorboard / W&B (--wandb-mode, default auto)
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
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from gigatok.builders import build_tokenizer
from gigatok.config import ConfigError, VQConfig, to_dict, to_yaml
from gigatok.config.flags import (
    int_or_none,
    resolve_config,
    split_overrides,
    str_or_none,
)
from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.data.train_images import TrainImageDataset
from gigatok.engine.pretrained import ensure_loss_weights
from gigatok.engine.vq_train import (
    Counters,
    RunPlan,
    StepParts,
    build_step_parts,
    checkpoint_manager,
    iterate_batches,
    save_preview,
    train_step,
)
from gigatok.errors import UserError
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    DistInfo,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.ema import EMA
from gigatok.infra.logging import (
    WANDB_MODES,
    MetricsLogger,
    TrainingDivergedError,
    check_logging_setup,
    reduce_metrics,
    truncate_metrics,
)
from gigatok.infra.optim import DECAY_POLICIES
from gigatok.infra.parallel import (
    DATA_PARALLEL_MODES,
    SHARDED_MODES,
    cnn_channels_last,
    cnn_channels_last_for_training,
    describe_data_parallel,
    grad_reduce_precision,
    set_cnn_memory_format,
)
from gigatok.infra.run_dir import config_changes, run_dir_lock, write_run_config
from gigatok.infra.run_state import (
    CheckpointManager,
    checkpoint_dir,
    divergence_advice,
    find_latest_checkpoint,
    load_training_checkpoint,
    resume_from_step,
)
from gigatok.infra.runtime import build_loader, resolve_precision, seed_everything
from gigatok.infra.schedules import SCHEDULES
from gigatok.tokenizer.losses import TokenizerLoss

logger = logging.getLogger("gigatok")

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
    "wandb_mode": ("trainer.wandb_mode",),
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
                    "tensorboard": ("trainer.tensorboard", True),
                    "no_wandb": ("trainer.wandb_mode", "disabled")}  # after --wandb-mode: --no-wandb wins


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Official `vq_train.py` / `vq_train_fsdp.py` flags (defaults None = "take the config's value"), plus
    `--section.key=value` config overrides, returned separately."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-config", type=str, required=True, help="tokenizer YAML, e.g. configs/vq/VQ_SS256.yaml")
    p.add_argument("--data-path", type=str, default=None, help="ImageFolder (ILSVRC2012_img_train/) or flat folder")
    p.add_argument("--data-face-path", type=str_or_none, default=None, help="official face data: not supported")
    p.add_argument("--save-path", type=str, default="results_tokenizer_image",
                   help="folder of the runs (default: %(default)s)")
    p.add_argument("--sub-exp-dir", type=str, default=None, help="run name; the run dir is <save-path>/<sub-exp-dir>")
    p.add_argument("--vq-ckpt", type=str_or_none, default=None, help="start from this checkpoint (resume its state)")
    p.add_argument("--finetune", action="store_true", help="with --vq-ckpt: take only its weights, start at step 0")
    p.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                   help="resume from this step's checkpoint of the run (e.g. before a divergence; 0: start over); "
                        "newer checkpoints are set aside in checkpoints/abandoned/")
    p.add_argument("--ema", action="store_true", help="keep an EMA of the weights (decay trainer.ema_decay)")
    p.add_argument("--compile", action="store_true", help="torch.compile the tokenizer and discriminator")
    p.add_argument("--dataset", type=str, default=None, help="imagenet (an image folder; the only choice here)")
    p.add_argument("--json-path", type=str_or_none, default=None, help="official json image lists: not supported")
    p.add_argument("--image-size", type=int, default=None, help="default: model.init_args.image_size")
    p.add_argument("--iterations", "--iteration", type=int, default=None, help="total optimizer steps")
    p.add_argument("--global-batch-size", type=int, default=None,
                   help="images per optimizer step over all ranks and accumulation steps")
    p.add_argument("--global-seed", type=int, default=None, help="seed of weights, data order and augmentation")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers per rank (default 16, capped at the CPU cores per rank)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=None,
                   help="micro-batches per optimizer step (default 1)")
    p.add_argument("--mixed-precision", type=str, choices=["none", "fp16", "bf16"], default=None,
                   help="autocast dtype (default bf16; fp16 adds GradScalers)")
    p.add_argument("--warmup", type=int, default=None, help="linear LR warm-up steps")
    p.add_argument("--fract-decay", type=float, default=None,
                   help="wsd schedule: fraction of the iterations spent decaying (default 0.2)")
    p.add_argument("--log-every", type=int, default=None, help="log the metrics every N steps (default 500)")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint every N steps (default 5000)")
    p.add_argument("--milestone-step", type=int, default=None,
                   help="checkpoints at milestone-start + k * N are kept longer (default 50000)")
    p.add_argument("--milestone-start", type=int, default=None, help="first milestone step (default 50000)")
    p.add_argument("--max-milestone-num", type=int, default=None, help="milestone checkpoints kept (default 30)")
    p.add_argument("--early-stop-iter", type=int_or_none, default=None,
                   help="stop (and checkpoint) at this step; the LR schedule still spans --iterations")
    p.add_argument("--wandb-project", type=str, default=None, help="W&B project (default gigatok)")
    p.add_argument("--wandb-mode", type=str, choices=list(WANDB_MODES), default=None,
                   help="W&B logging (default auto: on when wandb is installed and logged in, otherwise off with one "
                        "log line); online/offline stop with an error when wandb is not installed")
    p.add_argument("--no-wandb", action="store_true", help="no W&B logging (same as --wandb-mode disabled)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard scalars to <run dir>/tensorboard (needs tensorboard)")
    p.add_argument("--data-parallel", type=str, choices=["ddp", "fsdp", "none", "sdp", "hsdp"], default=None,
                   help="ddp (scripts/train_vq.sh); FSDP2 modes (scripts/train_vq_fsdp.sh passes fsdp): fsdp full "
                        "sharding, sdp gradients + optimizer state only, hsdp sharded per node and replicated across")
    p.add_argument("--grad-precision", type=str, choices=["fp32", "fp16", "bf16", "none"], default=None,
                   help="FSDP gradient reduce dtype (default: the --mixed-precision dtype)")
    loss = p.add_argument_group("loss flags (override the YAML; the official trainer ignores them)")
    loss.add_argument("--codebook-weight", type=float, default=None,
                      help="codebook loss weight (read but, as official, not applied)")
    loss.add_argument("--entropy-loss-ratio", type=float, default=None, help="weight of the codebook entropy loss")
    loss.add_argument("--commit-loss-beta", type=float, default=None, help="weight of the commitment loss")
    loss.add_argument("--reconstruction-weight", type=float, default=None, help="weight of the pixel loss")
    loss.add_argument("--reconstruction-loss", type=str, default=None, help="pixel loss: l2 or l1")
    loss.add_argument("--perceptual-weight", type=float, default=None, help="weight of the LPIPS loss")
    loss.add_argument("--disc-weight", type=float, default=None, help="weight of the generator's GAN loss")
    loss.add_argument("--disc-start", type=int, default=None, help="step the discriminator and GAN loss start at")
    loss.add_argument("--disc-type", type=str, default=None, help="discriminator: patchgan or dinodisc")
    loss.add_argument("--disc-loss", type=str, default=None,
                      help="discriminator loss: hinge, vanilla or non-saturating")
    loss.add_argument("--gen-loss", type=str, default=None, help="generator GAN loss: hinge or non-saturating")
    loss.add_argument("--aux-loss-end", type=int, default=None,
                      help="step the auxiliary losses (feature reconstruction, shortcut) end at")
    p.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when available (default: %(default)s)")
    args, rest = p.parse_known_args(argv)
    return args, split_overrides(p, rest)


def flag_values(args: argparse.Namespace) -> list[tuple[str, tuple[str, ...], object]]:
    """(flag, config keys, value) of every official flag given on the command line."""
    if args.data_face_path is not None or args.json_path is not None:
        raise UserError("--data-face-path and --json-path (official face data / json image lists) are not supported: "
                        "pass an image folder with --data-path")
    given = [(f"--{dest.replace('_', '-')}", keys, getattr(args, dest)) for dest, keys in FLAG_TO_CONFIG.items()
             if getattr(args, dest) is not None]
    given += [(f"--{dest.replace('_', '-')}", (key,), value) for dest, (key, value) in SWITCH_TO_CONFIG.items()
              if getattr(args, dest)]
    return given


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
    causal = config.model.causal_settings
    if causal.dynamic_length_train and causal.causal_type is None:
        raise UserError("model.causal_settings.dynamic_length_train needs a causal_type (per-level or per-token): "
                        "only a causal encoder can be trained on token prefixes")
    if t.random_mix_reg and t.replace_ratio is None:
        raise UserError("trainer.random_mix_reg is on but trainer.replace_ratio is not set: give the probability "
                        "(e.g. trainer.replace_ratio=0.1)")
    if t.freeze_but_decoder_iter is not None and t.data_parallel not in ("ddp", "none"):
        raise UserError(f"trainer.freeze_but_decoder_iter needs --data-parallel ddp (got {t.data_parallel}): the "
                        "sharded modes cannot change which parameters train in the middle of a run")
    if t.dataset != "imagenet":
        raise UserError(f"--dataset {t.dataset} is not supported: use imagenet (any ImageFolder or flat image folder)")
    accum = t.grad_accum_steps
    if accum < 1 or t.global_batch_size % (world_size * accum):
        raise UserError(f"--global-batch-size {t.global_batch_size} must be a multiple of world size {world_size} x "
                         f"gradient accumulation steps {accum}")
    checks = {"trainer.mixed_precision": (t.mixed_precision, ("none", "fp16", "bf16")),
              "trainer.data_parallel": (t.data_parallel, DATA_PARALLEL_MODES),
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
    if t.ema and data_parallel in SHARDED_MODES:
        raise UserError(f"--ema is not supported with --data-parallel {data_parallel} (sharded weights); use ddp or "
                        "drop --ema")
    check_logging_setup(t.wandb_mode, t.tensorboard)  # on every rank, so that all of them stop
    stop = t.iterations if t.early_stop_iter is None else min(t.early_stop_iter, t.iterations)
    dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[t.mixed_precision]
    policy = t.decay_policy or ("no_norm_bias" if t.data_parallel in SHARDED_MODES else "all")
    preview = t.ckpt_every if t.preview_every is None else t.preview_every
    return RunPlan(world_size, t.global_batch_size // (world_size * accum), accum, t.iterations, stop, dtype,
                   data_parallel, policy, preview)


def log_plan(config: VQConfig, plan: RunPlan, run_dir: Path, device: torch.device, dataset: TrainImageDataset,
             steps_per_epoch: int, num_workers: int, params: tuple[int, int], start: str) -> None:
    """Print every derived quantity of the run (rank 0)."""
    t, p = config.trainer, config.loss.params
    parallel = describe_data_parallel(plan.data_parallel, grad_reduce_precision(t.grad_precision, t.mixed_precision))
    logger.info(f"run dir {run_dir} (resolved config: config.yaml); device {device}, world size {plan.world_size}, "
                f"data parallel {parallel}, precision {t.mixed_precision}"
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


def build_tokenizer_and_loss(config: VQConfig, device: torch.device) -> tuple[nn.Module, TokenizerLoss]:
    """The tokenizer in its training CNN layout, and the loss (discriminator, LPIPS, semantic teacher)."""
    t = config.trainer
    tokenizer = build_tokenizer(config).to(device)
    channels_last = cnn_channels_last_for_training(config.model.init_args.cnn_channels_last, device)
    if channels_last != cnn_channels_last(tokenizer):
        set_cnn_memory_format(tokenizer, channels_last)  # before EMA and the optimizers copy the weights
    if config.model.init_args.cnn_channels_last is None:
        logger.info(f"CNN layout (model.init_args.cnn_channels_last: auto): "
                    f"{'channels-last' if channels_last else 'NCHW'}")
    try:
        ensure_loss_weights(config)  # VGG16, DINOv2, DINO: downloaded into the hub cache if missing
        loss = TokenizerLoss(config.loss.params, t, teacher_grid_size=tokenizer.grid_size,
                             teacher_weights=t.teacher_weights, teacher_random_init=t.teacher_random_init,
                             lpips_random_backbone=t.lpips_random_backbone, dino_disc_weights=t.dino_disc_weights,
                             dino_disc_random_init=t.dino_disc_random_init).to(device)
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"loss settings: {err}") from None
    return tokenizer, loss


def train(config: VQConfig, run_dir: Path, dist_info: DistInfo, *, vq_ckpt: str | None = None,
          finetune: bool = False, resume_from: int | None = None, report: list[str] = ()) -> int:
    """The training stage; returns the last step reached."""
    # -- Setup: the plan, logging, per-rank seeds (official: drawn before the model is built), precision.
    t, device, world = config.trainer, dist_info.device, dist_info.world_size
    plan = plan_run(config, world)
    setup_logging(run_dir)
    for line in report:
        logger.info(line)
    seed_everything(t.global_seed * world + dist_info.rank)
    resolve_precision(t.mixed_precision, device, fp16_on_cpu="keep", deterministic=t.deterministic)

    # -- Models: tokenizer, loss (discriminator, LPIPS, teacher), EMA; data parallelism, optimizers, schedule.
    tokenizer, loss = build_tokenizer_and_loss(config, device)
    ema = EMA(tokenizer, decay=t.ema_decay) if t.ema else None
    params = (sum(p.numel() for p in tokenizer.parameters()), sum(p.numel() for p in loss.discriminator.parameters()))
    parts = build_step_parts(config, plan, tokenizer, loss, ema, device)

    # -- Data: augmented images, a sampler with the same shuffle seed on every rank, one loader per rank.
    dataset = TrainImageDataset(t.data_path, tokenizer.image_size, seed=t.global_seed)
    sampler = ResumableDistributedSampler(dataset, shuffle=True, seed=t.global_seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // plan.micro_batch_size // plan.grad_accum_steps
    if steps_per_epoch < 1:
        raise UserError(f"{len(dataset)} images under '{t.data_path}' do not fill one step of global batch "
                        f"{t.global_batch_size}: add images or lower --global-batch-size")
    loader = build_loader(dataset, plan.micro_batch_size, num_workers=t.num_workers, device=device, sampler=sampler,
                          seed=t.global_seed, drop_last=True)

    # -- Restore: the newest checkpoint of this run, else --vq-ckpt (its whole state, or with --finetune only its
    # weights at step 0), else model.init_ckpt (weights and optimizer states at step 0, official stage 2). Only a
    # resume that loaded cleanly may write the run's config.yaml.
    counters = Counters()
    manager = checkpoint_manager(config, run_dir, parts, sampler, steps_per_epoch, counters)
    if resume_from is not None:
        resume_from_step([run_dir], resume_from)
    latest = find_latest_checkpoint(run_dir, quarantine=True)
    init = config.model.init_ckpt if not (latest or vq_ckpt) else None
    source = latest or (Path(vq_ckpt) if vq_ckpt else Path(init) if init else None)
    resume = source is not None and init is None and (latest is not None or not finetune)
    step = 0
    if source is not None:
        ckpt = load_training_checkpoint(source)
        if resume and ckpt.get("config") and (changes := config_changes(ckpt["config"], to_dict(config))):
            logger.warning(f"the config differs from the checkpoint's ({len(changes)}): {'; '.join(changes[:8])}")
        weights = ("model", "ema", "discriminator")
        optimizers = tuple(name for name in ("optimizer", "optimizer_disc") if init and ckpt.get(name) is not None)
        restored = manager.restore(ckpt, only=None if resume else weights + optimizers, with_rng=resume)
        step = restored if resume else 0
        del ckpt
    write_run_config(run_dir, to_yaml(config), step)
    truncate_metrics(run_dir, step)
    start = (f"resuming from {source} at step {step:,} (epoch {sampler.epoch}, position {sampler.position})"
             if resume else f"starting from model.init_ckpt {source} (weights and optimizer states) at step 0"
             if init else f"fine-tuning the weights of {source} from step 0" if source else "from scratch")
    log_plan(config, plan, run_dir, device, dataset, steps_per_epoch, loader.num_workers, params, start)
    try:
        step = train_loop(config, plan, parts, manager, loader, sampler, dataset, counters, run_dir, step)
    except TrainingDivergedError as err:
        first_bad = min(s for s in (parts.guard.streak_start, parts.guard_disc.streak_start) if s is not None)
        raise TrainingDivergedError(f"{err} {divergence_advice([run_dir], first_bad)}") from None
    logger.info(f"done at step {step:,}; checkpoints in {checkpoint_dir(run_dir)}")
    return step


def train_loop(config: VQConfig, plan: RunPlan, parts: StepParts, manager: CheckpointManager, loader, sampler,
               dataset: TrainImageDataset, counters: Counters, run_dir: Path, step: int) -> int:
    """Steps from `step` to the stop step: log every `log_every`, preview and checkpoint every `ckpt_every`."""
    t, world = config.trainer, plan.world_size
    metrics_logger = MetricsLogger(run_dir, wandb_mode=t.wandb_mode, wandb_project=t.wandb_project,
                                   wandb_name=run_dir.name, config=to_dict(config), use_tensorboard=t.tensorboard)
    parts.model.train()
    parts.loss.train()
    batches = iterate_batches(loader, sampler, dataset)
    progress = tqdm(total=plan.stop_step, initial=step, disable=not is_main_process(), desc="train", unit="step",
                    dynamic_ncols=True)
    sums: dict[str, torch.Tensor] = {}
    num_logged, images_seen, tic, start_step = 0, 0, time.perf_counter(), step
    while step < plan.stop_step:
        micro = []
        for _ in range(plan.grad_accum_steps):
            images, unreadable = next(batches)
            micro.append(images.to(parts.device, non_blocking=True))
            counters.corrupt_local += int(unreadable.sum())
        images_seen += t.global_batch_size
        result = train_step(parts, micro, step, epoch=sampler.epoch)
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
            metrics = reduce_metrics({**metrics, "train/corrupt_images": counters.corrupt_local})
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
            save_preview(run_dir / "previews" / f"{step:07d}.png", micro[-1][:len(preview)], preview)
        if step % t.ckpt_every == 0 or last:
            manager.save(step)
    progress.close()
    metrics_logger.close()
    if start_step >= plan.stop_step:
        logger.info(f"nothing to train: the run already reached step {step:,} (stop at {plan.stop_step:,})")
    return step


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args, overrides = parse_args(argv)

    def stage() -> None:
        dist_info = init_distributed(args.device)
        setup_logging()
        config, report = resolve_config(VQConfig, args.model_config, flag_values(args), overrides)
        if not args.sub_exp_dir:
            raise UserError("pass --sub-exp-dir NAME: the run directory is <--save-path>/<NAME>, and rerunning the "
                            "same command resumes it")
        run_dir = Path(args.save_path) / args.sub_exp_dir
        with run_dir_lock(run_dir):  # one trainer per run folder
            train(config, run_dir, dist_info, vq_ckpt=args.vq_ckpt, finetune=args.finetune,
                  resume_from=args.resume_from, report=report)

    run_stage(stage)


if __name__ == "__main__":
    main()
