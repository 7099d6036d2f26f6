"""Reconstruct images with a tokenizer: encode to codes, decode back, save side by side (`reconstruction_ddp.py`).

Qualitative mode (`--qualitative`, the README demo) reconstructs every image under `--data-path` and writes into
`<sample-dir>/<model_cls>-<dataset>-size-<S>-size-<S_eval>-codebook-size-<K>-dim-<Dc>-seed-<seed>-<iter>/`:
  {idx:06d}.png (or {idx:06d}_{lpips:.4f}.png with --lpips)   reconstruction
  {idx:06d}_gt.png                                              center-cropped input
  grid.png                                                      the first 64 images, inputs above reconstructions
  lpips_val.txt                                                 mean LPIPS-VGG over all images (with --lpips)

Run it with torchrun (scripts/reconstruction.sh) or as a single process (`python -m gigatok.reconstruct ...`);
each rank reconstructs a strided shard of the images.
"""
from __future__ import annotations

import argparse
import os
import contextlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from gigatok.builders import load_tokenizer
from gigatok.config import ConfigError, load_config
from gigatok.data.images import ImageDataError, ImageFolderDataset
from gigatok.data.transforms import to_uint8
from gigatok.infra.checkpoint import CheckpointError
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    all_gather_objects,
    barrier,
    get_world_size,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.tokenizer.perceptual import LPIPS, LPIPSWeightsError, find_vgg16_weights, random_backbone_requested

GRID_MAX_IMAGES = 64  # the grid shows the first 64 images (8 columns), inputs above reconstructions
GRID_COLUMNS = 8


class UsageError(ValueError):
    """A bad combination of command-line flags."""


USER_ERRORS = (UsageError, ConfigError, CheckpointError, ImageDataError, LPIPSWeightsError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Official flags of reconstruction_ddp.py (same names and defaults).
    parser.add_argument("--data-path", type=str, required=True, help="folder of images, searched recursively")
    parser.add_argument("--dataset", type=str, choices=["imagenet", "coco", "imagenet_reconstruct"],
                        default="imagenet", help="only names the output folder: every choice reads an image folder")
    parser.add_argument("--image-size", type=int, default=256, help="center-crop size fed to the tokenizer")
    parser.add_argument("--image-size-eval", type=int, default=None,
                        help="size of the saved/evaluated images (bicubic resize); default: --image-size")
    parser.add_argument("--sample-dir", type=str, default="results/reconstructions/vq")
    parser.add_argument("--per-proc-batch-size", type=int, default=32)
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--quant-way", type=str, choices=["vq", "fsq", "lq"], default="vq")
    parser.add_argument("--model-config", type=str, required=True, help="tokenizer YAML, e.g. configs/vq/VQ_SS256.yaml")
    parser.add_argument("--vq-ckpt", type=str, default=None, help="tokenizer checkpoint (local path or hf://...)")
    parser.add_argument("--clear-cache", action="store_true", help="quantitative mode: delete images after rFID")
    parser.add_argument("--merge", action="store_true", help="quantitative mode: only re-read result jsons")
    parser.add_argument("--lpips", action="store_true", help="compute LPIPS-VGG per image and its mean")
    parser.add_argument("--eval-python-path", type=str, default="python")
    parser.add_argument("--gt-npz-path", type=str, default="VIRTUAL_imagenet256_labeled.npz")
    parser.add_argument("--qualitative", action="store_true", help="save reconstructions of every image as PNGs")
    # Ours.
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", type=str, choices=["none", "fp16", "bf16"], default="none",
                        help="autocast dtype for the tokenizer (LPIPS always runs in fp32)")
    parser.add_argument("--interpolate-pos-embed", action="store_true",
                        help="resize the checkpoint's positional tables when --image-size differs from the config")
    return parser.parse_args(argv)


def checkpoint_tag(vq_ckpt: str | None) -> str:
    """The `<iter>` part of the output folder: the checkpoint file name without extension (`0005000`,
    `VQ_SS256_e100`), or `init` for randomly initialised weights."""
    return "init" if vq_ckpt is None else Path(vq_ckpt).name.split(".")[0]


def make_grid(pairs: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """[(idx, gt (S, S, 3) uint8, recon (S, S, 3) uint8)] -> (rows * 2S, cols * S, 3) uint8: for every group of
    `GRID_COLUMNS` images a row of inputs above a row of reconstructions."""
    pairs = sorted(pairs, key=lambda p: p[0])[:GRID_MAX_IMAGES]
    size, columns = pairs[0][1].shape[0], min(GRID_COLUMNS, len(pairs))
    rows = (len(pairs) + columns - 1) // columns
    grid = np.zeros((rows * 2 * size, columns * size, 3), dtype=np.uint8)
    for i, (_, gt, recon) in enumerate(pairs):
        top, left = (i // columns) * 2 * size, (i % columns) * size
        grid[top:top + size, left:left + size] = gt
        grid[top + size:top + 2 * size, left:left + size] = recon
    return grid


def reconstruct(args: argparse.Namespace) -> Path:
    """The qualitative reconstruction stage; returns the output folder."""
    # Check flags and external files before any expensive work.
    if args.quant_way != "vq":
        raise UsageError(f"--quant-way {args.quant_way} is not supported: GigaTok tokenizers are VQ (--quant-way vq).")
    if not args.qualitative:
        raise UsageError(
            "only --qualitative is implemented for now: the quantitative mode (PSNR/SSIM/LPIPS/rFID over a "
            "folder, the official default) arrives with the evaluation issue (5). Add --qualitative."
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto.")
    if args.image_size <= 0 or args.per_proc_batch_size <= 0 or args.num_workers < 0:
        raise UsageError("--image-size and --per-proc-batch-size must be positive, --num-workers non-negative.")
    use_random_lpips = args.lpips and random_backbone_requested()
    if args.lpips and not use_random_lpips:
        find_vgg16_weights()  # fails here, naming the file, before data or model are touched
    config = load_config(args.model_config)
    config_size = config.model.init_args.image_size
    if args.image_size != config_size:
        if not args.interpolate_pos_embed:
            raise UsageError(
                f"--image-size {args.image_size} differs from the config's image_size {config_size} "
                f"('{args.model_config}'). The tokenizer's positional tables are trained for {config_size} px: "
                f"pass --image-size {config_size}, or add --interpolate-pos-embed to resize them (quality may drop)."
            )
        config.model.init_args.image_size = args.image_size
    image_size_eval = args.image_size_eval or args.image_size

    # Setup distributed, logging and seeds.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    logger = setup_logging()
    torch.manual_seed(args.global_seed * world_size + rank)
    amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    if amp_dtype == torch.float16 and device.type == "cpu":
        logger.warning("--precision fp16 is not supported on CPU; running in fp32 instead")
        amp_dtype = None
    if args.clear_cache or args.merge:
        logger.info("note: --clear-cache and --merge only act in the quantitative mode; ignored here")
    logger.info(f"world size {world_size}, device {device}, precision {args.precision if amp_dtype else 'fp32'}")

    # Setup data: every rank takes a strided shard, so image i is handled by rank i % world_size.
    dataset = ImageFolderDataset(args.data_path, image_size=args.image_size)
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    # More loader workers than cores per rank only adds contention (the official default 4 assumes a GPU node).
    num_workers = min(args.num_workers, max((os.cpu_count() or 1) // get_world_size(), 1))
    loader = DataLoader(shard, batch_size=args.per_proc_batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    logger.info(f"{len(dataset)} images under '{args.data_path}' ({len(shard)} on rank 0), "
                f"{args.image_size} px -> {image_size_eval} px")

    # Create the tokenizer (and LPIPS).
    if args.vq_ckpt is None:
        logger.warning("no --vq-ckpt given: the tokenizer has RANDOM weights, reconstructions will be noise")
    tokenizer = load_tokenizer(args.vq_ckpt, config, device=device, interpolate_pos_embed=args.interpolate_pos_embed)
    lpips_model = LPIPS(random_backbone=use_random_lpips).to(device) if args.lpips else None
    init_args = config.model.init_args
    folder_name = (f"{config.model.model_cls}-{args.dataset}-size-{args.image_size}-size-{image_size_eval}-"
                   f"codebook-size-{init_args.codebook_size}-dim-{init_args.codebook_embed_dim}-"
                   f"seed-{args.global_seed}-{checkpoint_tag(args.vq_ckpt)}")
    out_dir = Path(args.sample_dir) / folder_name
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info(f"writing to '{out_dir}'")

    # Reconstruct.
    lpips_sum, grid_pairs = 0.0, []
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    for images, indices in tqdm(loader, disable=not is_main_process(), desc="reconstruct"):
        images = images.to(device, non_blocking=True)  # (B, 3, S, S) in [-1, 1]
        with torch.no_grad():
            with autocast:
                codes = tokenizer.encode_to_codes(images)  # (B, L) int64
                recon = tokenizer.decode_code(codes)  # (B, 3, S, S), unclamped
            recon = recon.float()
            if image_size_eval != args.image_size:
                recon = F.interpolate(recon, size=(image_size_eval, image_size_eval), mode="bicubic")
                images = F.interpolate(images, size=(image_size_eval, image_size_eval), mode="bicubic")
            # LPIPS on the raw decoder output, like the training loss; the saved PNG is the clamped one.
            distances = lpips_model(recon, images).tolist() if lpips_model is not None else None
        recon_uint8, images_uint8 = to_uint8(recon).numpy(), to_uint8(images).numpy()  # (B, S, S, 3)
        for i, idx in enumerate(indices.tolist()):
            name = f"{idx:06d}.png" if distances is None else f"{idx:06d}_{distances[i]:.4f}.png"
            Image.fromarray(recon_uint8[i]).save(out_dir / name)
            Image.fromarray(images_uint8[i]).save(out_dir / f"{idx:06d}_gt.png")
            if idx < GRID_MAX_IMAGES:
                grid_pairs.append((idx, images_uint8[i], recon_uint8[i]))
        if distances is not None:
            lpips_sum += sum(distances)

    # Gather the grid images and the LPIPS sums on rank 0 (works without a shared file system).
    gathered = all_gather_objects((grid_pairs, lpips_sum, len(shard)))
    barrier()
    if is_main_process():
        all_pairs = [pair for pairs, _, _ in gathered for pair in pairs]
        Image.fromarray(make_grid(all_pairs)).save(out_dir / "grid.png")
        if args.lpips:
            lpips_mean = sum(s for _, s, _ in gathered) / sum(n for _, _, n in gathered)
            (out_dir / "lpips_val.txt").write_text(f"{lpips_mean:.6f}\n")
            logger.info(f"mean LPIPS-VGG over {len(dataset)} images: {lpips_mean:.4f}")
        logger.info(f"saved {len(dataset)} reconstructions and grid.png to '{out_dir}'")
    barrier()
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: reconstruct(args), USER_ERRORS)


if __name__ == "__main__":
    main()
