"""Pre-extract tokenizer codes of an ImageFolder tree for AR training (official `extract_codes_c2i.py`).

Every image becomes A augmented views (`--ten-crop`: `center_crop_arr` to int(S * crop_range), then the four
corners, the center and their mirror images, A = 10; otherwise the center crop and its mirror image, A = 2),
each encoded to L codes. Output: the code folder layout of `gigatok.data.codes` (memory-mappable shards of
`--shard-size` images plus `meta.json`, written by rank 0 once every shard is done).

Distributed and resumable: shard s holds images [s * shard_size, (s + 1) * shard_size); the unfinished shards
are dealt round-robin to the ranks. A shard is written to temporary files, renamed into place, then marked done
in `progress/`; a rerun with `--resume` skips every marked shard, with any number of ranks.
`--debug` also decodes the codes of the first images back to PNGs (`debug/`: the input views above their
reconstructions) for a visual check.

Run it with torchrun (scripts/extract_code_c2i.sh) or as one process (`gigatok extract_codes ...`).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset
from tqdm import tqdm

from gigatok.builders import FSQ_MODELS, load_tokenizer, resolve_tokenizer_ref
from gigatok.config import TokenizerRef, VQConfig, load_config
from gigatok.data.codes import (
    FAST_HASH_ALGORITHM,
    FORMAT_VERSION,
    META_NAME,
    CodesError,
    LabeledImageFolder,
    ViewTransform,
    codes_dtype,
    fast_file_hash,
    file_list_digest,
    shard_file_names,
)
from gigatok.data.images import find_unreadable, report_unreadable
from gigatok.data.transforms import to_uint8
from gigatok.errors import UserError
from gigatok.infra.checkpoint import resolve_checkpoint_path
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import (
    all_gather_objects,
    barrier,
    init_distributed,
    is_main_process,
    setup_logging,
)
from gigatok.infra.io import save_npy_atomic, write_json_atomic
from gigatok.infra.runtime import build_loader

SETTINGS_NAME = "extract_settings.json"
PROGRESS_DIR = "progress"
DEBUG_DIR = "debug"
DEBUG_IMAGES = 8  # --debug decodes the first 8 images of the first shard rank 0 extracts




def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Official flags of extract_codes_c2i.py (same names and defaults unless noted).
    parser.add_argument("--data-path", type=str, required=True, help="ImageFolder tree: <root>/<class>/<images>")
    parser.add_argument("--code-path", type=str, required=True, help="output folder of the codes")
    parser.add_argument("--downsample-size", type=int, default=16, help="accepted; the tokenizer fixes the grid")
    parser.add_argument("--dataset", type=str, choices=["imagenet"], default="imagenet",
                        help="imagenet = any ImageFolder tree with class sub-folders")
    parser.add_argument("--image-size", type=int, default=None,
                        help="crop size; must equal the tokenizer config's image_size (default: that size)")
    parser.add_argument("--ten-crop", action="store_true", help="10 views per image instead of center + flip")
    parser.add_argument("--crop-range", type=float, default=1.1, help="ten-crop: crop from int(size * range)")
    parser.add_argument("--global-seed", type=int, default=0, help="torch seed (recorded in meta.json)")
    parser.add_argument("--num-workers", type=int, default=24, help="DataLoader workers per process")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="decode every image first and leave out the unreadable ones (listed in the log and in "
                             "meta.json) instead of stopping at the first")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward (x views)")
    parser.add_argument("--model-config", type=str, required=True, help="tokenizer YAML, e.g. configs/vq/VQ_BL256.yaml")
    parser.add_argument("--vq-ckpt", type=str, default=None, help="tokenizer checkpoint (omitted: random weights)")
    parser.add_argument("--quant-way", type=str, choices=["vq", "fsq"], default="vq",
                        help="vq: the tokenizer of --model-config / --vq-ckpt; fsq: the official FSQ tokenizer of "
                             "--fsq-model / --fsq-ckpt / --levels (--model-config is then not read)")
    parser.add_argument("--debug", action="store_true", help="also decode the first images' codes to PNGs")
    parser.add_argument("--resume", action="store_true", help="continue an extraction: skip finished shards")
    # Ours (reconstruction_ddp.py's flags for the official FSQ tokenizer).
    parser.add_argument("--fsq-model", type=str, choices=sorted(FSQ_MODELS), default="FSQ-16",
                        help="--quant-way fsq: the official FSQ tokenizer (LlamaGen's CNN with an FSQ quantizer)")
    parser.add_argument("--fsq-ckpt", type=str, default=None, help="--quant-way fsq: its checkpoint (official layout)")
    parser.add_argument("--levels", type=str, default=None,
                        help="--quant-way fsq: values per channel, e.g. '8, 8, 8, 6, 5' (the official default)")
    parser.add_argument("--shard-size", type=int, default=10000, help="images per shard file (resume granularity)")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (default: %(default)s)")
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    if args.quant_way == "fsq" and args.vq_ckpt is not None:
        raise UserError("--quant-way fsq loads the tokenizer from --fsq-ckpt; drop --vq-ckpt (or use --quant-way vq "
                        "with --model-config for a tokenizer trained here with quantizer: fsq).")
    if args.batch_size <= 0 or args.shard_size <= 0 or args.num_workers < 0:
        raise UserError("--batch-size and --shard-size must be positive, --num-workers non-negative.")
    if args.ten_crop and args.crop_range < 1.0:
        raise UserError(f"--crop-range {args.crop_range} < 1: the ten crops are cut from a center crop of "
                         "int(image_size * crop_range) pixels, which must be at least image_size (official 1.1).")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto.")


def on_rank0(fn: Any) -> Any:
    """Run `fn()` on rank 0 and hand its result (or its user error) to every rank."""
    result: Any = None
    if is_main_process():
        try:
            result = ("ok", fn())
        except UserError as err:
            result = ("error", str(err))
    status, value = all_gather_objects(result)[0]
    if status == "error":
        raise CodesError(value)
    return value


def prepare_folder(code_path: Path, settings: dict[str, Any], num_shards: int, resume: bool) -> list[int]:
    """Rank 0: check or record the run settings; return the shards still to extract."""
    settings_file = code_path / SETTINGS_NAME
    if settings_file.is_file():
        old = json.loads(settings_file.read_text())
        if not resume:
            raise UserError(f"'{code_path}' already holds an extraction. Pass --resume to continue it, or choose "
                             "an empty --code-path (delete the folder to start over).")
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed:
            lines = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise UserError(f"--resume: the settings differ from the extraction in '{code_path}' ({lines}). "
                             "Use the original settings, or a new --code-path.")
    else:
        if (code_path / META_NAME).exists() or any(code_path.glob("codes_*.npy")):
            raise UserError(f"'{code_path}' holds codes without {SETTINGS_NAME}; choose an empty --code-path.")
        code_path.mkdir(parents=True, exist_ok=True)
        (code_path / PROGRESS_DIR).mkdir(exist_ok=True)
        write_json_atomic(settings_file, settings)
    done = {int(p.stem) for p in (code_path / PROGRESS_DIR).glob("*.json")}
    return [s for s in range(num_shards) if s not in done]


def commit_shard(code_path: Path, shard: int, start: int, codes: np.ndarray, labels: np.ndarray) -> None:
    """Write one shard atomically (tmp files, renames), then its progress marker: the marker means done."""
    codes_name, labels_name = shard_file_names(shard)
    save_npy_atomic(code_path / codes_name, codes)
    save_npy_atomic(code_path / labels_name, labels)
    write_json_atomic(code_path / PROGRESS_DIR / f"{shard:05d}.json", {
        "shard": shard, "start": start, "count": int(len(labels)), "codes": codes_name, "labels": labels_name})


def save_debug_pngs(out_dir: Path, tokenizer: torch.nn.Module, views: torch.Tensor, codes: torch.Tensor,
                    indices: list[int]) -> None:
    """One PNG per image: its A input views (top row) above the decoded codes (bottom row)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    b, a = codes.shape[:2]
    with torch.no_grad():
        recon = tokenizer.decode_code(codes.reshape(b * a, -1)).float()  # (B*A, 3, S, S)
    inputs_uint8 = to_uint8(views.reshape(b * a, *views.shape[2:])).numpy().reshape(b, a, *recon.shape[2:], 3)
    recon_uint8 = to_uint8(recon).numpy().reshape(b, a, *recon.shape[2:], 3)  # (B, A, S, S, 3)
    for i, index in enumerate(indices):
        rows = [np.concatenate(list(images[i]), axis=1) for images in (inputs_uint8, recon_uint8)]  # (S, A*S, 3)
        Image.fromarray(np.concatenate(rows, axis=0)).save(out_dir / f"{index:07d}.png")


def build_meta(args: argparse.Namespace, config_name: str, model_cls: str, codebook_size: int, num_tokens: int,
               image_size: int, views: tuple[str, ...], dataset: LabeledImageFolder, code_path: Path,
               ckpt_hash: str | None, dtype: np.dtype) -> dict[str, Any]:
    """meta.json from the progress markers (rank 0, after every shard is done)."""
    markers = sorted((json.loads(p.read_text()) for p in (code_path / PROGRESS_DIR).glob("*.json")),
                     key=lambda m: m["start"])
    count = sum(m["count"] for m in markers)
    if count != len(dataset):
        raise CodesError(f"only {count} of {len(dataset)} images are extracted in '{code_path}'; re-run with --resume")
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"checkpoint": args.vq_ckpt, "checkpoint_hash": ckpt_hash, "hash_algorithm": FAST_HASH_ALGORITHM,
                      "config": config_name, "model_cls": model_cls},
        "codebook_size": codebook_size, "num_tokens": num_tokens, "image_size": image_size,
        "augmentation": {"ten_crop": args.ten_crop, "crop_range": args.crop_range if args.ten_crop else None,
                         "num_aug": len(views), "views": list(views)},
        "count": count, "num_classes": len(dataset.classes), "classes": dataset.classes, "dtype": dtype.name,
        "shard_size": args.shard_size,
        "shards": [{"codes": m["codes"], "labels": m["labels"], "start": m["start"], "count": m["count"]}
                   for m in markers],
        "data_path": str(Path(args.data_path).resolve()),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def tokenizer_config(args: argparse.Namespace) -> tuple[VQConfig, str]:
    """(config, name for records) of the tokenizer: --model-config, or with --quant-way fsq the official FSQ
    tokenizer of --fsq-model / --levels at --image-size (default 256; `resolve_tokenizer_ref`), whose checkpoint
    --fsq-ckpt then fills `args.vq_ckpt` (the one tokenizer checkpoint every later step reads)."""
    if args.quant_way != "fsq":
        return load_config(args.model_config), Path(args.model_config).name
    config, args.vq_ckpt, name = resolve_tokenizer_ref(TokenizerRef(
        quant_way="fsq", fsq_model=args.fsq_model, fsq_ckpt=args.fsq_ckpt, levels=args.levels,
        image_size=args.image_size))
    return config, name


def extract(args: argparse.Namespace) -> Path:
    """The extraction stage; returns the code folder."""
    # Check flags and files before any expensive work.
    check_flags(args)
    config, config_name = tokenizer_config(args)
    init_args = config.model.init_args
    image_size = args.image_size or init_args.image_size
    if image_size != init_args.image_size:
        raise UserError(f"--image-size {image_size} differs from the tokenizer config's image_size "
                         f"{init_args.image_size} ('{config_name}'); pass --image-size {init_args.image_size}.")
    ckpt_hash = fast_file_hash(resolve_checkpoint_path(args.vq_ckpt)) if args.vq_ckpt else None

    # Setup distributed and logging.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    logger = setup_logging()

    # Setup data: the views of every image, and the shards still to do.
    transform = ViewTransform(image_size, use_ten_crop=args.ten_crop, crop_range=args.crop_range)
    dataset = LabeledImageFolder(args.data_path, transform)
    unreadable: dict[str, str] = {}
    if args.skip_bad_images:  # before anything is written: the shard layout follows the images that remain
        bad = find_unreadable(dataset.files, progress=is_main_process())
        if bad:
            logger.warning(report_unreadable(bad, dataset.root))
            dataset = LabeledImageFolder(args.data_path, transform, exclude=set(bad))
            unreadable = {str(k.relative_to(dataset.root)): v for k, v in bad.items()}
    code_path = Path(args.code_path)
    num_shards = math.ceil(len(dataset) / args.shard_size)
    settings = {"data_path": str(Path(args.data_path).resolve()), "num_images": len(dataset),
                "file_list_sha256": file_list_digest(dataset.files, dataset.root), "image_size": image_size,
                "ten_crop": args.ten_crop, "crop_range": args.crop_range if args.ten_crop else None,
                "model_config": config_name, "vq_ckpt_hash": ckpt_hash,
                "shard_size": args.shard_size, "global_seed": args.global_seed,
                "unreadable_images": sorted(unreadable)}
    todo = on_rank0(lambda: prepare_folder(code_path, settings, num_shards, args.resume))
    mine = todo[rank::world_size]
    views = transform.views
    how = f"ten-crop from {int(image_size * args.crop_range)} px" if args.ten_crop else "center + flip"
    logger.info(f"{len(dataset)} images in {len(dataset.classes)} classes under '{args.data_path}'; "
                f"{len(views)} views each ({how}) at {image_size} px")
    logger.info(f"{num_shards} shards of <= {args.shard_size} images, {num_shards - len(todo)} already done, "
                f"{len(todo)} to extract over {world_size} rank(s) ({len(mine)} on rank 0), device {device}")

    # Create the tokenizer. Same seed on every rank, so random weights (tests) agree across ranks and resumes.
    torch.manual_seed(args.global_seed)
    if args.vq_ckpt is None:
        logger.warning("no --vq-ckpt given: the tokenizer has RANDOM weights, the codes are meaningless")
    tokenizer = load_tokenizer(args.vq_ckpt, config, device=device)
    num_tokens, codebook_size = tokenizer.num_tokens, tokenizer.codebook_size
    dtype = codes_dtype(codebook_size)
    logger.info(f"tokenizer {config_name}: {num_tokens} codes per view, codebook {codebook_size}, "
                f"stored as {dtype.name}; output '{code_path}'")

    # Extract: one shard at a time, committed atomically.
    debug_left = DEBUG_IMAGES if args.debug and is_main_process() else 0
    for shard in mine:
        start = shard * args.shard_size
        subset = Subset(dataset, range(start, min(start + args.shard_size, len(dataset))))
        loader = build_loader(subset, args.batch_size, num_workers=args.num_workers, device=device)
        codes_out = np.empty((len(subset), len(views), num_tokens), dtype=dtype)  # (n, A, L)
        labels_out = np.empty((len(subset),), dtype=np.int64)
        row = 0
        for batch_views, labels, indices in tqdm(loader, disable=not is_main_process(), desc=f"shard {shard}"):
            b, a = batch_views.shape[:2]
            with torch.no_grad():
                # (B, A, 3, S, S) -> (B*A, 3, S, S) -> codes (B*A, L) -> (B, A, L)
                codes = tokenizer.encode_to_codes(batch_views.reshape(b * a, *batch_views.shape[2:]).to(device))
            codes = codes.reshape(b, a, -1)
            codes_out[row:row + b] = codes.cpu().numpy().astype(dtype)
            labels_out[row:row + b] = labels.numpy()
            row += b
            if debug_left > 0:
                take = min(debug_left, b)
                save_debug_pngs(code_path / DEBUG_DIR, tokenizer, batch_views[:take], codes[:take],
                                indices[:take].tolist())
                debug_left -= take
        commit_shard(code_path, shard, start, codes_out, labels_out)

    # Rank 0 writes meta.json once every rank is done.
    barrier()

    def write_meta() -> int:
        meta = build_meta(args, config_name, config.model.model_cls, codebook_size, num_tokens,
                          image_size, views, dataset, code_path, ckpt_hash, dtype)
        meta["unreadable_images"] = sorted(unreadable)  # left out by --skip-bad-images (relative paths)
        write_json_atomic(code_path / META_NAME, meta)
        return len(meta["shards"])

    written = on_rank0(write_meta)
    logger.info(f"extracted {len(dataset)} images x {len(views)} views x {num_tokens} codes into {written} "
                f"shards; wrote '{code_path / META_NAME}'")
    return code_path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: extract(args))


if __name__ == "__main__":
    main()
