"""Sample class-conditional images with a GPT and a GigaTok tokenizer (`sample_c2i_ddp_visualization.py`).

For every class of `--class-idx` it samples ceil(qual-num / #classes) images (`--qual-num` is the total, as in
the official script), decodes the codes with the tokenizer and writes into `--sample-dir`:
  class_<c>_grid.png                  the class's images, 6 per row (a multiple of 6 when there are >= 6)
  multi_class_grid.png                the first image of every class, classes ascending, 6 per row
  multi_class_grid_cls_indices.txt    the classes of multi_class_grid.png in the same rows x columns layout
  samples.npz                         every image: arr_0 (N, H, W, 3) uint8, labels (N,) int64, by class then index

Run it with torchrun (scripts/sample_c2i_visualization.sh) or as a single process
(`python -m gigatok.sample_c2i_visualization ...`). The work is cut into batches of at most
`--per-proc-batch-size` images of one class, dealt round-robin to the ranks; each batch draws from its own
generator seeded by (global seed, class, first index), so the images do not depend on the number of ranks.
"""
from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from gigatok.builders import load_tokenizer
from gigatok.builders_gpt import build_gpt, build_gpt_config, load_gpt
from gigatok.config import ConfigError, VQConfig, load_config
from gigatok.data.transforms import to_uint8
from gigatok.gpt.generate import cfg_schedule_values, generate
from gigatok.gpt.model import GPT_MODELS
from gigatok.infra.checkpoint import (
    CheckpointError,
    extract_state_dict,
    read_checkpoint,
    resolve_checkpoint_path,
)
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    all_gather_objects,
    barrier,
    init_distributed,
    is_main_process,
    setup_logging,
)

GRID_COLUMNS = 6  # official: every grid has 6 columns and 2 px black padding (torchvision make_grid)
GRID_PADDING = 2


class UsageError(ValueError):
    """A bad flag or combination of flags."""


USER_ERRORS = (UsageError, ConfigError, CheckpointError)


@dataclass(frozen=True)
class WorkUnit:
    """One generate() call: `num` images of class `cls`, indices start .. start + num - 1 within the class."""

    cls: int
    start: int
    num: int


def parse_class_idx(text: str) -> list[int]:
    """'22,388,90,978' -> [22, 388, 90, 978] (argparse type of --class-idx)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class indices like '22,388,90,978', got '{text}'")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Official flags of sample_c2i_ddp_visualization.py (same names; defaults noted where ours differ).
    parser.add_argument("--gpt-model", type=str, choices=list(GPT_MODELS), default="GPT-B")
    parser.add_argument("--gpt-ckpt", type=str, default=None, help="GPT checkpoint; omitted: random weights")
    parser.add_argument("--gpt-type", type=str, choices=["c2i", "t2i"], default="c2i")
    parser.add_argument("--from-fsdp", action="store_true", help="the file is a bare state dict (read either way)")
    parser.add_argument("--cls-token-num", type=int, default=1)
    parser.add_argument("--precision", type=str, choices=["none", "fp16", "bf16"], default="bf16",
                        help="dtype the GPT is cast to (fp16 on CPU falls back to fp32); the tokenizer runs in fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    parser.add_argument("--vq-ckpt", type=str, default=None, help="tokenizer checkpoint; omitted: random weights")
    parser.add_argument("--tok-config", type=str, default=None, help="tokenizer YAML, e.g. configs/vq/VQ_XLXXL256.yaml")
    parser.add_argument("--quant-way", type=str, choices=["vq", "fsq"], default="vq")
    parser.add_argument("--image-size", type=int, default=None,
                        help="must equal the tokenizer config's image_size (default: that size; official: 384)")
    parser.add_argument("--image-size-eval", type=int, default=None,
                        help="size of the saved images (bicubic resize); default: --image-size (official: 256)")
    parser.add_argument("--downsample-size", type=int, choices=[8, 16], default=16,
                        help="accepted for compatibility; the tokenizer config fixes the token grid")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--cfg-schedule", type=str, default="constant")
    parser.add_argument("--cfg-interval", type=float, default=-1)
    parser.add_argument("--sample-dir", type=str, default="samples")
    parser.add_argument("--per-proc-batch-size", type=int, default=32)
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=0, help="0: off")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0: off")
    parser.add_argument("--num-token", type=int, default=None, help="codes per image (default: the tokenizer's)")
    parser.add_argument("--qual-num", type=int, default=100, help="total number of images, split over the classes")
    parser.add_argument("--rope", action="store_true", help="GPT with 1D RoPE instead of learned positions")
    parser.add_argument("--adaLN", action="store_true", help="not supported (never released)")
    parser.add_argument("--simple-adaLN", action="store_true", help="not supported (never released)")
    parser.add_argument("--class-idx", type=parse_class_idx, default=[207, 360, 387, 974, 88, 979, 417, 279],
                        help="comma-separated classes, e.g. '22,388,90,978'")
    # Official flags of sample_c2i_cfg_search.py / val_loss_cal.py that this sampler also needs.
    parser.add_argument("--gpt-2d", action="store_true", help="LlamaGen GPT with 2D RoPE")
    parser.add_argument("--qk-norm", action="store_true", help="GPT with LayerNorm on queries and keys")
    parser.add_argument("--step-start-ratio", type=float, default=0.18,
                        help="first guided fraction of the codes for --cfg-schedule step")
    parser.add_argument("--ema", action="store_true", help="load the checkpoint's 'ema' weights")
    # Ours.
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto")
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    """Reject unsupported or inconsistent flags before any model is built."""
    if args.gpt_type != "c2i":
        raise UsageError("--gpt-type t2i is not supported: GigaTok samples class-conditional GPTs (--gpt-type c2i).")
    if args.quant_way != "vq":
        raise UsageError(f"--quant-way {args.quant_way} is not supported: GigaTok tokenizers are VQ (--quant-way vq).")
    if args.adaLN or args.simple_adaLN:
        raise UsageError("--adaLN / --simple-adaLN are not supported: no released GigaTok GPT uses adaptive "
                         "LayerNorm; drop the flag.")
    if args.rope and args.gpt_2d:
        raise UsageError("--rope (GigaTok 1D RoPE) and --gpt-2d (LlamaGen 2D RoPE) exclude each other; pass one.")
    if args.tok_config is None:
        raise UsageError("--tok-config is required: the tokenizer's YAML, e.g. configs/vq/VQ_XLXXL256.yaml, "
                         "matching --vq-ckpt.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto.")
    if args.per_proc_batch_size <= 0 or args.qual_num <= 0:
        raise UsageError("--per-proc-batch-size and --qual-num must be positive.")
    if not args.class_idx:
        raise UsageError("--class-idx is empty: pass classes like '22,388,90,978'.")
    if len(set(args.class_idx)) != len(args.class_idx):
        raise UsageError(f"--class-idx lists a class twice ({args.class_idx}); list each class once.")
    bad = [c for c in args.class_idx if not 0 <= c < args.num_classes]
    if bad:
        raise UsageError(f"--class-idx {bad} outside [0, --num-classes={args.num_classes}).")


def plan_work(classes: list[int], per_class: int, batch_size: int) -> list[WorkUnit]:
    """Batches of at most `batch_size` images of one class, classes ascending (the order of samples.npz)."""
    return [WorkUnit(c, start, min(batch_size, per_class - start))
            for c in sorted(classes) for start in range(0, per_class, batch_size)]


def unit_seed(global_seed: int, unit: WorkUnit) -> int:
    """Seed of one batch: a function of what it samples, not of the rank that samples it, so any number of
    ranks produces the same images (the official per-rank seed `global_seed * world_size + rank` does not)."""
    return ((global_seed * 1_000_003 + unit.cls) * 1_000_003 + unit.start) % (2**63 - 1)


def make_grid(images_uint8: np.ndarray, columns: int = GRID_COLUMNS, padding: int = GRID_PADDING) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one image, `columns` per row with black padding around each (torchvision layout)."""
    n, h, w, _ = images_uint8.shape
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    grid = np.zeros((padding + rows * (h + padding), padding + cols * (w + padding), 3), dtype=np.uint8)
    for i, image in enumerate(images_uint8):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def grid_count(n: int) -> int:
    """How many images a grid shows: the largest multiple of 6 (official), or all of them when fewer than 6
    (where the official script would fail on an empty grid)."""
    return n - n % GRID_COLUMNS if n >= GRID_COLUMNS else n


def gpt_size_hint(ckpt: Mapping[str, Any], gpt_model: str) -> str:
    """' The checkpoint holds a <size> ...' when its width and depth name another registry size, else ''."""
    try:
        state = extract_state_dict(ckpt)
    except CheckpointError:
        return ""
    if "tok_embeddings.weight" not in state:
        return ""
    dim = state["tok_embeddings.weight"].shape[1]
    n_layer = len({key.split(".")[1] for key in state if key.startswith("layers.")})
    for name, size in GPT_MODELS.items():
        if name != gpt_model and (size["dim"], size["n_layer"]) == (dim, n_layer):
            return f"\n  The checkpoint holds a {n_layer}-layer GPT of width {dim}: pass --gpt-model {name}."
    return ""


def load_models(args: argparse.Namespace, config: VQConfig, device: torch.device, dtype: torch.dtype,
                logger: logging.Logger) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The tokenizer (fp32, eval) and the GPT sized for its codes (cast to `dtype`, eval)."""
    if args.vq_ckpt is None:
        logger.warning("!!! no --vq-ckpt: the tokenizer has RANDOM weights, the images will be noise "
                       "(smoke tests only) !!!")
    tokenizer = load_tokenizer(args.vq_ckpt, config, device=device)
    num_token = tokenizer.num_tokens if args.num_token is None else args.num_token
    if num_token != tokenizer.num_tokens:
        raise UsageError(f"--num-token {num_token} differs from the tokenizer's {tokenizer.num_tokens} codes per "
                         "image; decoding a partial sequence is not supported. Omit --num-token.")
    pos_type = "rope_2d" if args.gpt_2d else "rope_1d" if args.rope else "learned_1d"
    # The GPT's vocabulary and length follow the tokenizer, as in the official sampler.
    gpt_kwargs = dict(pos_type=pos_type, vocab_size=tokenizer.codebook_size, block_size=num_token,
                      num_classes=args.num_classes, cls_token_num=args.cls_token_num, use_qk_norm=args.qk_norm)
    try:
        build_gpt_config(args.gpt_model, **gpt_kwargs)
    except ValueError as err:  # e.g. --cls-token-num other than 1, --gpt-2d with a non-square token count
        raise UsageError(f"cannot build {args.gpt_model} for this tokenizer: {err}") from None
    if args.gpt_ckpt is None:
        logger.warning("!!! no --gpt-ckpt: the GPT has RANDOM weights, the samples are meaningless "
                       "(smoke tests only) !!!")
        gpt = build_gpt(args.gpt_model, **gpt_kwargs).to(device).eval()
    else:
        ckpt = read_checkpoint(args.gpt_ckpt)
        if args.ema and "ema" not in ckpt:
            logger.warning(f"--ema: '{args.gpt_ckpt}' has no 'ema' entry; using its 'model' weights")
        try:
            gpt = load_gpt(ckpt, args.gpt_model, use_ema=args.ema, device=device, **gpt_kwargs)
        except CheckpointError as err:
            raise CheckpointError(f"--gpt-ckpt '{args.gpt_ckpt}' with --gpt-model {args.gpt_model}: {err}"
                                  f"{gpt_size_hint(ckpt, args.gpt_model)}") from None
        del ckpt
    return tokenizer, gpt.to(dtype)


def sample(args: argparse.Namespace) -> Path:
    """The sampling stage; returns the output folder."""
    # Check flags and files before any expensive work.
    check_flags(args)
    config = load_config(args.tok_config)
    config_size = config.model.init_args.image_size
    image_size = args.image_size or config_size
    if image_size != config_size:
        raise UsageError(
            f"--image-size {image_size} differs from the tokenizer config's image_size {config_size} "
            f"('{args.tok_config}'). Pass --image-size {config_size} (the official default 384 does not fit the "
            "256 px GigaTok tokenizers), or omit the flag."
        )
    image_size_eval = args.image_size_eval or image_size
    for ckpt in (args.vq_ckpt, args.gpt_ckpt):
        if ckpt is not None:
            resolve_checkpoint_path(ckpt)  # a missing file fails here, before the models are built
    schedule_kwargs = {"window_start": args.step_start_ratio} if args.cfg_schedule == "step" else {}
    try:
        cfg_schedule_values(args.cfg_scale, 2, args.cfg_schedule, schedule_kwargs, args.cfg_interval)
    except ValueError as err:
        raise UsageError(f"--cfg-schedule: {err}") from None

    # Setup distributed, logging and precision.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    logger = setup_logging()
    torch.manual_seed(args.global_seed * world_size + rank)  # nothing draws from it; generators below do
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the official samplers
        torch.backends.cudnn.allow_tf32 = True
    precision = args.precision
    if precision == "fp16" and device.type == "cpu":
        logger.warning("--precision fp16 is not supported on CPU; running in fp32 instead")
        precision = "none"
    dtype = {"none": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    # Create the models.
    tokenizer, gpt = load_models(args, config, device, dtype, logger)
    num_token = tokenizer.num_tokens

    # Plan the work: batches of one class each, dealt round-robin to the ranks.
    classes = sorted(args.class_idx)
    per_class = math.ceil(args.qual_num / len(classes))
    units = plan_work(classes, per_class, args.per_proc_batch_size)
    local_units = units[rank::world_size]
    logger.info(f"world size {world_size}, device {device}, GPT {args.gpt_model} in {dtype}, tokenizer in fp32")
    logger.info(f"{len(classes)} classes x {per_class} images = {len(classes) * per_class} images "
                f"({args.qual_num} requested), {num_token} codes each, {len(units)} batches of <= "
                f"{args.per_proc_batch_size} ({len(local_units)} on rank 0), {image_size} px -> {image_size_eval} px")
    start = f", start {args.step_start_ratio}" if schedule_kwargs else ""
    logger.info(f"cfg {args.cfg_scale} ({args.cfg_schedule}{start}, interval {args.cfg_interval}), "
                f"top-k {args.top_k}, top-p {args.top_p}, "
                f"temperature {args.temperature}, seed {args.global_seed}")

    # Sample and decode.
    results: list[tuple[int, int, np.ndarray]] = []
    for unit in tqdm(local_units, disable=not is_main_process(), desc="sample"):
        generator = torch.Generator(device).manual_seed(unit_seed(args.global_seed, unit))
        labels = torch.full((unit.num,), unit.cls, dtype=torch.long, device=device)  # (B,)
        codes = generate(gpt, labels, num_token, cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule,
                         cfg_schedule_kwargs=schedule_kwargs, cfg_interval=args.cfg_interval,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator,
                         compile=args.compile)  # (B, L) int64
        with torch.no_grad():
            images = tokenizer.decode_code(codes).float()  # (B, 3, S, S), unclamped
            if image_size_eval != image_size:
                images = F.interpolate(images, size=(image_size_eval, image_size_eval), mode="bicubic")
        results.append((unit.cls, unit.start, to_uint8(images).numpy()))  # (B, S, S, 3) uint8

    # Gather on rank 0 (works without a shared file system) and write the outputs.
    gathered = all_gather_objects(results)
    out_dir = Path(args.sample_dir)
    if is_main_process():
        by_unit = {(c, s): imgs for part in gathered for c, s, imgs in part}
        images_uint8 = np.concatenate([by_unit[(u.cls, u.start)] for u in units])  # (N, S, S, 3), class-major
        labels = np.repeat(np.array(classes, dtype=np.int64), per_class)  # (N,)
        save_outputs(out_dir, images_uint8, labels, classes)
        logger.info(f"saved {len(labels)} samples, {len(classes)} class grids and the multi-class grid to "
                    f"'{out_dir}'")
    barrier()
    return out_dir


def save_outputs(out_dir: Path, images_uint8: np.ndarray, labels: np.ndarray, classes: list[int]) -> None:
    """Write the per-class grids, the multi-class grid with its class layout, and samples.npz."""
    out_dir.mkdir(parents=True, exist_ok=True)
    firsts = []
    for c in classes:
        class_images = images_uint8[labels == c]
        Image.fromarray(make_grid(class_images[:grid_count(len(class_images))])).save(out_dir / f"class_{c}_grid.png")
        firsts.append(class_images[0])
    shown = grid_count(len(classes))
    Image.fromarray(make_grid(np.stack(firsts[:shown]))).save(out_dir / "multi_class_grid.png")
    layout = np.array(classes[:shown], dtype=np.int64).reshape(-1, min(GRID_COLUMNS, shown))  # (rows, cols)
    np.savetxt(out_dir / "multi_class_grid_cls_indices.txt", layout, fmt="%d")
    np.savez(out_dir / "samples.npz", arr_0=images_uint8, labels=labels)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: sample(args), USER_ERRORS)


if __name__ == "__main__":
    main()
