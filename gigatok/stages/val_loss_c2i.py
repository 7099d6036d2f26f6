"""Validation cross-entropy of a class-conditional GPT checkpoint (official `val_loss_cal.py`).

Data is either a code folder (`--code-path`, our layout or the official one; the center-crop view of each image)
or an ImageFolder tree (`--data-path`, e.g. ImageNet val) tokenized on the fly with `center_crop_arr` and
`--vq-ckpt` / `--tok-config`, as the paper's validation loss. The GPT runs in eval mode (no dropout, no class
dropout) with the true labels; the loss is the mean over every predicted code of every image. Each rank takes a
strided shard; sums are all-reduced. The result is printed and written as JSON (`--out`, default
`{save_path}/val_loss_{checkpoint name}.json`).

Run it with torchrun (scripts/val_loss_c2i.sh) or as one process.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from gigatok.builders import load_gpt, load_tokenizer, recorded_gpt_fields
from gigatok.config import load_config
from gigatok.data.codes import (
    CodeDataset,
    LabeledImageFolder,
    ViewTransform,
    check_meta,
)
from gigatok.errors import UserError
from gigatok.gpt.model import GPT_MODELS
from gigatok.infra.checkpoint import read_checkpoint
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import init_distributed, is_main_process, setup_logging

_LOAD_GPT_ARGS = ("pos_type", "vocab_size", "block_size", "num_classes", "cls_token_num", "use_qk_norm")




def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Official flags of val_loss_cal.py (same names and defaults unless noted).
    parser.add_argument("--from-fsdp", action="store_true", help="the file is a bare state dict (read either way)")
    parser.add_argument("--code-path", type=str, default=None, help="code folder (center-crop view per image)")
    parser.add_argument("--data-path", type=str, default=None, help="ImageFolder tree, tokenized on the fly")
    parser.add_argument("--gpt-model", type=str, choices=list(GPT_MODELS), default="GPT-B")
    parser.add_argument("--gpt-ckpt", type=str, required=True)
    parser.add_argument("--gpt-type", type=str, choices=["c2i", "t2i"], default="c2i")
    parser.add_argument("--gpt-2d", action="store_true")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's 'ema' weights")
    parser.add_argument("--cls-token-num", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--save-path", type=str, default="results/gpt")
    parser.add_argument("--dataset", type=str, default="imagenet", help="recorded")
    parser.add_argument("--image-size", type=int, default=None, help="default: the tokenizer's / the codes'")
    parser.add_argument("--downsample-size", type=int, default=16, help="accepted; the tokenizer fixes the grid")
    parser.add_argument("--num-classes", type=int, default=1000, help="official checkpoints only (ours record it)")
    parser.add_argument("--per-proc-batch-size", type=int, default=32)
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=24)
    parser.add_argument("--precision", type=str, choices=["none", "fp16", "bf16"], default="bf16")
    parser.add_argument("--wandb-project", type=str, default=None, help="accepted, unused")
    parser.add_argument("--quant-way", type=str, choices=["vq", "fsq"], default="vq")
    parser.add_argument("--vq-ckpt", type=str, default=None)
    parser.add_argument("--tok-config", type=str, default=None)
    parser.add_argument("--early-stop-iter", type=str, default=None, help="accepted, recorded")
    parser.add_argument("--rope", action="store_true")
    parser.add_argument("--adaLN", action="store_true", help="not supported")
    parser.add_argument("--simple-adaLN", action="store_true", help="not supported")
    parser.add_argument("--qk-norm", action="store_true")
    parser.add_argument("--flash-attn", action="store_true", help="accepted; SDPA picks its kernel")
    # Ours.
    parser.add_argument("--out", type=str, default=None, help="result JSON path")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto")
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    if (args.code_path is None) == (args.data_path is None):
        raise UserError("pass exactly one of --code-path (pre-extracted codes) and --data-path (images, with "
                         "--vq-ckpt and --tok-config).")
    if args.data_path is not None and args.tok_config is None:
        raise UserError("--data-path needs --tok-config (and --vq-ckpt) to tokenize the images.")
    if args.gpt_type != "c2i" or args.quant_way != "vq" or args.adaLN or args.simple_adaLN:
        raise UserError("only class-conditional GPTs without adaLN on VQ codes are supported.")
    if args.rope and args.gpt_2d:
        raise UserError("--rope and --gpt-2d exclude each other; pass one.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto.")


def gpt_kwargs(args: argparse.Namespace, ckpt: dict[str, Any], vocab_size: int | None,
               block_size: int) -> dict[str, Any]:
    """GPT config fields for `load_gpt`: the checkpoint's own record (our runs), else the flags + the data."""
    saved = recorded_gpt_fields(ckpt)
    if saved is not None:
        return saved
    pos_type = "rope_2d" if args.gpt_2d else "rope_1d" if args.rope else "learned_1d"
    return {**GPT_MODELS[args.gpt_model], "pos_type": pos_type, "vocab_size": vocab_size or 16384,
            "block_size": block_size, "num_classes": args.num_classes, "cls_token_num": args.cls_token_num,
            "use_qk_norm": args.qk_norm}


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The validation stage; returns the result dict (on every rank)."""
    check_flags(args)
    ckpt = read_checkpoint(args.gpt_ckpt)  # a missing or unreadable file fails before any other work

    # Setup distributed, logging and precision.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    logger = setup_logging()
    precision = args.precision
    if precision == "fp16" and device.type == "cpu":
        logger.warning("--precision fp16 is not supported on CPU; running in fp32 instead")
        precision = "none"
    amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    # Setup data: codes (center view) or images tokenized on the fly.
    tokenizer = None
    if args.code_path is not None:
        dataset = CodeDataset(args.code_path, view="center", image_size=args.image_size)
        vocab_size, block_size = dataset.meta.get("codebook_size"), dataset.num_tokens
        source = f"codes '{args.code_path}' ({len(dataset)} images, center view)"
    else:
        config = load_config(args.tok_config)
        image_size = args.image_size or config.model.init_args.image_size
        if image_size != config.model.init_args.image_size:
            raise UserError(f"--image-size {image_size} differs from the tokenizer config's image_size "
                             f"{config.model.init_args.image_size}.")
        torch.manual_seed(args.global_seed)  # random tokenizer weights (tests) agree across ranks
        tokenizer = load_tokenizer(args.vq_ckpt, config, device=device)
        dataset = LabeledImageFolder(args.data_path, ViewTransform(image_size, center_only=True))
        vocab_size, block_size = tokenizer.codebook_size, tokenizer.num_tokens
        source = f"images '{args.data_path}' ({len(dataset)}, center_crop_arr {image_size} px, tokenized on the fly)"

    # Create the GPT sized for the data; a checkpoint that does not fit is refused.
    kwargs = gpt_kwargs(args, ckpt, vocab_size, block_size)
    check_meta({"code_path": args.code_path or args.data_path, "codebook_size": vocab_size, "num_tokens": block_size},
               kwargs["vocab_size"], kwargs["block_size"])
    if args.ema and "ema" not in ckpt:
        logger.warning(f"--ema: '{args.gpt_ckpt}' has no 'ema' entry; using its 'model' weights")
    fixed = {k: kwargs.pop(k) for k in _LOAD_GPT_ARGS if k in kwargs}
    gpt_model = (ckpt.get("config") or {}).get("gpt_model", args.gpt_model)  # sizes are in kwargs either way
    gpt = load_gpt(ckpt, gpt_model, use_ema=args.ema, device=device, **fixed, **kwargs)
    del ckpt
    model = torch.compile(gpt) if args.compile else gpt
    logger.info(f"world size {world_size}, device {device}, precision {precision}; GPT '{args.gpt_ckpt}' "
                f"(K={fixed['vocab_size']}, L={fixed['block_size']}, {fixed['num_classes']} classes) on {source}")

    # Evaluate a strided shard per rank, then all-reduce the sums.
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    num_workers = min(args.num_workers, max((os.cpu_count() or 1) // world_size, 1))
    loader = DataLoader(shard, batch_size=args.per_proc_batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # [sum of CE, codes scored, images]
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    for batch in tqdm(loader, disable=not is_main_process(), desc="val loss"):
        with torch.no_grad():
            if tokenizer is not None:
                views, labels = batch[0][:, 0].to(device), batch[1].to(device)  # (B, 3, S, S), (B,)
                codes = tokenizer.encode_to_codes(views)  # (B, L), tokenizer in fp32
            else:
                codes, labels = batch[0].to(device), batch[1].to(device)  # (B, L), (B,)
            with autocast:
                logits, _ = model(codes[:, :-1], labels)  # (B, L, K) float32
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1), reduction="sum")
        sums += torch.stack([ce.double(), torch.tensor(codes.numel(), dtype=torch.float64, device=device),
                             torch.tensor(len(labels), dtype=torch.float64, device=device)])
    if dist.is_initialized():
        dist.all_reduce(sums)
    total_ce, num_codes, num_images = sums.tolist()
    result = {"val_loss": total_ce / max(num_codes, 1), "num_images": int(num_images), "num_codes": int(num_codes),
              "gpt_ckpt": args.gpt_ckpt, "ema": args.ema, "data": args.code_path or args.data_path,
              "precision": precision, "early_stop_iter": args.early_stop_iter}
    out = Path(args.out) if args.out else Path(args.save_path) / f"val_loss_{Path(args.gpt_ckpt).stem}.json"
    if is_main_process():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        logger.info(f"val loss {result['val_loss']:.4f} over {result['num_images']} images; wrote '{out}'")
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: evaluate(args))


if __name__ == "__main__":
    main()
