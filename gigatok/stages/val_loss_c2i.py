"""Validation cross-entropy of a class-conditional GPT checkpoint (official `val_loss_cal.py`).

Data is either a code folder (`--code-path`, our layout or the official one; the center-crop view of each image)
or an ImageFolder tree (`--data-path`, e.g. ImageNet val) tokenized on the fly with `center_crop_arr` and
`--vq-ckpt` / `--tok-config`, as the paper's validation loss. The GPT runs in eval mode (no dropout, no class
dropout) with the true labels; the loss is the mean over every predicted code of every image. Each rank takes a
strided shard; sums are all-reduced. The result is printed and written as JSON (`--out`, default
`{save_path}/val_loss_{checkpoint name}.json`).

Settings: the official flags (`--help`), each a field of `gigatok.config.GPTEvalConfig`; the GPT's shape is the one
its checkpoint records (official files: the flags, the weights' shapes and the data).

Run it with torchrun (scripts/val_loss_c2i.sh) or as one process.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm import tqdm

from gigatok.builders import (
    check_gpt_flags,
    load_gpt,
    load_tokenizer,
    resolve_checkpoint_gpt,
    resolve_tokenizer_ref,
)
from gigatok.config import GPTEvalConfig
from gigatok.config.flags import (
    add_config_flags,
    given_flags,
    resolve_config,
    split_overrides,
)
from gigatok.data.codes import (
    CodeDataset,
    LabeledImageFolder,
    ViewTransform,
    check_meta,
)
from gigatok.errors import UserError
from gigatok.infra.checkpoint import read_checkpoint
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import init_distributed, is_main_process, setup_logging
from gigatok.infra.io import write_json_atomic
from gigatok.infra.runtime import autocast, build_loader, resolve_precision

logger = logging.getLogger("gigatok")
SECTIONS = ("model", "tokenizer", "data", "eval")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    """(args, flag table, `--section.key=value` overrides)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=str, default=None, help="a config YAML to start from")
    parser.add_argument("--save-path", type=str, default="results/gpt", help="where the result JSON goes")
    parser.add_argument("--out", type=str, default=None, help="result JSON path (default: <save-path>/"
                        "val_loss_<checkpoint name>.json)")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (default: %(default)s)")
    table: dict[str, str] = {}
    for section in SECTIONS:
        table.update(add_config_flags(parser.add_argument_group(f"{section} (config section '{section}')"),
                                      GPTEvalConfig, section))
    unused = parser.add_argument_group("official flags accepted for compatibility")
    unused.add_argument("--from-fsdp", action="store_true", help="the file is a bare state dict (read either way)")
    unused.add_argument("--wandb-project", type=str, default=None, help="unused")
    unused.add_argument("--early-stop-iter", type=str, default=None, help="recorded")
    unused.add_argument("--flash-attn", action="store_true", help="SDPA picks its kernel")
    args, rest = parser.parse_known_args(argv)
    return args, table, split_overrides(parser, rest)


def check_config(config: GPTEvalConfig) -> None:
    check_gpt_flags(config.model)
    if (config.data.code_path is None) == (config.data.data_path is None):
        raise UserError("pass exactly one of --code-path (pre-extracted codes) and --data-path (images, with "
                        "--vq-ckpt and --tok-config).")
    if config.data.data_path is not None and config.tokenizer.quant_way == "vq" and config.tokenizer.tok_config is None:
        raise UserError("--data-path needs --tok-config (and --vq-ckpt) to tokenize the images (or --quant-way fsq "
                        "with --fsq-model, --levels and --fsq-ckpt).")
    if config.model.gpt_ckpt is None:
        raise UserError("--gpt-ckpt is required: the GPT checkpoint whose validation loss to compute.")


def build_data(config: GPTEvalConfig, device: torch.device) -> tuple[Any, torch.nn.Module | None, int | None, int,
                                                                      str]:
    """(dataset, tokenizer or None, vocabulary or None, codes per image, description): codes (center view) or images
    tokenized on the fly."""
    data, tok = config.data, config.tokenizer
    if data.code_path is not None:
        dataset = CodeDataset(data.code_path, view="center", image_size=tok.image_size)
        return (dataset, None, dataset.meta.get("codebook_size"), dataset.num_tokens,
                f"codes '{data.code_path}' ({len(dataset)} images, center view)")
    vq_config, checkpoint, _ = resolve_tokenizer_ref(tok)  # --tok-config, or --quant-way fsq's FSQ tokenizer
    image_size = tok.image_size or vq_config.model.init_args.image_size
    if image_size != vq_config.model.init_args.image_size:
        raise UserError(f"--image-size {image_size} differs from the tokenizer config's image_size "
                        f"{vq_config.model.init_args.image_size}.")
    torch.manual_seed(config.eval.global_seed)  # random tokenizer weights (tests) agree across ranks
    tokenizer = load_tokenizer(checkpoint, vq_config, device=device)
    dataset = LabeledImageFolder(data.data_path, ViewTransform(image_size, center_only=True))
    return (dataset, tokenizer, tokenizer.codebook_size, tokenizer.num_tokens,
            f"images '{data.data_path}' ({len(dataset)}, center_crop_arr {image_size} px, tokenized on the fly)")


def evaluate(config: GPTEvalConfig, device_name: str = "auto", out: str | None = None,
             save_path: str = "results/gpt", early_stop_iter: str | None = None) -> dict[str, Any]:
    """The validation stage; returns the result dict (on every rank)."""
    check_config(config)
    gpt_ckpt, e = config.model.gpt_ckpt, config.eval
    ckpt = read_checkpoint(gpt_ckpt)  # a missing or unreadable file fails before any other work

    # Setup distributed, logging and precision.
    dist_info = init_distributed(device_name)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    setup_logging()
    amp_dtype, precision = resolve_precision(e.precision, device, flag="--precision")

    # Data, then the GPT its checkpoint describes; a GPT for other codes is refused.
    dataset, tokenizer, vocab_size, block_size, source = build_data(config, device)
    gpt_config = resolve_checkpoint_gpt(config.model, ckpt, vocab_size=vocab_size, block_size=block_size,
                                        source=f"--gpt-ckpt '{gpt_ckpt}'")
    check_meta({"code_path": config.data.code_path or config.data.data_path, "codebook_size": vocab_size,
                "num_tokens": block_size}, gpt_config.vocab_size, gpt_config.block_size)
    if e.ema and "ema" not in ckpt:
        logger.warning(f"--ema: '{gpt_ckpt}' has no 'ema' entry; using its 'model' weights")
    gpt = load_gpt(ckpt, gpt_config, use_ema=e.ema, device=device)
    del ckpt
    model = torch.compile(gpt) if e.compile else gpt
    logger.info(f"world size {world_size}, device {device}, precision {precision}; GPT '{gpt_ckpt}' "
                f"(K={gpt_config.vocab_size}, L={gpt_config.block_size}, {gpt_config.num_classes} classes) on "
                f"{source}")

    # Evaluate a strided shard per rank, then all-reduce the sums.
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    loader = build_loader(shard, e.per_proc_batch_size, num_workers=config.data.num_workers, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # [sum of CE, codes scored, images]
    for batch in tqdm(loader, disable=not is_main_process(), desc="val loss"):
        with torch.no_grad():
            if tokenizer is not None:
                views, labels = batch[0][:, 0].to(device), batch[1].to(device)  # (B, 3, S, S), (B,)
                codes = tokenizer.encode_to_codes(views)  # (B, L), tokenizer in fp32
            else:
                codes, labels = batch[0].to(device), batch[1].to(device)  # (B, L), (B,)
            with autocast(device, amp_dtype):
                logits, _ = model(codes[:, :-1], labels)  # (B, L, K) float32
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1), reduction="sum")
        sums += torch.stack([ce.double(), torch.tensor(codes.numel(), dtype=torch.float64, device=device),
                             torch.tensor(len(labels), dtype=torch.float64, device=device)])
    if dist.is_initialized():
        dist.all_reduce(sums)
    total_ce, num_codes, num_images = sums.tolist()
    result = {"val_loss": total_ce / max(num_codes, 1), "num_images": int(num_images), "num_codes": int(num_codes),
              "gpt_ckpt": gpt_ckpt, "ema": e.ema, "data": config.data.code_path or config.data.data_path,
              "precision": precision, "early_stop_iter": early_stop_iter}
    path = Path(out) if out else Path(save_path) / f"val_loss_{Path(gpt_ckpt).stem}.json"
    if is_main_process():
        write_json_atomic(path, result)
        logger.info(f"val loss {result['val_loss']:.4f} over {result['num_images']} images; wrote '{path}'")
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args, table, overrides = parse_args(argv)

    def stage() -> dict[str, Any]:
        config, _ = resolve_config(GPTEvalConfig, args.config, given_flags(args, table), overrides)
        return evaluate(config, args.device, args.out, args.save_path, args.early_stop_iter)

    run_stage(stage)


if __name__ == "__main__":
    main()
