"""What the class-conditional samplers share: flags, flag checks, model loading, one batch of images, chunk files.

Used by the entry points `gigatok.stages.sample_c2i_visualization` (class grids) and `gigatok.stages.sample_c2i` (FID samples);
entry points never import each other, so everything both need lives here (level 2, next to gigatok.builders).

Chunks (gigatok.stages.sample_c2i): the N samples are cut into fixed chunks of consecutive global sample indices, each
sampled by one `generate()` call from its own generator seeded by (global seed, first index). A chunk's images
therefore depend neither on the number of ranks nor on interruptions; every finished chunk is one `.npz` file
written atomically (`chunk_000123.npz`: arr_0 (n, H, W, 3) uint8, arr_1 (n,) int64 labels), so a restarted job
skips it.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gigatok.builders import (
    build_gpt,
    build_gpt_config,
    load_gpt,
    load_tokenizer,
    recorded_gpt_fields,
)
from gigatok.config import VQConfig
from gigatok.data.transforms import to_uint8
from gigatok.errors import UserError
from gigatok.gpt.generate import cfg_schedule_values, generate
from gigatok.gpt.model import GPT_MODELS
from gigatok.infra.checkpoint import (
    CheckpointError,
    extract_state_dict,
    read_checkpoint,
    resolve_checkpoint_path,
)
from gigatok.infra.io import save_npz_atomic, write_text_atomic

_SEED_MUL = 1_000_003  # any odd constant: mixes (seed, index) pairs into distinct generator seeds


def add_sampler_args(parser: argparse.ArgumentParser) -> None:
    """The flags both samplers share (official names of sample_c2i_ddp_visualization.py / sample_c2i_cfg_search.py;
    defaults noted where ours differ)."""
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
    parser.add_argument("--rope", action="store_true", help="GPT with 1D RoPE instead of learned positions")
    parser.add_argument("--adaLN", action="store_true", help="not supported (never released)")
    parser.add_argument("--simple-adaLN", action="store_true", help="not supported (never released)")
    parser.add_argument("--gpt-2d", action="store_true", help="LlamaGen GPT with 2D RoPE")
    parser.add_argument("--qk-norm", action="store_true", help="GPT with LayerNorm on queries and keys")
    parser.add_argument("--step-start-ratio", type=float, default=0.18,
                        help="first guided fraction of the codes for --cfg-schedule step")
    # Ours.
    parser.add_argument("--ema", action="store_true", help="load the checkpoint's 'ema' weights")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto")


def check_sampler_flags(args: argparse.Namespace) -> None:
    """Reject unsupported or inconsistent shared flags before any model is built."""
    if args.gpt_type != "c2i":
        raise UserError("--gpt-type t2i is not supported: GigaTok samples class-conditional GPTs (--gpt-type c2i).")
    if args.quant_way != "vq":
        raise UserError(f"--quant-way {args.quant_way} is not supported: GigaTok tokenizers are VQ (--quant-way vq).")
    if args.adaLN or args.simple_adaLN:
        raise UserError("--adaLN / --simple-adaLN are not supported: no released GigaTok GPT uses adaptive "
                         "LayerNorm; drop the flag.")
    if args.rope and args.gpt_2d:
        raise UserError("--rope (GigaTok 1D RoPE) and --gpt-2d (LlamaGen 2D RoPE) exclude each other; pass one.")
    if args.tok_config is None:
        raise UserError("--tok-config is required: the tokenizer's YAML, e.g. configs/vq/VQ_XLXXL256.yaml, "
                         "matching --vq-ckpt.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto.")
    if args.per_proc_batch_size <= 0:
        raise UserError(f"--per-proc-batch-size must be positive, got {args.per_proc_batch_size}.")


def resolve_image_sizes(args: argparse.Namespace, config: VQConfig) -> tuple[int, int]:
    """(generated size, saved size): --image-size must be the tokenizer's; --image-size-eval defaults to it."""
    config_size = config.model.init_args.image_size
    image_size = args.image_size or config_size
    if image_size != config_size:
        raise UserError(
            f"--image-size {image_size} differs from the tokenizer config's image_size {config_size} "
            f"('{args.tok_config}'). Pass --image-size {config_size} (the official default 384 does not fit the "
            "256 px GigaTok tokenizers), or omit the flag."
        )
    return image_size, args.image_size_eval or image_size


def cfg_schedule_kwargs(args: argparse.Namespace) -> dict[str, float]:
    """Schedule options of the official samplers: only `step` takes one (--step-start-ratio); validated here."""
    kwargs = {"window_start": args.step_start_ratio} if args.cfg_schedule == "step" else {}
    try:
        cfg_schedule_values(args.cfg_scale, 2, args.cfg_schedule, kwargs, args.cfg_interval)
    except ValueError as err:
        raise UserError(f"--cfg-schedule: {err}") from None
    return kwargs


def check_checkpoint_files(args: argparse.Namespace) -> None:
    """A missing --vq-ckpt / --gpt-ckpt file fails here, before the models are built."""
    for ckpt in (args.vq_ckpt, args.gpt_ckpt):
        if ckpt is not None:
            resolve_checkpoint_path(ckpt)


def resolve_dtype(precision: str, device: torch.device, logger: logging.Logger) -> tuple[str, torch.dtype]:
    """(effective precision name, GPT dtype); fp16 on CPU falls back to fp32 with a warning."""
    if precision == "fp16" and device.type == "cpu":
        logger.warning("--precision fp16 is not supported on CPU; running in fp32 instead")
        precision = "none"
    return precision, {"none": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


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


def gpt_pos_type(args: argparse.Namespace) -> str:
    return "rope_2d" if args.gpt_2d else "rope_1d" if args.rope else "learned_1d"


def load_models(args: argparse.Namespace, config: VQConfig, device: torch.device, dtype: torch.dtype,
                logger: logging.Logger) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The tokenizer (fp32, eval) and the GPT sized for its codes (cast to `dtype`, eval)."""
    if args.vq_ckpt is None:
        logger.warning("!!! no --vq-ckpt: the tokenizer has RANDOM weights, the images will be noise "
                       "(smoke tests only) !!!")
    tokenizer = load_tokenizer(args.vq_ckpt, config, device=device)
    num_token = tokenizer.num_tokens if args.num_token is None else args.num_token
    if num_token != tokenizer.num_tokens:
        raise UserError(f"--num-token {num_token} differs from the tokenizer's {tokenizer.num_tokens} codes per "
                         "image; decoding a partial sequence is not supported. Omit --num-token.")
    # The GPT's vocabulary and length follow the tokenizer, as in the official sampler.
    gpt_kwargs: dict[str, Any] = {
        "pos_type": gpt_pos_type(args), "vocab_size": tokenizer.codebook_size, "block_size": num_token,
        "num_classes": args.num_classes, "cls_token_num": args.cls_token_num, "use_qk_norm": args.qk_norm,
    }
    try:
        build_gpt_config(args.gpt_model, **gpt_kwargs)
    except ValueError as err:  # e.g. --cls-token-num other than 1, --gpt-2d with a non-square token count
        raise UserError(f"cannot build {args.gpt_model} for this tokenizer: {err}") from None
    if args.gpt_ckpt is None:
        logger.warning("!!! no --gpt-ckpt: the GPT has RANDOM weights, the samples are meaningless "
                       "(smoke tests only) !!!")
        gpt = build_gpt(args.gpt_model, **gpt_kwargs).to(device).eval()
    else:
        ckpt = read_checkpoint(args.gpt_ckpt)
        recorded = recorded_gpt_fields(ckpt)  # our runs record their GPT config; official files don't
        if recorded is not None:
            if recorded.get("num_classes") != args.num_classes:
                raise UserError(f"--gpt-ckpt '{args.gpt_ckpt}' was trained with {recorded.get('num_classes')} "
                                 f"classes but --num-classes is {args.num_classes}: pass --num-classes "
                                 f"{recorded.get('num_classes')}.")
            gpt_kwargs = {**gpt_kwargs, **{k: v for k, v in recorded.items() if k not in gpt_kwargs}}
        if args.ema and "ema" not in ckpt:
            logger.warning(f"--ema: '{args.gpt_ckpt}' has no 'ema' entry; using its 'model' weights")
        try:
            gpt = load_gpt(ckpt, args.gpt_model, use_ema=args.ema, device=device, **gpt_kwargs)
        except CheckpointError as err:
            raise CheckpointError(f"--gpt-ckpt '{args.gpt_ckpt}' with --gpt-model {args.gpt_model}: {err}"
                                  f"{gpt_size_hint(ckpt, args.gpt_model)}") from None
        del ckpt
    return tokenizer, gpt.to(dtype)


def generate_images(gpt: torch.nn.Module, tokenizer: torch.nn.Module, labels: torch.Tensor, seed: int,
                    args: argparse.Namespace, schedule_kwargs: dict[str, float], image_size: int,
                    image_size_eval: int) -> np.ndarray:
    """Sample codes for `labels` (B,) int64 with the sampling flags of `args`, decode them, convert to uint8.

    Conversion as the official samplers: bicubic `F.interpolate` (no antialias) when the saved size differs, then
    `clamp(127.5 x + 128, 0, 255)` truncated to uint8.

    Returns:
        (B, S_eval, S_eval, 3) uint8 numpy array.
    """
    generator = torch.Generator(labels.device).manual_seed(seed)
    codes = generate(gpt, labels, tokenizer.num_tokens, cfg_scale=args.cfg_scale, cfg_schedule=args.cfg_schedule,
                     cfg_schedule_kwargs=schedule_kwargs, cfg_interval=args.cfg_interval,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator,
                     compile=args.compile)  # (B, L) int64
    with torch.no_grad():
        images = tokenizer.decode_code(codes).float()  # (B, 3, S, S), unclamped ~[-1, 1]
        if image_size_eval != image_size:
            images = F.interpolate(images, size=(image_size_eval, image_size_eval), mode="bicubic")
    return to_uint8(images).numpy()  # (B, S_eval, S_eval, 3)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header ([] when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_csv_row(path: Path, row: dict[str, Any], columns: list[str]) -> None:
    """Append one row (None -> empty) by an atomic rewrite; columns of an existing file that `columns` lacks are
    kept after them."""
    rows = read_csv_rows(path)
    columns = columns + [c for c in (rows[0].keys() if rows else []) if c not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows([*rows, {k: "" if v is None else v for k, v in row.items()}])
    write_text_atomic(path, text.getvalue())


# ---- FID sampling plan and chunk files (gigatok.stages.sample_c2i) ----

def uniform_class_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Class of every global sample index: each class num_samples // num_classes times, interleaved.

    Sample i has class i % num_classes for the first (num_samples // C) * C indices, so any prefix is nearly
    balanced and every chunk mixes classes. The remaining num_samples % C samples go to classes spread evenly over
    [0, C) (class floor(j * C / r) for the j-th of r), deterministic. (The official samplers draw
    `torch.randint(0, C)` per batch instead, so their class counts vary by about +-sqrt(N / C).)

    Returns:
        (num_samples,) int64 labels in [0, num_classes).
    """
    full, rest = divmod(num_samples, num_classes)
    extra = (np.arange(rest, dtype=np.int64) * num_classes) // max(rest, 1)  # (rest,), strictly increasing
    return np.concatenate([np.tile(np.arange(num_classes, dtype=np.int64), full), extra])


def chunk_bounds(num_samples: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) global sample indices of every chunk; the last one may be shorter."""
    return [(start, min(start + chunk_size, num_samples)) for start in range(0, num_samples, chunk_size)]


def chunk_seed(global_seed: int, start: int) -> int:
    """Generator seed of the chunk beginning at global sample index `start` (independent of ranks and resumes)."""
    return ((global_seed * _SEED_MUL + start) * _SEED_MUL + 1) % (2**63 - 1)


def chunk_path(chunk_dir: Path, index: int) -> Path:
    return chunk_dir / f"chunk_{index:06d}.npz"


def save_chunk(path: Path, images_uint8: np.ndarray, labels: np.ndarray) -> None:
    """Atomically write one chunk: arr_0 (n, H, W, 3) uint8, arr_1 (n,) int64."""
    save_npz_atomic(path, arr_0=images_uint8, arr_1=labels)


def done_chunks(chunk_dir: Path, num_chunks: int) -> set[int]:
    """Indices of the chunk files present (temp files of interrupted writes never count)."""
    return {i for i in range(num_chunks) if chunk_path(chunk_dir, i).is_file()}


def load_chunks(chunk_dir: Path, bounds: list[tuple[int, int]], labels: np.ndarray) -> np.ndarray:
    """All chunks' images in index order, each checked against the plan (one preallocated array: 50k 256 px
    images are 9.8 GB, so no second copy is made).

    Returns:
        (N, H, W, 3) uint8.

    Raises:
        UserError: a chunk is missing (ranks without a shared file system) or does not fit the plan.
    """
    images: np.ndarray | None = None
    for i, (start, end) in enumerate(bounds):
        path = chunk_path(chunk_dir, i)
        if not path.is_file():
            raise UserError(f"chunk file '{path}' is missing after sampling. Every rank writes its chunks into "
                             "--sample-dir, so multi-node runs need a shared file system; rerun to sample it.")
        with np.load(path) as data:
            chunk, chunk_labels = data["arr_0"], data["arr_1"]
        if images is None:
            images = np.empty((bounds[-1][1], *chunk.shape[1:]), dtype=np.uint8)  # (N, H, W, 3)
        if chunk.shape != (end - start, *images.shape[1:]) or not np.array_equal(chunk_labels, labels[start:end]):
            raise UserError(f"chunk file '{path}' does not match this run's sampling plan (samples {start}.."
                             f"{end - 1}, {images.shape[1:]} images). Delete '{chunk_dir}' to sample again.")
        images[start:end] = chunk
    assert images is not None, "no chunks planned"
    return images
