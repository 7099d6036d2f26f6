"""Train a class-conditional GPT on tokenizer codes (official `train_c2i.py` / `train_c2i_fsdp.py`).

Each sample is one augmented view of an image's codes: pre-extracted (`--dataset imagenet_code --code-path`, the
fast path and our default; `gigatok.data.codes`), or made in the loop from an ImageFolder tree by the frozen tokenizer
(`--dataset imagenet --data-path --vq-ckpt --tok-config`, the official default; `gigatok.engine.gpt_train`). The GPT
sees [class token, z_1 .. z_{L-1}] and predicts z_1 .. z_L (mean cross-entropy), with class dropout for CFG.
Vocabulary K and length L come from the codes' meta.json (or the tokenizer). Recipe (SPEC §6.3): fused AdamW (0.9,
0.95), weight decay 0.05 on >= 2-D parameters only, clip 1.0, lr 1e-4 with a const / cosine / WSD schedule, bf16
autocast, torch.compile on CUDA, DDP or FSDP2, optional EMA (0.9999).

Settings: the official flags (`--help`), each a field of `gigatok.config.GPTTrainConfig`; `--config FILE` reads a
config.yaml (e.g. an earlier run's) under them, and `--section.key=value` overrides any field.

Run directory `{save_path}/{sub_exp_dir}/`: config.yaml (the resolved config, with the GPT's K, L and classes
filled in), log.txt, metrics.jsonl (train/loss, lr, grad_norm, tokens_per_s, skipped_steps, ...),
checkpoints/{step:07d}.pt, and the same metrics in tensorboard/ (--tensorboard) and W&B (--wandb-mode, default auto:
on when wandb is installed and logged in). With `--lr-scheduler wsd` the decay phase (steps after the hold) goes to
`cd_records/cd_fract_{f}_to_{iterations}/` (official layout), so cool-downs of different lengths branch from the same
stable-phase checkpoints; a checkpoint is always written at the hold. A rerun of the same command resumes from the
newest checkpoint with the exact data position and RNG states (the official loop re-reads the epoch from its start).

Run it with torchrun (scripts/train_c2i.sh, scripts/train_c2i_fsdp.sh) or as one process.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gigatok.builders import check_gpt_flags, gpt_config_from
from gigatok.config import GPTTrainConfig, to_dict, to_yaml
from gigatok.config.flags import (
    add_config_flags,
    given_flags,
    resolve_config,
    split_overrides,
)
from gigatok.data.codes import check_meta, fast_file_hash
from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.engine.gpt_train import (
    GPTData,
    build_gpt_data,
    check_data_config,
    resolve_sizes,
    train_step,
)
from gigatok.errors import UserError
from gigatok.gpt.model import GPT
from gigatok.infra import states as st
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import DistInfo, init_distributed, setup_logging
from gigatok.infra.ema import EMA
from gigatok.infra.logging import (
    MetricsLogger,
    NonFiniteGuard,
    TrainingDivergedError,
    check_logging_setup,
    reduce_metrics,
    resolve_wandb_mode,
    truncate_metrics,
)
from gigatok.infra.optim import build_adamw
from gigatok.infra.parallel import (
    SHARDED_MODES,
    describe_data_parallel,
    grad_reduce_precision,
    optimizer_format,
    parallelize,
    params_finite,
)
from gigatok.infra.run_dir import run_dir_lock, write_run_config
from gigatok.infra.run_state import (
    CheckpointManager,
    Retention,
    divergence_advice,
    find_latest_checkpoint,
    resume_from_step,
)
from gigatok.infra.runtime import build_loader, resolve_precision, seed_everything
from gigatok.infra.schedules import build_lr_schedule, set_lr

logger = logging.getLogger("gigatok")

SCHEDULE_NAMES = {"const": "constant", "cosine": "cosine_v2", "wsd": "wsd"}  # official name -> ours
SECTIONS = ("model", "tokenizer", "data", "trainer")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    """The official flags (one per config field, default "take the config's"), the run folder, `--config` and
    `--section.key=value` overrides. Returns (args, flag table, overrides)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=str, default=None, help="a GPT training config.yaml to start from")
    parser.add_argument("--save-path", type=str, default="results/gpt",
                        help="folder of the runs (default: %(default)s)")
    parser.add_argument("--sub-exp-dir", type=str, required=True, help="run folder name under --save-path")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (default: %(default)s)")
    parser.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                        help="resume from this step's checkpoint of the run (e.g. before a divergence; 0: start over); "
                             "newer checkpoints are set aside in checkpoints/abandoned/")
    table: dict[str, str] = {}
    for section in SECTIONS:
        table.update(add_config_flags(parser.add_argument_group(f"{section} (config section '{section}')"),
                                      GPTTrainConfig, section))
    args, rest = parser.parse_known_args(argv)
    return args, table, split_overrides(parser, rest)


def check_config(config: GPTTrainConfig) -> None:
    """Settings we cannot honour, refused before any work."""
    check_gpt_flags(config.model)
    check_data_config(config)
    check_logging_setup(wandb_mode(config), config.trainer.tensorboard)
    if config.trainer.ema and config.trainer.data_parallel in SHARDED_MODES:
        raise UserError(f"--ema is not supported with --data-parallel {config.trainer.data_parallel} (sharded "
                        "weights; the official FSDP trainer never updates its EMA); drop --ema or use ddp.")


def wandb_mode(config: GPTTrainConfig) -> str:
    """The W&B mode asked for: --no-wandb wins over --wandb-mode."""
    return config.trainer.wandb_mode if config.trainer.wandb else "disabled"


@dataclasses.dataclass
class LoopState:
    """Loop counters that live in the checkpoint: the running sums of the current logging interval."""

    log_sums: dict[str, float] = dataclasses.field(default_factory=lambda: {"loss": 0.0, "grad_norm": 0.0,
                                                                             "steps": 0})


@dataclasses.dataclass
class GPTParts:
    """Everything one optimizer step touches."""

    model: torch.nn.Module  # the (wrapped) GPT
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    guard: NonFiniteGuard
    loop: LoopState
    lr_at: Callable[[int], float]
    amp_dtype: torch.dtype | None
    device: torch.device


@dataclasses.dataclass(frozen=True)
class Phases:
    """Where the steps of the run are logged and saved: the run folder, and with WSD the cool-down folder for the
    steps after the hold."""

    run_dir: Path
    cd_dir: Path | None
    hold: int | None
    stop_step: int

    def folder(self, step: int) -> Path:
        return self.cd_dir if self.hold is not None and step > self.hold else self.run_dir


def unhealthy(model: torch.nn.Module, guard: NonFiniteGuard) -> str | None:
    """Why the current weights must not become a checkpoint (None: they may). COLLECTIVE."""
    if guard.consecutive:
        return (f"the last {guard.consecutive} step(s) had a non-finite loss and were skipped; the weights may be "
                "diverging")
    if not params_finite(model):
        return "the weights hold NaN/inf"
    return None


def describe_run(config: GPTTrainConfig, derived: dict, data: GPTData, num_params: int,
                 device: torch.device, run_dir: Path) -> None:
    """Print every derived quantity of the run at startup."""
    t, m, d = config.trainer, config.model, derived
    logger.info(f"world size {d['world_size']}, device {device}, {d['data_parallel']}, precision {d['precision']}, "
                f"compile {d['compile']}; run dir '{run_dir}' (resolved config: config.yaml)")
    logger.info(f"{data.description}; K={m.vocab_size}, L={m.block_size}, {m.num_classes} classes")
    logger.info(f"{m.gpt_model} ({d['pos_type']}): {num_params:,} parameters; dropout resid/ffn {m.dropout_p}, token "
                f"{m.token_dropout_p}, class {m.class_dropout_p}, drop-path {m.drop_path_rate}")
    logger.info(f"global batch {t.global_batch_size} = {d['world_size']} rank(s) x {d['micro_batch_size']} x "
                f"{t.gradient_accumulation_steps} accumulation step(s); {d['steps_per_epoch']} steps/epoch, "
                f"{t.iterations} iterations = {t.iterations / d['steps_per_epoch']:.1f} epochs; "
                f"{t.global_batch_size * m.block_size:,} tokens/step")
    decay = f", decay from step {d['hold']} to 0" if d["hold"] is not None else ""
    logger.info(f"lr {t.lr:g} {SCHEDULE_NAMES[t.lr_scheduler]} (warmup {t.warmup}{decay}), weight decay "
                f"{t.weight_decay} on >=2-D params, betas ({t.beta1}, {t.beta2}), clip {t.max_grad_norm}, EMA {t.ema}")


def train(config: GPTTrainConfig, run_dir: Path, dist_info: DistInfo, report: list[str] = (),
          resume_from: int | None = None) -> Path:
    """The AR training stage; returns the run directory."""
    t = config.trainer
    stop_step = min(t.iterations, t.early_stop_iter or t.iterations)

    # -- Setup: logging, precision.
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    setup_logging(run_dir)
    for line in report:
        logger.info(line)
    amp_dtype, precision = resolve_precision(t.mixed_precision, device)
    use_compile = t.compile if t.compile is not None else device.type == "cuda"
    if device.type == "cpu" and t.compile is None:
        logger.info("note: torch.compile is off on CPU by default (pass --compile to force it)")

    # -- Data: one random view per sample and epoch (codes, or images the frozen tokenizer encodes in the loop); the
    # sampler resumes mid-epoch. The codes (or the tokenizer) size the GPT.
    data = build_gpt_data(config, device)
    dataset = data.dataset
    vocab_size, block_size, num_classes = resolve_sizes(config, data.meta)
    check_meta(data.meta, vocab_size, block_size)
    config.model = dataclasses.replace(config.model, gpt_model=config.model.gpt_model or "GPT-B",
                                       vocab_size=vocab_size, block_size=block_size,
                                       num_classes=num_classes)  # saved resolved
    warn_if_other_tokenizer(config, data.meta)
    accum = t.gradient_accumulation_steps
    micro_batch_size = t.global_batch_size // (world_size * accum)
    if micro_batch_size * world_size * accum != t.global_batch_size:
        raise UserError(f"--global-batch-size {t.global_batch_size} is not divisible by world size {world_size} "
                        f"x --gradient-accumulation-steps {accum}.")
    sampler = ResumableDistributedSampler(dataset, shuffle=True, seed=t.global_seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // (micro_batch_size * accum)
    if steps_per_epoch == 0:
        raise UserError(f"{len(dataset)} samples are fewer than one global batch of {t.global_batch_size}.")
    loader = build_loader(dataset, micro_batch_size, num_workers=config.data.num_workers, device=device,
                          sampler=sampler, seed=t.global_seed, drop_last=True)

    # -- Model (same init on every rank: FSDP shards each rank's copy), per-rank seeds (dropout streams differ per
    # rank, as official), data parallelism, optimizer, EMA, schedule.
    gpt_config = gpt_config_from(config.model, vocab_size=vocab_size, block_size=block_size, num_classes=num_classes)
    torch.manual_seed(t.global_seed)
    with torch.device(device):
        gpt = GPT(gpt_config)
    seed_everything(t.global_seed * world_size + rank)
    reduce_dtype = grad_reduce_precision(t.grad_precision, precision)  # FSDP modes only (official default)
    model = parallelize(gpt, t.data_parallel, device=device, param_dtype="bf16" if precision == "bf16" else "none",
                        reduce_dtype=reduce_dtype, compile_model=use_compile, activation_checkpointing=t.grad_ckpt)
    optimizer = build_adamw(model, t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                            decay_policy="matrices_only")
    ema = EMA(gpt, decay=t.ema_decay) if t.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    schedule = SCHEDULE_NAMES[t.lr_scheduler]
    try:
        lr_at = build_lr_schedule(schedule, t.lr, warmup=t.warmup, total_steps=t.iterations,
                                  end_lr=t.end_lr if schedule == "cosine_v2" else 0.0, fract_decay=t.fract_decay)
    except ValueError as err:
        raise UserError(f"--lr-scheduler {t.lr_scheduler}: {err}") from None
    hold = t.iterations - int(t.fract_decay * t.iterations) if schedule == "wsd" else None
    cd_dir = run_dir / "cd_records" / f"cd_fract_{t.fract_decay}_to_{t.iterations}" if hold is not None else None

    # -- Restore the newest checkpoint (for WSD: the cool-down folder first, then stable-phase ones <= hold); only a
    # clean restore may (re)write the run's config.yaml.
    guard, loop = NonFiniteGuard(), LoopState()
    entries = {"model": st.ModelState(model), "ema": st.EMAState(ema, model) if ema else None,
              "optimizer": st.OptimizerState(optimizer, model), "scaler": st.ScalerState(scaler),
              "data_state": st.SamplerState(sampler, steps_per_epoch),
              "extra.gpt_config": st.ConstState(dataclasses.asdict(gpt_config)),
              "extra.optimizer_format": st.ConstState(optimizer_format(model)),
              "extra.data_parallel": st.ConstState(t.data_parallel), "extra.guard": st.ObjectState(guard),
              "extra.log_sums": st.ValueState(lambda: dict(loop.log_sums), lambda value: setattr(loop, "log_sums",
                                                                                              dict(value)))}
    manager = CheckpointManager(run_dir, {k: v for k, v in entries.items() if v is not None}, to_dict(config),
                                Retention(t.keep_last, t.milestone_step, t.milestone_start, t.max_milestone_num),
                                health=lambda: unhealthy(model, guard))
    folders = [run_dir, *([cd_dir] if cd_dir is not None else [])]
    if resume_from is not None:
        resume_from_step(folders, resume_from)
    resume_path = (find_latest_checkpoint(cd_dir, quarantine=True) if cd_dir is not None else None) or \
        find_latest_checkpoint(run_dir, max_step=hold, quarantine=True)
    step = manager.restore(resume_path) if resume_path is not None else 0
    write_run_config(run_dir, to_yaml(config), step)
    for folder in (run_dir, cd_dir):
        if folder is not None:
            truncate_metrics(folder, step)
    derived = {"world_size": world_size, "micro_batch_size": micro_batch_size, "steps_per_epoch": steps_per_epoch,
               "precision": precision, "compile": use_compile, "hold": hold, "pos_type": gpt_config.pos_type,
               "data_parallel": describe_data_parallel(t.data_parallel, reduce_dtype)}
    describe_run(config, derived, data, sum(p.numel() for p in gpt.parameters()), device, run_dir)
    logger.info(f"{f'resuming from {resume_path} at step {step}' if resume_path else 'starting fresh'}; "
                f"training to step {stop_step}")

    # -- Train.
    parts = GPTParts(model, optimizer, scaler, ema, guard, loop, lr_at, amp_dtype, device)
    phases = Phases(run_dir, cd_dir, hold, stop_step)
    try:
        step = train_loop(config, parts, manager, loader, sampler, data, phases, step)
    except TrainingDivergedError as err:
        raise TrainingDivergedError(f"{err} {divergence_advice(folders, guard.streak_start)}") from None
    logger.info(f"done at step {step}")
    return run_dir


def train_loop(config: GPTTrainConfig, parts: GPTParts, manager: CheckpointManager, loader: DataLoader,
               sampler: ResumableDistributedSampler, data: GPTData, phases: Phases, step: int) -> int:
    """Steps from `step` to the stop step: log every `log_every`, checkpoint every `ckpt_every` (and at the hold and
    the end); returns the last step."""
    t, p, m = config.trainer, parts, config.model
    accum, micro_batch_size = t.gradient_accumulation_steps, loader.batch_size
    # Resolved once (one "W&B is off" note): the cool-down folder gets a logger of its own.
    wandb = "disabled" if resolve_wandb_mode(wandb_mode(config)) == "disabled" else wandb_mode(config)
    loggers: dict[Path, MetricsLogger] = {}
    p.model.train()
    data_iter, steps_left = None, 0
    timer, timed_steps = time.perf_counter(), 0
    while step < phases.stop_step:
        if data_iter is None:
            data.dataset.set_epoch(sampler.epoch)
            data_iter = iter(loader)
            steps_left = (sampler.num_samples - sampler.position) // (micro_batch_size * accum)
        batches = []
        for _ in range(accum):
            codes, labels = data.to_codes(next(data_iter), m.vocab_size, p.device)  # (B, L), (B,) int64 on device
            batches.append((codes, labels))
            sampler.advance(len(labels))
        set_lr(p.optimizer, p.lr_at(step))
        loss, grad_norm, skipped = train_step(p.model, batches, p.optimizer, p.scaler, p.amp_dtype, t.max_grad_norm,
                                              p.guard, step)
        if p.ema is not None and not skipped:
            p.ema.update(p.model)
        step += 1
        steps_left -= 1
        if steps_left == 0:  # epoch done: move the sampler on now, so a checkpoint here resumes in the next one
            sampler.set_epoch(sampler.epoch + 1)
            data_iter = None
        if not skipped:
            sums = p.loop.log_sums
            p.loop.log_sums = {"loss": sums["loss"] + float(loss), "grad_norm": sums["grad_norm"] + float(grad_norm),
                               "steps": sums["steps"] + 1}
        timed_steps += 1
        log_dir = phases.folder(step)

        if step % t.log_every == 0 or step == phases.stop_step:
            elapsed = time.perf_counter() - timer
            n = max(p.loop.log_sums["steps"], 1)
            metrics = reduce_metrics({"train/loss": p.loop.log_sums["loss"] / n,
                                      "train/grad_norm": p.loop.log_sums["grad_norm"] / n})
            metrics.update({"train/lr": p.optimizer.param_groups[0]["lr"], "train/epoch": sampler.epoch,
                            "train/steps_per_s": timed_steps / elapsed,
                            "train/tokens_per_s": timed_steps * t.global_batch_size * m.block_size / elapsed,
                            "train/skipped_steps": p.guard.num_skipped})
            metrics.update(data.metrics())  # images: train/corrupt_images
            if log_dir not in loggers:
                loggers[log_dir] = MetricsLogger(log_dir, wandb_mode=wandb, wandb_project=t.wandb_project
                                                 or "gigatok", wandb_name=phases.run_dir.name, config=to_dict(config),
                                                 use_tensorboard=t.tensorboard)
            loggers[log_dir].log(step, metrics)
            p.loop.log_sums = {"loss": 0.0, "grad_norm": 0.0, "steps": 0}
            timer, timed_steps = time.perf_counter(), 0

        if step % t.ckpt_every == 0 or step == phases.stop_step or step == phases.hold:
            manager.save(step, log_dir)
    for metrics_logger in loggers.values():
        metrics_logger.close()
    return step


def warn_if_other_tokenizer(config: GPTTrainConfig, meta: dict) -> None:
    """A --vq-ckpt (--fsq-ckpt) that is not the checkpoint the codes were extracted with: samples must be decoded with
    the latter."""
    tok = config.tokenizer
    flag, vq_ckpt = ("--fsq-ckpt", tok.fsq_ckpt) if tok.quant_way == "fsq" else ("--vq-ckpt", tok.vq_ckpt)
    tok_hash = (meta.get("tokenizer") or {}).get("checkpoint_hash")
    if vq_ckpt and tok_hash and os.path.isfile(vq_ckpt) and fast_file_hash(vq_ckpt) != tok_hash:
        logger.warning(f"{flag} '{vq_ckpt}' is not the checkpoint the codes were extracted with "
                       f"({meta['tokenizer']['checkpoint']}); samples must be decoded with the latter")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args, table, overrides = parse_args(argv)

    def stage() -> None:
        config, report = resolve_config(GPTTrainConfig, args.config, given_flags(args, table), overrides)
        check_config(config)
        dist_info = init_distributed(args.device)
        run_dir = Path(args.save_path) / args.sub_exp_dir
        with run_dir_lock(run_dir):  # one trainer per run folder
            train(config, run_dir, dist_info, report, args.resume_from)

    run_stage(stage)


if __name__ == "__main__":
    main()
