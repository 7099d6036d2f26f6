"""Train a class-conditional GPT on pre-extracted codes (official `train_c2i.py` / `train_c2i_fsdp.py`).

Each sample is one augmented view of an image's codes (`gigatok.data.codes`); the GPT sees
[class token, z_1 .. z_{L-1}] and predicts z_1 .. z_L (mean cross-entropy), with class dropout for CFG.
Vocabulary K and length L come from the codes' meta.json. Recipe (SPEC §6.3): fused AdamW (0.9, 0.95), weight
decay 0.05 on >= 2-D parameters only, clip 1.0, lr 1e-4 with a const / cosine / WSD schedule, bf16 autocast,
torch.compile on CUDA, DDP or FSDP2, optional EMA (0.9999).

Run directory `{save_path}/{sub_exp_dir}/`: config.json, log.txt, metrics.jsonl (train/loss, lr, grad_norm,
tokens_per_s, skipped_steps, ...), checkpoints/{step:07d}.pt. With `--lr-scheduler wsd` the decay phase
(steps after the hold) goes to `cd_records/cd_fract_{f}_to_{iterations}/` (official layout), so cool-downs of
different lengths branch from the same stable-phase checkpoints; a checkpoint is always written at the hold.
A rerun of the same command resumes from the newest checkpoint with the exact data position and RNG states
(the official loop re-reads the epoch from its start).

Run it with torchrun (scripts/train_c2i.sh, scripts/train_c2i_fsdp.sh) or as one process.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from gigatok.builders import build_gpt_config
from gigatok.config import load_config
from gigatok.data.codes import CodeDataset, CodesError, check_meta, fast_file_hash
from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.errors import UserError
from gigatok.gpt.config import GPTConfig
from gigatok.gpt.model import GPT, GPT_MODELS
from gigatok.infra.checkpoint import CheckpointError
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    cpu_bf16_warning,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.ema import EMA
from gigatok.infra.logging import MetricsLogger, NonFiniteGuard, reduce_metrics
from gigatok.infra.optim import build_adamw
from gigatok.infra.parallel import parallelize, unwrap
from gigatok.infra.run_state import (
    checkpoint_dir,
    list_checkpoints,
    load_training_checkpoint,
    prune_checkpoints,
    restore_rng,
    restore_training_state,
    save_training_checkpoint,
)
from gigatok.infra.schedules import build_lr_schedule, set_lr

SCHEDULE_NAMES = {"const": "constant", "cosine": "cosine_v2", "wsd": "wsd"}  # official name -> ours
EMA_DECAY = 0.9999




def _optional_int(text: str) -> int | None:
    return None if text in ("None", "none", "") else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Official flags of train_c2i.py (same names and defaults unless noted).
    parser.add_argument("--code-path", type=str, required=True, help="codes from gigatok.stages.extract_codes (or official)")
    parser.add_argument("--data-path", type=str, default=None, help="accepted and recorded (codes are required)")
    parser.add_argument("--gpt-model", type=str, choices=list(GPT_MODELS), default="GPT-B")
    parser.add_argument("--gpt-2d", action="store_true", help="LlamaGen GPT with 2D RoPE (2D tokenizers)")
    parser.add_argument("--gpt-type", type=str, choices=["c2i", "t2i"], default="c2i")
    parser.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing of the blocks")
    parser.add_argument("--ema", action="store_true", help=f"keep an EMA of the weights (decay {EMA_DECAY})")
    parser.add_argument("--cls-token-num", type=int, default=1)
    parser.add_argument("--dropout-p", type=float, default=0.1, help="residual and FFN dropout")
    parser.add_argument("--token-dropout-p", type=float, default=0.1, help="dropout on the input embeddings")
    parser.add_argument("--drop-path-rate", type=float, default=0.0)
    parser.add_argument("--no-compile", action="store_true", help="do not torch.compile the model")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default: on CUDA only)")
    parser.add_argument("--save-path", type=str, default="results/gpt")
    parser.add_argument("--sub-exp-dir", type=str, required=True, help="run folder name under --save-path")
    parser.add_argument("--dataset", type=str, choices=["imagenet_code", "imagenet"], default="imagenet_code")
    parser.add_argument("--image-size", type=int, default=None, help="checked against meta.json if given")
    parser.add_argument("--downsample-size", type=int, default=None, help="--gpt-2d: checked against meta.json")
    parser.add_argument("--num-classes", type=int, default=None, help="default: meta.json's (else 1000)")
    parser.add_argument("--iterations", type=int, default=1_500_000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=5e-2)
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--beta2", type=float, default=0.95)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    parser.add_argument("--global-batch-size", type=int, default=256)
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=24)
    parser.add_argument("--log-every", type=int, default=200)
    parser.add_argument("--ckpt-every", type=int, default=5000)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--mixed-precision", type=str, choices=["none", "fp16", "bf16"], default="bf16")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--lr-scheduler", type=str, choices=list(SCHEDULE_NAMES), default="const")
    parser.add_argument("--end-lr", type=float, default=1e-5, help="cosine only (WSD decays to 0, as official)")
    parser.add_argument("--fract-decay", type=float, default=0.2, help="WSD: fraction of iterations decaying")
    parser.add_argument("--milestone-step", type=int, default=50000)
    parser.add_argument("--milestone-start", type=int, default=50000)
    parser.add_argument("--max-milestone-num", type=int, default=40)
    parser.add_argument("--wandb-project", type=str, default=None, help="log to W&B (needs wandb) unless --no-wandb")
    parser.add_argument("--no-wandb", action="store_true")
    parser.add_argument("--quant-way", type=str, choices=["vq", "fsq"], default="vq")
    parser.add_argument("--vq-ckpt", type=str, default=None, help="recorded; checked against meta.json's hash")
    parser.add_argument("--tok-config", type=str, default=None, help="recorded; checked against meta.json")
    parser.add_argument("--fsq-model", type=str, default=None)
    parser.add_argument("--fsq-ckpt", type=str, default=None)
    parser.add_argument("--codebook-size-fsq", type=str, default=None)
    parser.add_argument("--early-stop-iter", type=_optional_int, default=None, help="stop (and save) at this step")
    parser.add_argument("--rope", action="store_true", help="1D RoPE instead of learned positions")
    parser.add_argument("--adaLN", action="store_true", help="not supported (never released)")
    parser.add_argument("--qk-norm", action="store_true")
    parser.add_argument("--simple-adaLN", action="store_true", help="not supported (never released)")
    parser.add_argument("--data-parallel", type=str, choices=["ddp", "fsdp"], default="ddp")
    # LlamaGen / ours.
    parser.add_argument("--vocab-size", type=int, default=None, help="checked against meta.json if given")
    parser.add_argument("--class-dropout-p", type=float, default=0.1, help="label dropout for CFG (official 0.1)")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto")
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    """Reject unsupported or inconsistent flags before any work."""
    if args.dataset != "imagenet_code":
        raise UserError("--dataset imagenet (tokenizing images on the fly) is not supported: extract codes first "
                         "(scripts/extract_code_c2i.sh) and train with --dataset imagenet_code --code-path <codes>.")
    if args.gpt_type != "c2i" or args.quant_way != "vq":
        raise UserError("only class-conditional GPTs (--gpt-type c2i) on VQ codes (--quant-way vq) are supported.")
    if args.adaLN or args.simple_adaLN:
        raise UserError("--adaLN / --simple-adaLN are not supported: no released GPT uses adaptive LayerNorm.")
    if args.rope and args.gpt_2d:
        raise UserError("--rope (1D RoPE) and --gpt-2d (LlamaGen 2D RoPE) exclude each other; pass one.")
    if args.compile and args.no_compile:
        raise UserError("--compile and --no-compile exclude each other.")
    if args.ema and args.data_parallel == "fsdp":
        raise UserError("--ema is not supported with --data-parallel fsdp (the official FSDP trainer ignores it "
                         "too); drop --ema or use ddp.")
    for name in ("iterations", "global_batch_size", "log_every", "ckpt_every", "gradient_accumulation_steps"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto.")


def tokens_of_tok_config(path: str) -> tuple[int, int]:
    """(codebook_size, codes per image) of a tokenizer YAML, without building the model."""
    config = load_config(path)
    args = config.model.init_args
    if config.model.model_cls == "VQVitModelPlus":
        return args.codebook_size, args.num_latent_tokens
    grid = args.image_size // 2 ** (len(args.encoder_ch_mult) - 1)
    return args.codebook_size, grid * grid


def resolve_sizes(args: argparse.Namespace, meta: dict[str, Any], logger: Any) -> tuple[int, int, int]:
    """(vocab_size, block_size, num_classes) from meta.json; explicit flags must agree with it."""
    block_size = int(meta["num_tokens"])
    vocab_size = meta.get("codebook_size")
    if args.tok_config is not None:
        tok_vocab, tok_tokens = tokens_of_tok_config(args.tok_config)
        check_meta(meta, tok_vocab, tok_tokens)
        vocab_size = vocab_size or tok_vocab
    if args.vocab_size is not None:
        check_meta(meta, args.vocab_size, None)
        vocab_size = vocab_size or args.vocab_size
    if vocab_size is None:
        vocab_size = 16384
        logger.warning("the official code layout has no codebook size: assuming 16384 (pass --tok-config or "
                       "--vocab-size to set it)")
    if args.image_size is not None and meta.get("image_size") not in (None, args.image_size):
        raise CodesError(f"--image-size {args.image_size} differs from the codes' image_size {meta['image_size']} "
                         f"('{meta['code_path']}'); drop the flag or use codes extracted at {args.image_size} px.")
    if args.gpt_2d and args.downsample_size is not None:
        size = args.image_size or meta.get("image_size")
        if size is not None:
            check_meta(meta, None, (size // args.downsample_size) ** 2)
    labels_classes = meta.get("num_classes")
    num_classes = args.num_classes or labels_classes or 1000
    if labels_classes is not None and num_classes < labels_classes:
        raise CodesError(f"--num-classes {num_classes} is smaller than the {labels_classes} classes of the codes.")
    return int(vocab_size), block_size, num_classes


def find_resume_checkpoint(dirs: list[tuple[Path, int | None]]) -> Path | None:
    """Newest readable checkpoint, searching `(run_dir, max_step)` pairs in order (max_step None: any)."""
    for run_dir, max_step in dirs:
        for step, path in reversed(list_checkpoints(checkpoint_dir(run_dir))):
            if max_step is not None and step > max_step:
                continue
            try:
                load_training_checkpoint(path)
            except CheckpointError as err:
                logging.getLogger("gigatok").warning(f"skipping unreadable checkpoint {path} ({err})")
                continue
            return path
    return None


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics.jsonl lines past `step` (written after the checkpoint a run resumes from)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except json.JSONDecodeError:  # empty, or cut off by a kill in the middle of a write
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def grad_sync(model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on accumulation micro-steps (DDP `no_sync`, FSDP2 gradient sync flag)."""
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else inner.no_sync()
    if hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def train_step(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
               max_grad_norm: float, guard: NonFiniteGuard, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimizer step over `batches` (gradient-accumulation micro-batches of (codes (B, L), labels (B,))).

    Returns:
        mean loss over the micro-batches, gradient norm before clipping, whether the update was skipped.
    """
    device = batches[0][0].device
    loss_sum = torch.zeros((), device=device)
    for i, (codes, labels) in enumerate(batches):
        with grad_sync(model, enabled=i == len(batches) - 1):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                _, loss = model(codes[:, :-1], labels, targets=codes)  # logits (B, L, K) against all L codes
            loss_sum += loss.detach()
            scaler.scale(loss / len(batches)).backward()
    scaler.unscale_(optimizer)  # no-op unless fp16
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: DTensor
    loss_mean = loss_sum / len(batches)
    # fp16: the scaler itself skips steps with inf gradients, so only the loss decides here.
    watched = loss_mean if scaler.is_enabled() else torch.stack([loss_mean, grad_norm.float()])
    skipped = guard.check(watched, step)
    if not skipped:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_mean, grad_norm, skipped


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """FSDP2: the full (unsharded, CPU) model and optimizer state dicts; collective, filled on rank 0."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(unwrap(model), options=options),
            get_optimizer_state_dict(unwrap(model), optimizer, options=options))


def restore_fsdp(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict[str, Any]) -> int:
    """Load a full checkpoint into an FSDP2-sharded model and its optimizer; returns the step."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(unwrap(model), ckpt["model"], options=options)
    if "optimizer" in ckpt:
        set_optimizer_state_dict(unwrap(model), optimizer, ckpt["optimizer"], options=options)
    return int(ckpt["step"])


def make_gpt_config(args: argparse.Namespace, vocab_size: int, block_size: int, num_classes: int) -> GPTConfig:
    """The GPT of `--gpt-model` with the flags' position type and regularisation, sized for the codes."""
    pos_type = "rope_2d" if args.gpt_2d else "rope_1d" if args.rope else "learned_1d"
    try:
        return build_gpt_config(
            args.gpt_model, pos_type=pos_type, vocab_size=vocab_size, block_size=block_size, num_classes=num_classes,
            cls_token_num=args.cls_token_num, class_dropout_prob=args.class_dropout_p,
            token_dropout_p=args.token_dropout_p, resid_dropout_p=args.dropout_p, ffn_dropout_p=args.dropout_p,
            drop_path_rate=args.drop_path_rate, use_qk_norm=args.qk_norm)
    except ValueError as err:
        raise UserError(f"cannot build {args.gpt_model}: {err}") from None


def resume(path: Path, data_parallel: str, model: torch.nn.Module, ema: EMA | None,
           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, sampler: ResumableDistributedSampler,
           guard: NonFiniteGuard, steps_per_epoch: int) -> tuple[int, dict[str, float]]:
    """Restore weights, optimizer, EMA, RNG, data position and loop state from `path`; returns (step, log sums)."""
    ckpt = load_training_checkpoint(path)
    if data_parallel == "fsdp":
        step = restore_fsdp(model, optimizer, ckpt)
    else:
        step = restore_training_state(ckpt, model=model, ema=ema, optimizer=optimizer, scaler=scaler)
    restore_rng(ckpt)
    if ckpt.get("data_state"):
        sampler.load_state_dict(ckpt["data_state"])
    else:  # official file: restart the epoch the step falls in, as the official loop does
        sampler.set_epoch(step // steps_per_epoch)
    extra = ckpt.get("extra") or {}
    guard.load_state_dict(extra.get("guard", {}))
    return step, dict(extra.get("log_sums", {"loss": 0.0, "grad_norm": 0.0, "steps": 0}))


def save_run_checkpoint(run_dir: Path, step: int, args: argparse.Namespace, model: torch.nn.Module,
                        ema: EMA | None, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                        sampler: ResumableDistributedSampler, config: dict[str, Any], extra: dict[str, Any]) -> None:
    """`{run_dir}/checkpoints/{step:07d}.pt` (collective), then the official retention policy."""
    model_state, optim_state = (full_state_dicts(model, optimizer) if args.data_parallel == "fsdp"
                                else (model, optimizer))
    save_training_checkpoint(run_dir, step, model=model_state, ema=ema, optimizer=optim_state, scaler=scaler,
                             data_state=sampler.state_dict(), config_dict=config, extra=extra)
    prune_checkpoints(checkpoint_dir(run_dir), keep_last=10, milestone_every=args.milestone_step,
                      milestone_start=args.milestone_start, max_milestones=args.max_milestone_num)


def describe_run(logger: Any, args: argparse.Namespace, derived: dict[str, Any], dataset: CodeDataset,
                 num_params: int, device: torch.device, run_dir: Path) -> None:
    """Print every derived quantity of the run at startup."""
    d = derived
    logger.info(f"world size {d['world_size']}, device {device}, {args.data_parallel}, precision {d['precision']}, "
                f"compile {d['compile']}; run dir '{run_dir}'")
    logger.info(f"codes '{args.code_path}': {len(dataset)} images x {dataset.sources[0].num_aug} views "
                f"({len(dataset.sources)} source(s)), K={d['vocab_size']}, L={d['block_size']}, "
                f"{d['num_classes']} classes")
    logger.info(f"{args.gpt_model} ({d['gpt_config']['pos_type']}): {num_params:,} parameters; dropout resid/ffn "
                f"{args.dropout_p}, token {args.token_dropout_p}, class {args.class_dropout_p}, "
                f"drop-path {args.drop_path_rate}")
    logger.info(f"global batch {args.global_batch_size} = {d['world_size']} rank(s) x {d['micro_batch_size']} x "
                f"{d['grad_accum_steps']} accumulation step(s); {d['steps_per_epoch']} steps/epoch, "
                f"{args.iterations} iterations = {args.iterations / d['steps_per_epoch']:.1f} epochs; "
                f"{args.global_batch_size * d['block_size']:,} tokens/step")
    decay = f", decay from step {d['hold_steps']} to 0" if d["hold_steps"] is not None else ""
    logger.info(f"lr {args.lr:g} {SCHEDULE_NAMES[args.lr_scheduler]} (warmup {args.warmup}{decay}), weight decay "
                f"{args.weight_decay} on >=2-D params, betas ({args.beta1}, {args.beta2}), clip "
                f"{args.max_grad_norm}, EMA {args.ema}")


def train(args: argparse.Namespace) -> Path:
    """The AR training stage; returns the run directory."""
    check_flags(args)
    run_dir = Path(args.save_path) / args.sub_exp_dir
    stop_step = min(args.iterations, args.early_stop_iter or args.iterations)

    # Setup distributed, logging, seeds and precision.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    logger = setup_logging(run_dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as official
        torch.backends.cudnn.allow_tf32 = True
    precision = args.mixed_precision
    if precision == "fp16" and device.type == "cpu":
        logger.warning("--mixed-precision fp16 is not supported on CPU; training in fp32 instead")
        precision = "none"
    amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if (note := cpu_bf16_warning(device, amp_dtype)) is not None:
        logger.warning(note)
    use_compile = args.compile or (not args.no_compile and device.type == "cuda")
    if device.type == "cpu" and not (args.compile or args.no_compile):
        logger.info("note: torch.compile is off on CPU by default (pass --compile to force it)")

    # Setup data: one random view per sample and epoch; the sampler resumes mid-epoch.
    dataset = CodeDataset(args.code_path, seed=args.global_seed, view="random", image_size=args.image_size)
    meta = dataset.meta
    vocab_size, block_size, num_classes = resolve_sizes(args, meta, logger)
    check_meta(meta, vocab_size, block_size)
    tok_hash = (meta.get("tokenizer") or {}).get("checkpoint_hash")
    if args.vq_ckpt and tok_hash and os.path.isfile(args.vq_ckpt) and fast_file_hash(args.vq_ckpt) != tok_hash:
        logger.warning(f"--vq-ckpt '{args.vq_ckpt}' is not the checkpoint the codes were extracted with "
                       f"({meta['tokenizer']['checkpoint']}); samples must be decoded with the latter")
    accum = args.gradient_accumulation_steps
    micro_batch_size = args.global_batch_size // (world_size * accum)
    if micro_batch_size * world_size * accum != args.global_batch_size:
        raise UserError(f"--global-batch-size {args.global_batch_size} is not divisible by world size {world_size} "
                         f"x --gradient-accumulation-steps {accum}.")
    sampler = ResumableDistributedSampler(dataset, shuffle=True, seed=args.global_seed, drop_last=True)
    steps_per_epoch = sampler.num_samples // (micro_batch_size * accum)
    if steps_per_epoch == 0:
        raise UserError(f"{len(dataset)} samples are fewer than one global batch of {args.global_batch_size}.")
    num_workers = min(args.num_workers, max((os.cpu_count() or 1) // world_size, 1))
    # A private generator for the worker seeds: creating an iterator must not draw from the global torch RNG,
    # or a resumed run's dropout stream would differ from the uninterrupted one.
    loader = DataLoader(dataset, batch_size=micro_batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        generator=torch.Generator().manual_seed(args.global_seed))

    # Create the model (same init on every rank: FSDP shards each rank's copy), optimizer, EMA, schedule.
    gpt_config = make_gpt_config(args, vocab_size, block_size, num_classes)
    torch.manual_seed(args.global_seed)
    with torch.device(device):
        gpt = GPT(gpt_config)
    seed = args.global_seed * world_size + rank  # official per-rank seed (dropout streams differ per rank)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    model = parallelize(gpt, args.data_parallel, device=device, param_dtype="bf16" if precision == "bf16" else "none",
                        reduce_dtype="fp32", compile_model=use_compile, activation_checkpointing=args.grad_ckpt)
    optimizer = build_adamw(model, args.lr, betas=(args.beta1, args.beta2), weight_decay=args.weight_decay,
                            decay_policy="matrices_only")
    ema = EMA(gpt, decay=EMA_DECAY) if args.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    schedule = SCHEDULE_NAMES[args.lr_scheduler]
    try:
        lr_at = build_lr_schedule(schedule, args.lr, warmup=args.warmup, total_steps=args.iterations,
                                  end_lr=args.end_lr if schedule == "cosine_v2" else 0.0,
                                  fract_decay=args.fract_decay)
    except ValueError as err:
        raise UserError(f"--lr-scheduler {args.lr_scheduler}: {err}") from None
    hold = args.iterations - int(args.fract_decay * args.iterations) if schedule == "wsd" else None
    cd_dir = run_dir / "cd_records" / f"cd_fract_{args.fract_decay}_to_{args.iterations}" if hold is not None else None

    # Resume from the newest checkpoint (for WSD: the cool-down folder first, then stable-phase ones <= hold).
    guard = NonFiniteGuard()
    step, log_sums = 0, {"loss": 0.0, "grad_norm": 0.0, "steps": 0}
    search = [(cd_dir, None), (run_dir, hold)] if cd_dir is not None else [(run_dir, None)]
    resume_path = find_resume_checkpoint(search)
    if resume_path is not None:
        step, log_sums = resume(resume_path, args.data_parallel, model, ema, optimizer, scaler, sampler, guard,
                                steps_per_epoch)
    if is_main_process():
        for folder in (run_dir, cd_dir):
            if folder is not None:
                truncate_metrics(folder, step)
    config = {**vars(args), "derived": {
        "world_size": world_size, "micro_batch_size": micro_batch_size, "grad_accum_steps": accum,
        "steps_per_epoch": steps_per_epoch, "vocab_size": vocab_size, "block_size": block_size,
        "num_classes": num_classes, "precision": precision, "compile": use_compile, "hold_steps": hold,
        "gpt_config": dataclasses.asdict(gpt_config), "codes_meta": {k: meta.get(k) for k in (
            "code_path", "tokenizer", "codebook_size", "num_tokens", "image_size", "augmentation", "count")}}}
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    describe_run(logger, args, config["derived"], dataset, sum(p.numel() for p in gpt.parameters()), device, run_dir)
    logger.info(f"{f'resuming from {resume_path} at step {step}' if resume_path else 'starting fresh'}; "
                f"training to step {stop_step}")

    # Train.
    wandb_mode = "online" if args.wandb_project and not args.no_wandb else "disabled"
    loggers: dict[Path, MetricsLogger] = {}
    model.train()
    data_iter, steps_left = None, 0
    timer, timed_steps = time.perf_counter(), 0
    while step < stop_step:
        if data_iter is None:
            dataset.set_epoch(sampler.epoch)
            data_iter = iter(loader)
            steps_left = (sampler.num_samples - sampler.position) // (micro_batch_size * accum)
        batches = []
        for _ in range(accum):
            codes, labels = next(data_iter)  # (B, L) int64, (B,) int64
            if int(codes.max()) >= vocab_size:
                raise CodesError(f"the codes hold index {int(codes.max())} >= vocab_size {vocab_size}: they come "
                                 "from another tokenizer (pass the matching --tok-config / --vocab-size)")
            batches.append((codes.to(device, non_blocking=True), labels.to(device, non_blocking=True)))
            sampler.advance(len(labels))
        set_lr(optimizer, lr_at(step))
        loss, grad_norm, skipped = train_step(model, batches, optimizer, scaler, amp_dtype, args.max_grad_norm,
                                              guard, step)
        if ema is not None and not skipped:
            ema.update(model)
        step += 1
        steps_left -= 1
        if steps_left == 0:  # epoch done: move the sampler on now, so a checkpoint here resumes in the next one
            sampler.set_epoch(sampler.epoch + 1)
            data_iter = None
        if not skipped:
            log_sums = {"loss": log_sums["loss"] + float(loss), "grad_norm": log_sums["grad_norm"] + float(grad_norm),
                        "steps": log_sums["steps"] + 1}
        timed_steps += 1
        log_dir = cd_dir if hold is not None and step > hold else run_dir

        if step % args.log_every == 0 or step == stop_step:
            elapsed = time.perf_counter() - timer
            n = max(log_sums["steps"], 1)
            metrics = reduce_metrics({"train/loss": log_sums["loss"] / n, "train/grad_norm": log_sums["grad_norm"] / n})
            metrics.update({"train/lr": optimizer.param_groups[0]["lr"], "train/epoch": sampler.epoch,
                            "train/steps_per_s": timed_steps / elapsed,
                            "train/tokens_per_s": timed_steps * args.global_batch_size * block_size / elapsed,
                            "train/skipped_steps": guard.num_skipped})
            if log_dir not in loggers:
                loggers[log_dir] = MetricsLogger(log_dir, wandb_mode=wandb_mode, wandb_project=args.wandb_project
                                                 or "gigatok", wandb_name=args.sub_exp_dir, config=config)
            loggers[log_dir].log(step, metrics)
            log_sums = {"loss": 0.0, "grad_norm": 0.0, "steps": 0}
            timer, timed_steps = time.perf_counter(), 0

        if step % args.ckpt_every == 0 or step == stop_step or step == hold:
            save_run_checkpoint(log_dir, step, args, model, ema, optimizer, scaler, sampler, config,
                                extra={"gpt_config": config["derived"]["gpt_config"], "guard": guard.state_dict(),
                                       "log_sums": log_sums, "data_parallel": args.data_parallel})
    for metrics_logger in loggers.values():
        metrics_logger.close()
    logger.info(f"done at step {step}")
    return run_dir


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: train(args))


if __name__ == "__main__":
    main()
