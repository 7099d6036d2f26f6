"""The probe stage both linear probes share (`gigatok.stages.lin_probe`, `gigatok.stages.lin_probe_gpt`): the
official lin_probe.py flags, their checks, the opening (process group, logging, tokenizer config), and the runner
that trains (resuming) then evaluates a probe, or with `--eval` only evaluates one.

The probe, its loops and its files are `gigatok.engine.linear_probe`; the frozen trunk is the caller's
`features_fn(images (B, 3, S, S) in [-1, 1]) -> (B, D) float`, so nothing here builds a model.

Shape letters: B batch, D feature width, S image size.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from gigatok.config import VQConfig, load_config
from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.engine.linear_probe import (
    LARS,
    FeaturesFn,
    LinearProbe,
    ProbeSchedule,
    build_probe_datasets,
    evaluate,
    find_probe_checkpoint,
    load_probe_weights,
    probe_checkpoint_path,
    probe_lr,
    resolve_data_paths,
    save_probe_checkpoint,
    train_one_epoch,
    write_results,
)
from gigatok.errors import UserError
from gigatok.infra.checkpoint import (
    extract_state_dict,
    read_checkpoint,
    resolve_checkpoint_path,
)
from gigatok.infra.dist import (
    DistInfo,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.logging import MetricsLogger, reduce_metrics
from gigatok.infra.optim import load_optimizer_state
from gigatok.infra.parallel import parallelize
from gigatok.infra.runtime import build_loader, resolve_precision

logger = logging.getLogger(__name__)


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both official lin_probe.py scripts share (same names and defaults), plus ours."""
    parser.add_argument("--data-root", type=str, default=None,
                        help="folder with ILSVRC2012_img_train/ and ILSVRC2012_img_val/ (ImageFolder layout)")
    parser.add_argument("--train-path", type=str, default=None, help="train ImageFolder (overrides --data-root)")
    parser.add_argument("--val-path", type=str, default=None, help="val ImageFolder (overrides --data-root)")
    parser.add_argument("--save-path", type=str, default="results_lin_prob",
                        help="folder of the runs (default: %(default)s)")
    parser.add_argument("--sub-exp-dir", type=str, default=None, help="run folder under --save-path (required)")
    parser.add_argument("--model-config", type=str, required=True, help="tokenizer YAML")
    parser.add_argument("--vq-ckpt", type=str, default=None, help="tokenizer checkpoint (omitted: random weights)")
    parser.add_argument("--dataset", type=str, default="imagenet", help="recorded (an ImageFolder is read)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the tokenizer config's")
    parser.add_argument("--epochs", type=int, default=90, help="training epochs of the probe")
    parser.add_argument("--blr", type=float, default=0.1, help="lr = blr * global batch / 256 unless --lr")
    parser.add_argument("--lr", type=float, default=None, help="absolute learning rate (default: from --blr)")
    parser.add_argument("--warmup-epochs", type=float, default=10, help="linear LR warm-up epochs")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="LARS weight decay")
    parser.add_argument("--batch-size", type=int, default=512, help="per process; global = x world size")
    parser.add_argument("--min-lr", type=float, default=0.0, help="end of the cosine LR decay")
    parser.add_argument("--global-seed", type=int, default=0, help="seed of the probe init and data order")
    parser.add_argument("--num-workers", type=int, default=16, help="DataLoader workers per process")
    parser.add_argument("--mixed-precision", type=str, choices=["none", "fp16", "bf16"], default="none",
                        help="autocast dtype (default: %(default)s; fp16 adds a GradScaler)")
    parser.add_argument("--log-every", type=int, default=100, help="log the training loss every N steps")
    parser.add_argument("--ckpt-epoch", type=int, default=10, help="checkpoint every k epochs (and the last)")
    parser.add_argument("--num-code", type=int, default=None, help="use the first N codes / latent tokens")
    parser.add_argument("--dist-eval", action="store_true", help="accepted: evaluation is always sharded exactly")
    parser.add_argument("--lin-probe-ckpt", type=str, default=None, help="--eval: probe checkpoint (default: newest)")
    parser.add_argument("--eval", action="store_true", help="only evaluate a probe checkpoint on the val set")
    parser.add_argument("--out", type=str, default=None, help="results JSON (default: <run dir>/lin_probe_acc.json)")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (default: %(default)s)")


def check_probe_flags(args: argparse.Namespace) -> None:
    """Reject bad shared flags before any work."""
    if not args.sub_exp_dir:
        raise UserError("--sub-exp-dir is required: the run folder is <--save-path>/<--sub-exp-dir>.")
    for name in ("epochs", "batch_size", "log_every", "ckpt_epoch"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.warmup_epochs < 0 or args.min_lr < 0:
        raise UserError("--warmup-epochs and --min-lr must be >= 0.")
    if args.eval and args.lin_probe_ckpt is None and find_probe_checkpoint(
            Path(args.save_path) / args.sub_exp_dir) is None:
        raise UserError(f"--eval: no probe checkpoint under '{Path(args.save_path) / args.sub_exp_dir}' and no "
                         "--lin-probe-ckpt given.")
    resolve_data_paths(args.data_root, args.train_path, args.val_path, need_train=not args.eval)


def start_probe_stage(args: argparse.Namespace) -> tuple[DistInfo, VQConfig, int]:
    """The opening both probe entry points share: check the flags and the tokenizer checkpoint's existence, join
    the process group, set up logging, read the tokenizer config and check the image size, seed the weights init.

    Returns:
        (process info, tokenizer config, image size S).
    """
    check_probe_flags(args)
    if args.vq_ckpt is not None:
        resolve_checkpoint_path(args.vq_ckpt)  # a missing file fails before any model is built
    dist_info = init_distributed(args.device)
    setup_logging(Path(args.save_path) / args.sub_exp_dir)
    config = load_config(args.model_config)
    image_size = args.image_size or config.model.init_args.image_size
    if image_size != config.model.init_args.image_size:
        raise UserError(f"--image-size {image_size} differs from the tokenizer's image_size "
                         f"{config.model.init_args.image_size} ('{args.model_config}').")
    if args.vq_ckpt is None:
        logger.warning("no --vq-ckpt: the tokenizer has RANDOM weights (tests only)")
    torch.manual_seed(args.global_seed)  # random tokenizer weights agree across ranks
    return dist_info, config, image_size


def run_probe(args: argparse.Namespace, features_fn: FeaturesFn, dist_info: DistInfo, *, image_size: int,
              trunk_label: str, describe: dict[str, Any]) -> dict[str, Any]:
    """Train (resuming) then evaluate a linear probe, or with `--eval` only evaluate one; returns the results.

    Args:
        features_fn: frozen trunk, images (B, 3, S, S) in [-1, 1] -> (B, D); must be deterministic (eval mode).
        trunk_label: "LM" or "Tokenizer" (the official results line).
        describe: what the features are (recorded in the results and the checkpoints).
    """
    device = dist_info.device
    run_dir = Path(args.save_path) / args.sub_exp_dir
    amp_dtype, precision = resolve_precision(args.mixed_precision, device, flag="--mixed-precision")
    with torch.no_grad():
        dim = int(features_fn(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1])
    train_path, val_path = resolve_data_paths(args.data_root, args.train_path, args.val_path, not args.eval)
    if args.eval:
        ckpt_path = Path(args.lin_probe_ckpt) if args.lin_probe_ckpt else find_probe_checkpoint(run_dir)
        ckpt, probe = load_probe_weights(ckpt_path, dim)
        _, val, _ = build_probe_datasets(None, val_path, image_size, args.global_seed, ckpt.get("classes"))
        probe, epoch = probe.to(device), int(ckpt.get("epoch", -1))
    else:
        train, val, classes = build_probe_datasets(train_path, val_path, image_size, args.global_seed)
        logger.info(f"linear probe on {describe}: {dim}-d features, {len(classes)} classes; train '{train_path}' "
                    f"({len(train)} images), val '{val_path}' ({len(val)} images), image size {image_size}")
        probe = train_probe(args, features_fn, dist_info, train, classes, dim, amp_dtype,
                            {"precision": precision, "features": describe})
        ckpt_path, epoch = probe_checkpoint_path(run_dir, args.epochs - 1), args.epochs - 1

    # Every rank scores a strided shard (no padding duplicates, unlike a DistributedSampler); counts are summed.
    shard = Subset(val, range(dist_info.rank, len(val), dist_info.world_size))
    loader = build_loader(shard, args.batch_size, num_workers=args.num_workers, device=device)
    results = {**evaluate(probe, loader, features_fn, device, amp_dtype), "num_classes": probe.head.out_features,
               "checkpoint": str(ckpt_path), "epoch": epoch, "features": describe, "val_path": str(val_path)}
    if is_main_process():
        path = write_results(run_dir, results, trunk_label, args.out)
        logger.info(f"{trunk_label}: top-1 {100 * results['top1']:.2f}%, top-5 {100 * results['top5']:.2f}% on "
                    f"{results['num_images']} val images (probe epoch {epoch}); wrote '{path}'")
    return results


def train_probe(args: argparse.Namespace, features_fn: FeaturesFn, dist_info: DistInfo, train: Dataset,
                classes: list[str], dim: int, amp_dtype: torch.dtype | None, derived: dict[str, Any]) -> LinearProbe:
    """Train the probe for `--epochs`, resuming after the newest checkpoint of the run; returns the final probe."""
    device, world_size = dist_info.device, dist_info.world_size
    run_dir = Path(args.save_path) / args.sub_exp_dir
    global_batch = args.batch_size * world_size
    steps_per_epoch = len(train) // global_batch
    if steps_per_epoch == 0:
        raise UserError(f"{len(train)} training images are fewer than one global batch of {global_batch} "
                         f"(--batch-size {args.batch_size} x {world_size} process(es)).")
    schedule = ProbeSchedule(probe_lr(args.blr, args.lr, global_batch), args.epochs, args.warmup_epochs, args.min_lr)
    torch.manual_seed(args.global_seed)  # same head init on every rank
    probe = LinearProbe(dim, len(classes)).to(device)
    optimizer = LARS(probe.parameters(), lr=schedule.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    config = {**{k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))},
              "derived": {**derived, "world_size": world_size, "global_batch_size": global_batch, "lr": schedule.lr,
                          "steps_per_epoch": steps_per_epoch, "feature_dim": dim, "num_classes": len(classes)}}

    start_epoch, step = 0, 0
    resume_path = find_probe_checkpoint(run_dir)
    if resume_path is not None:
        ckpt = read_checkpoint(resume_path)
        saved_batch = (ckpt.get("config") or {}).get("derived", {}).get("global_batch_size", global_batch)
        if saved_batch != global_batch:
            logger.warning(f"resuming with global batch {global_batch}; the checkpoint was trained with {saved_batch}")
        probe.load_state_dict(extract_state_dict(ckpt, prefer=("model",), source=str(resume_path)))
        load_optimizer_state(optimizer, ckpt["optimizer"])
        if "scaler" in ckpt and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step = int(ckpt["epoch"]) + 1, int(ckpt["steps"])
    logger.info(f"world size {world_size}, device {device}, precision {derived['precision']}; global batch "
                f"{global_batch} = {args.batch_size} x {world_size}; lr {schedule.lr:g} ("
                f"{'--lr' if args.lr is not None else f'blr {args.blr} x {global_batch} / 256'}), warm-up "
                f"{args.warmup_epochs} epochs, cosine to {args.min_lr:g} at epoch {args.epochs}; LARS, weight decay "
                f"{args.weight_decay}; {steps_per_epoch} steps/epoch, {steps_per_epoch * args.epochs} steps; "
                f"{'resuming from ' + str(resume_path) if resume_path else 'starting fresh'} at epoch {start_epoch}")

    sampler = ResumableDistributedSampler(train, shuffle=True, seed=args.global_seed, drop_last=True)
    loader = build_loader(train, args.batch_size, num_workers=args.num_workers, device=device, sampler=sampler,
                          seed=args.global_seed, drop_last=True)
    model = parallelize(probe, "ddp", device=device)
    metrics = MetricsLogger(run_dir)
    window: list[torch.Tensor] = []

    def log_fn(at: int, loss: torch.Tensor, lr: float) -> None:
        window.append(loss.float())
        if at % args.log_every == 0:  # collective: every rank reaches the same steps
            reduced = reduce_metrics({"train/loss": torch.stack(window).mean()})
            metrics.log(at, {**reduced, "train/lr": lr, "train/epoch": at / steps_per_epoch})
            window.clear()

    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        train.set_epoch(epoch)  # the augmentation of each image is keyed by (seed, epoch, index)
        step = train_one_epoch(model, optimizer, loader, features_fn, schedule=schedule, step=step,
                               steps_per_epoch=steps_per_epoch, device=device, amp_dtype=amp_dtype, scaler=scaler,
                               log_fn=log_fn)
        if (epoch % args.ckpt_epoch == 0 and epoch > 0) or epoch == args.epochs - 1:  # official policy
            if is_main_process():
                save_probe_checkpoint(probe_checkpoint_path(run_dir, epoch), model=model, optimizer=optimizer,
                                      scaler=scaler, epoch=epoch, steps=step, classes=classes, config=config)
            if dist.is_initialized():
                dist.barrier()
    metrics.close()
    if dist.is_initialized():  # BN running stats drift per rank after the last step: evaluate rank 0's (the saved)
        for buffer in probe.buffers():
            dist.broadcast(buffer, src=0)
    return probe
