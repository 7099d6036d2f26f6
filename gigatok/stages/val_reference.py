"""Build the rFID reference from the validation images: center crops as PNGs plus a shuffled npz (`val_ddp.py`).

Writes
  <sample-dir>/val_<dataset>/{idx:06d}.png   every image under --data-path, ADM center crop to --image-size
  <sample-dir>/val_<dataset>.npz             arr_0: all of them, uint8 (N, S, S, 3), in a random order drawn from
                                             --global-seed
The official script shuffles because the Inception Score is averaged over consecutive splits of 5,000 images and
ImageNet folders are sorted by class ("very important for IS"). rFID, sFID, precision and recall compare the
reconstructions with this reference as SETS, so the two files need not be in the same order. No Inception
statistics are stored: the evaluator computes them from arr_0 (as the official TF evaluator does for this file).

The build runs once: with a complete npz in place a re-run does nothing; an interrupted run keeps the PNGs it
already wrote. Run it with torchrun (scripts/val.sh) or as a single process (`gigatok val_reference`);
each rank crops a strided shard of the images, rank 0 packs the npz.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset
from tqdm import tqdm

from gigatok.data.images import ImageFolderDataset
from gigatok.data.transforms import center_crop_arr
from gigatok.errors import UserError
from gigatok.eval.npz import npz_info, write_image_npz
from gigatok.eval.recon_metrics import read_png_images
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    all_gather_objects,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.io import save_png_atomic
from gigatok.infra.runtime import build_loader

OFFICIAL_COUNTS = {"imagenet": 50000, "coco": 5000}  # the official script asserts these; we only warn




def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Official flags of val_ddp.py (same names and defaults).
    parser.add_argument("--data-path", type=str, required=True,
                        help="validation images (e.g. ImageNet val in class folders), searched recursively")
    parser.add_argument("--dataset", type=str, choices=["imagenet", "coco"], default="imagenet",
                        help="names the output (val_<dataset>); both read an image folder")
    parser.add_argument("--image-size", type=int, default=256,
                        help="center-crop size (official choices 256, 512; any positive size is accepted)")
    parser.add_argument("--sample-dir", type=str, default="results/reconstructions",
                        help="output folder of the reference npz (default: %(default)s)")
    parser.add_argument("--per-proc-batch-size", type=int, default=32, help="images per batch and process")
    parser.add_argument("--global-seed", type=int, default=0, help="seeds the shuffle of the npz")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process")
    return parser.parse_args(argv)


class CenterCropUint8:
    """Picklable transform: PIL image -> (S, S, 3) uint8 tensor of its ADM center crop.

    The official script goes through the [-1, 1] float tensor and back (`clamp(127.5 x + 128)` truncated); that
    round trip returns exactly these pixel values, so we skip it.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, pil_image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(center_crop_arr(pil_image, self.image_size), dtype=np.uint8))


def build_reference(args: argparse.Namespace) -> Path:
    """The stage; returns the npz path."""
    # Check flags and the existing output before any work.
    if args.image_size <= 0 or args.per_proc_batch_size <= 0 or args.num_workers < 0:
        raise UserError("--image-size and --per-proc-batch-size must be positive, --num-workers non-negative.")
    dist_info = init_distributed("cpu")  # cropping is CPU work; gloo is enough for the one gather below
    rank, world_size = dist_info.rank, dist_info.world_size
    logger = setup_logging()
    folder = Path(args.sample_dir) / f"val_{args.dataset}"
    npz_path = Path(args.sample_dir) / f"val_{args.dataset}.npz"
    dataset = ImageFolderDataset(args.data_path, transform=CenterCropUint8(args.image_size))
    num_images = len(dataset)
    if npz_path.is_file():
        info = npz_info(npz_path)
        if (info["count"], info["height"], info["width"]) == (num_images, args.image_size, args.image_size):
            logger.info(f"'{npz_path}' already holds the {num_images} reference images: nothing to do")
            return npz_path
        raise UserError(
            f"'{npz_path}' holds {info['count']} images of {info['width']}x{info['height']}, but '{args.data_path}' "
            f"has {num_images} images and --image-size is {args.image_size}: it was built from other data. Delete it "
            f"(and '{folder}') to rebuild, or pass another --sample-dir."
        )
    expected = OFFICIAL_COUNTS[args.dataset]
    if num_images != expected:
        logger.warning(f"{num_images} images under '{args.data_path}', not the official {expected} of "
                       f"{args.dataset}: rFID against this reference is not comparable with published numbers")

    # Crop and save the shard's images that an earlier run has not written yet (PNGs are written atomically).
    folder.mkdir(parents=True, exist_ok=True)
    shard = [i for i in range(rank, num_images, world_size) if not (folder / f"{i:06d}.png").is_file()]
    logger.info(f"{num_images} images under '{args.data_path}' -> {args.image_size} px center crops in "
                f"'{folder}' ({len(shard)} to write on rank 0 of {world_size})")
    loader = build_loader(Subset(dataset, shard), args.per_proc_batch_size, num_workers=args.num_workers,
                          device=torch.device("cpu"))  # center crops only: nothing goes to a GPU
    for images_uint8, indices in tqdm(loader, disable=not is_main_process(), desc="center crop"):
        for image_uint8, idx in zip(images_uint8.numpy(), indices.tolist()):  # (S, S, 3) uint8
            save_png_atomic(folder / f"{idx:06d}.png", image_uint8)

    # Rank 0 packs the npz once every rank is done (the gather is the synchronisation point).
    all_gather_objects(len(shard))
    if not is_main_process():
        return npz_path
    order = np.random.default_rng(args.global_seed).permutation(num_images)
    images_uint8 = read_png_images([folder / f"{i:06d}.png" for i in order],
                                   progress=tqdm(range(num_images), desc="pack npz"))
    write_image_npz(npz_path, images_uint8, kind="reference-reconstruction")
    logger.info(f"saved '{npz_path}' [shape={images_uint8.shape}], shuffled with seed {args.global_seed}")
    return npz_path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: build_reference(args))


if __name__ == "__main__":
    main()
