"""Sample class-conditional images with a GPT and a GigaTok tokenizer (`sample_c2i_ddp_visualization.py`).

For every class of `--class-idx` it samples ceil(qual-num / #classes) images (`--qual-num` is the total, as in
the official script), decodes the codes with the tokenizer and writes into `--sample-dir`:
  class_<c>_grid.png                  the class's images, 6 per row (a multiple of 6 when there are >= 6)
  multi_class_grid.png                the first image of every class, classes ascending, 6 per row
  multi_class_grid_cls_indices.txt    the classes of multi_class_grid.png in the same rows x columns layout
  samples.npz                         every image: arr_0 (N, H, W, 3) uint8, labels (N,) int64, by class then index

Settings: the official flags (`--help`), each a field of the model / tokenizer / sample sections of
`gigatok.config.GPTSampleConfig`, plus --qual-num and --class-idx; the GPT's shape is the one its checkpoint records.

Run it with torchrun (scripts/sample_c2i_visualization.sh) or as a single process
(`gigatok sample_c2i_visualization ...`). The work is cut into batches of at most
`--per-proc-batch-size` images of one class, dealt round-robin to the ranks; each batch draws from its own
generator seeded by (global seed, class, first index), so the images do not depend on the number of ranks.
"""
from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gigatok.config import GPTSampleConfig
from gigatok.config.flags import given_flags, resolve_config, split_overrides
from gigatok.engine.sampling import (
    add_sampler_args,
    cfg_schedule_kwargs,
    check_checkpoint_files,
    check_sampler_config,
    generate_images,
    load_models,
    load_tokenizer_config,
    resolve_image_sizes,
    sampling_dtype,
)
from gigatok.errors import UserError
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    all_gather_objects,
    barrier,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.io import save_npz_atomic, save_png_atomic, write_text_atomic

GRID_COLUMNS = 6  # official: every grid has 6 columns and 2 px black padding (torchvision make_grid)
GRID_PADDING = 2


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


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    """(args, flag table, `--section.key=value` overrides)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    table = add_sampler_args(parser)  # the official flags shared with sample_c2i_cfg_search.py (model/tokenizer/sample)
    parser.add_argument("--qual-num", type=int, default=100, help="total number of images, split over the classes")
    parser.add_argument("--class-idx", type=parse_class_idx, default=[207, 360, 387, 974, 88, 979, 417, 279],
                        help="comma-separated classes, e.g. '22,388,90,978'")
    args, rest = parser.parse_known_args(argv)
    return args, table, split_overrides(parser, rest)


def check_flags(args: argparse.Namespace, num_classes: int) -> None:
    """Reject inconsistent grid flags (the classes are checked against the GPT's)."""
    if args.qual_num <= 0:
        raise UserError(f"--qual-num must be positive, got {args.qual_num}.")
    if not args.class_idx:
        raise UserError("--class-idx is empty: pass classes like '22,388,90,978'.")
    if len(set(args.class_idx)) != len(args.class_idx):
        raise UserError(f"--class-idx lists a class twice ({args.class_idx}); list each class once.")
    bad = [c for c in args.class_idx if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"--class-idx {bad} outside [0, --num-classes={num_classes}).")


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


def sample(config: GPTSampleConfig, args: argparse.Namespace, report: list[str] = ()) -> Path:
    """The sampling stage; returns the output folder."""
    # Check settings and files before any expensive work.
    check_sampler_config(config)
    check_flags(args, config.model.num_classes or 1000)
    vq_config = load_tokenizer_config(config)  # --tok-config, or --quant-way fsq's official FSQ tokenizer
    image_size, image_size_eval = resolve_image_sizes(config, vq_config)
    check_checkpoint_files(config)
    schedule_kwargs = cfg_schedule_kwargs(config)
    s = config.sample

    # Setup distributed, logging and precision.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    logger = setup_logging()
    torch.manual_seed(s.global_seed * world_size + rank)  # nothing draws from it; generators below do
    _, dtype = sampling_dtype(s.precision, device)

    # Create the models (the GPT sized by its checkpoint); the classes must be the GPT's.
    tokenizer, gpt = load_models(config, vq_config, device, dtype)
    check_flags(args, config.model.num_classes)
    num_token = tokenizer.num_tokens

    # Plan the work: batches of one class each, dealt round-robin to the ranks.
    classes = sorted(args.class_idx)
    per_class = math.ceil(args.qual_num / len(classes))
    units = plan_work(classes, per_class, s.per_proc_batch_size)
    local_units = units[rank::world_size]
    logger.info(f"world size {world_size}, device {device}, GPT {config.model.gpt_model} in {dtype}, tokenizer in "
                "fp32")
    logger.info(f"{len(classes)} classes x {per_class} images = {len(classes) * per_class} images "
                f"({args.qual_num} requested), {num_token} codes each, {len(units)} batches of <= "
                f"{s.per_proc_batch_size} ({len(local_units)} on rank 0), {image_size} px -> {image_size_eval} px")
    start = f", start {s.step_start_ratio}" if schedule_kwargs else ""
    logger.info(f"cfg {s.cfg_scale} ({s.cfg_schedule}{start}, interval {s.cfg_interval}), top-k {s.top_k}, top-p "
                f"{s.top_p}, temperature {s.temperature}, seed {s.global_seed}")

    # Sample and decode.
    results: list[tuple[int, int, np.ndarray]] = []
    for unit in tqdm(local_units, disable=not is_main_process(), desc="sample"):
        labels = torch.full((unit.num,), unit.cls, dtype=torch.long, device=device)  # (B,)
        images_uint8 = generate_images(gpt, tokenizer, labels, unit_seed(s.global_seed, unit), config,
                                       schedule_kwargs, image_size, image_size_eval)  # (B, S, S, 3) uint8
        results.append((unit.cls, unit.start, images_uint8))

    # Gather on rank 0 (works without a shared file system) and write the outputs.
    gathered = all_gather_objects(results)
    out_dir = Path(s.sample_dir)
    if is_main_process():
        by_unit = {(c, start): imgs for part in gathered for c, start, imgs in part}
        images_uint8 = np.concatenate([by_unit[(u.cls, u.start)] for u in units])  # (N, S, S, 3), class-major
        labels = np.repeat(np.array(classes, dtype=np.int64), per_class)  # (N,)
        save_outputs(out_dir, images_uint8, labels, classes)
        logger.info(f"saved {len(labels)} samples, {len(classes)} class grids and the multi-class grid to "
                    f"'{out_dir}'")
    barrier()
    return out_dir


def save_outputs(out_dir: Path, images_uint8: np.ndarray, labels: np.ndarray, classes: list[int]) -> None:
    """Write the per-class grids, the multi-class grid with its class layout, and samples.npz."""
    firsts = []
    for c in classes:
        class_images = images_uint8[labels == c]
        save_png_atomic(out_dir / f"class_{c}_grid.png", make_grid(class_images[:grid_count(len(class_images))]))
        firsts.append(class_images[0])
    shown = grid_count(len(classes))
    save_png_atomic(out_dir / "multi_class_grid.png", make_grid(np.stack(firsts[:shown])))
    layout = np.array(classes[:shown], dtype=np.int64).reshape(-1, min(GRID_COLUMNS, shown))  # (rows, cols)
    text = io.StringIO()
    np.savetxt(text, layout, fmt="%d")
    write_text_atomic(out_dir / "multi_class_grid_cls_indices.txt", text.getvalue())
    save_npz_atomic(out_dir / "samples.npz", arr_0=images_uint8, labels=labels)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args, table, overrides = parse_args(argv)

    def stage() -> Path:
        config, report = resolve_config(GPTSampleConfig, args.config, given_flags(args, table), overrides)
        return sample(config, args, report)

    run_stage(stage)


if __name__ == "__main__":
    main()
