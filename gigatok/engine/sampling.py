"""What the class-conditional samplers share: their config sections and checks, model loading, one batch of
images, chunk files.

Used by the entry points `gigatok.stages.sample_c2i_visualization` (class grids) and `gigatok.stages.sample_c2i`
(FID samples); entry points never import each other, so everything both need lives here (level 2, next to
gigatok.builders). Both read `gigatok.config.GPTSampleConfig`: sections `model` (the GPT), `tokenizer` and `sample`,
one official flag per field.

Chunks (gigatok.stages.sample_c2i): the N samples (N = num_samples images) are cut into fixed chunks of
consecutive global sample indices, each sampled by one `generate()` call from its own generator seeded by (global
seed, first index). A chunk's images therefore depend neither on the number of ranks nor on interruptions; every
finished chunk is one `.npz` file written atomically (`chunk_000123.npz`: arr_0 (B, S, S, 3) uint8, arr_1 (B,) int64
labels, B = the chunk's samples), so a restarted job skips it.

Shape letters: B batch; S image side (square images, H = W = S); L latent tokens = codes per image (1D tokenizer:
num_latent_tokens; 2D: G*G); N a flattened count, stated where used. Images are generated at S = image_size and saved
at S = image_size_eval (after a resize when the two differ).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gigatok.builders import (
    check_gpt_flags,
    load_gpt,
    load_tokenizer,
    resolve_checkpoint_gpt,
    resolve_tokenizer_ref,
)
from gigatok.config import GPTSampleConfig, VQConfig
from gigatok.config.flags import add_config_flags
from gigatok.data.transforms import to_uint8
from gigatok.errors import UserError
from gigatok.gpt.config import GPTConfig
from gigatok.gpt.generate import cfg_schedule_values, generate
from gigatok.gpt.model import GPT
from gigatok.infra.checkpoint import (
    CheckpointError,
    read_checkpoint,
    resolve_checkpoint_path,
)
from gigatok.infra.io import save_npz_atomic
from gigatok.infra.runtime import resolve_precision

logger = logging.getLogger(__name__)

_SEED_MUL = 1_000_003  # any odd constant: mixes (seed, index) pairs into distinct generator seeds
SAMPLER_SECTIONS = ("model", "tokenizer", "sample")


def add_sampler_args(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The flags both samplers share: one per field of the `model`, `tokenizer` and `sample` sections (official
    names of sample_c2i_ddp_visualization.py / sample_c2i_cfg_search.py), plus `--config`, `--device` and the
    accepted `--from-fsdp`. Returns the flag table for `gigatok.config.flags.given_flags`."""
    parser.add_argument("--config", type=str, default=None, help="a sampling config YAML to start from")
    parser.add_argument("--from-fsdp", action="store_true", help="the file is a bare state dict (read either way)")
    parser.add_argument("--device", type=str, choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (default: %(default)s)")
    table: dict[str, str] = {}
    for section in SAMPLER_SECTIONS:
        table.update(add_config_flags(parser.add_argument_group(f"{section} (config section '{section}')"),
                                      GPTSampleConfig, section))
    return table


def check_sampler_config(config: GPTSampleConfig) -> None:
    """Reject unsupported or inconsistent settings before any model is built."""
    check_gpt_flags(config.model)
    if config.tokenizer.quant_way == "fsq":
        if config.tokenizer.vq_ckpt is not None:
            raise UserError("--quant-way fsq loads the tokenizer from --fsq-ckpt; drop --vq-ckpt (or use --quant-way "
                            "vq with --tok-config for a tokenizer trained here with quantizer: fsq).")
    elif config.tokenizer.tok_config is None:
        raise UserError("--tok-config is required: the tokenizer's YAML, e.g. configs/vq/VQ_XLXXL256.yaml, "
                        "matching --vq-ckpt.")
    s = config.sample
    if s.sampler == "sjd" and (s.compile or s.cuda_graphs):
        raise UserError("--sampler sjd runs eagerly (its window length changes per pass): drop --compile / "
                        "--cuda-graphs, or use --sampler plain with them.")


def load_tokenizer_config(config: GPTSampleConfig) -> VQConfig:
    """The tokenizer's config (`resolve_tokenizer_ref`): --tok-config (--quant-way vq), or the official FSQ tokenizer
    for --quant-way fsq, whose checkpoint --fsq-ckpt then fills `config.tokenizer.vq_ckpt` (the one tokenizer
    checkpoint every later step reads)."""
    tok = config.tokenizer
    vq_config, checkpoint, name = resolve_tokenizer_ref(tok)
    if tok.quant_way == "fsq":
        logger.info(f"--quant-way fsq: {name} ({vq_config.model.init_args.codebook_size} codes), checkpoint "
                    f"{checkpoint}")
        config.tokenizer = dataclasses.replace(tok, vq_ckpt=checkpoint)
    return vq_config


def check_sampling_device(config: GPTSampleConfig, device: torch.device) -> None:
    """--cuda-graphs needs a CUDA device."""
    if config.sample.cuda_graphs and device.type != "cuda":
        raise UserError(f"--cuda-graphs needs a CUDA device, but sampling runs on {device}: drop --cuda-graphs.")


def resolve_image_sizes(config: GPTSampleConfig, vq_config: VQConfig) -> tuple[int, int]:
    """(generated size, saved size): --image-size must be the tokenizer's; --image-size-eval defaults to it."""
    config_size = vq_config.model.init_args.image_size
    image_size = config.tokenizer.image_size or config_size
    if image_size != config_size:
        raise UserError(
            f"--image-size {image_size} differs from the tokenizer config's image_size {config_size} "
            f"('{config.tokenizer.tok_config}'). Pass --image-size {config_size} (the official default 384 does not "
            "fit the 256 px GigaTok tokenizers), or omit the flag."
        )
    return image_size, config.sample.image_size_eval or image_size


def cfg_schedule_kwargs(config: GPTSampleConfig) -> dict[str, float]:
    """Schedule options of the official samplers: only `step` takes one (--step-start-ratio); validated here."""
    s = config.sample
    kwargs = {"window_start": s.step_start_ratio} if s.cfg_schedule == "step" else {}
    try:
        cfg_schedule_values(s.cfg_scale, 2, s.cfg_schedule, kwargs, s.cfg_interval)
    except ValueError as err:
        raise UserError(f"--cfg-schedule: {err}") from None
    return kwargs


def check_checkpoint_files(config: GPTSampleConfig) -> None:
    """A missing --vq-ckpt / --gpt-ckpt file fails here, before the models are built."""
    for ckpt in (config.tokenizer.vq_ckpt, config.model.gpt_ckpt):
        if ckpt is not None:
            resolve_checkpoint_path(ckpt)


def sampling_dtype(precision: str, device: torch.device) -> tuple[str, torch.dtype]:
    """(effective precision name, dtype the GPT is cast to); fp16 on CPU falls back to fp32 with a warning. Sets
    TF32 on CUDA, as the official samplers."""
    amp_dtype, precision = resolve_precision(precision, device, flag="--precision")
    return precision, amp_dtype or torch.float32


def load_models(config: GPTSampleConfig, vq_config: VQConfig, device: torch.device,
                dtype: torch.dtype) -> tuple[torch.nn.Module, GPT]:
    """The tokenizer (fp32, eval) and the GPT (cast to `dtype`, eval). The GPT's architecture is the one its
    checkpoint records (our runs), else the flags' and its weights' (official files); it must model the tokenizer's
    codes. `config.model` is filled in with what was resolved (size, vocabulary, length, classes)."""
    m = config.model
    check_sampling_device(config, device)
    if config.tokenizer.vq_ckpt is None:
        logger.warning("!!! no --vq-ckpt: the tokenizer has RANDOM weights, the images will be noise "
                       "(smoke tests only) !!!")
    tokenizer = load_tokenizer(config.tokenizer.vq_ckpt, vq_config, device=device)
    num_token = config.sample.num_token or tokenizer.num_tokens
    if num_token != tokenizer.num_tokens:
        raise UserError(f"--num-token {num_token} differs from the tokenizer's {tokenizer.num_tokens} codes per "
                        "image; decoding a partial sequence is not supported. Omit --num-token.")
    ckpt = read_checkpoint(m.gpt_ckpt) if m.gpt_ckpt is not None else None
    source = f"--gpt-ckpt '{m.gpt_ckpt}'" if m.gpt_ckpt else "the random GPT"
    gpt_config = resolve_checkpoint_gpt(m, ckpt, vocab_size=tokenizer.codebook_size, block_size=num_token,
                                        source=source)
    check_gpt_fits_tokenizer(gpt_config, tokenizer.codebook_size, num_token, source, config.tokenizer.tok_config)
    config.model = dataclasses.replace(m, gpt_model=m.gpt_model or _size_name(ckpt) or "GPT-B",
                                       vocab_size=gpt_config.vocab_size, block_size=gpt_config.block_size,
                                       num_classes=gpt_config.num_classes)
    if ckpt is None:
        logger.warning("!!! no --gpt-ckpt: the GPT has RANDOM weights, the samples are meaningless "
                       "(smoke tests only) !!!")
        gpt = GPT(gpt_config).to(device).eval()
    else:
        if config.sample.ema and "ema" not in ckpt:
            logger.warning(f"--ema: '{m.gpt_ckpt}' has no 'ema' entry; using its 'model' weights")
        try:
            gpt = load_gpt(ckpt, gpt_config, use_ema=config.sample.ema, device=device)
        except CheckpointError as err:
            raise CheckpointError(f"{source} with --gpt-model {config.model.gpt_model}: {err}") from None
        del ckpt
    return tokenizer, gpt.to(dtype)


def _size_name(ckpt: dict | None) -> str | None:
    from gigatok.builders import recorded_gpt_model

    return recorded_gpt_model(ckpt) if ckpt is not None else None


def check_gpt_fits_tokenizer(gpt_config: GPTConfig, vocab_size: int, num_tokens: int, source: str,
                             tok_config: str | None) -> None:
    """The GPT must model the tokenizer's codes: the same vocabulary, and at least its codes per image."""
    if gpt_config.vocab_size != vocab_size or gpt_config.block_size != num_tokens:
        raise UserError(f"{source} models {gpt_config.block_size} codes from a vocabulary of {gpt_config.vocab_size}, "
                        f"but the tokenizer '{tok_config}' gives {num_tokens} codes from {vocab_size}: pass the "
                        "tokenizer the GPT was trained on (--tok-config / --vq-ckpt).")


def generate_images(gpt: torch.nn.Module, tokenizer: torch.nn.Module, labels: torch.Tensor, seed: int,
                    config: GPTSampleConfig, schedule_kwargs: dict[str, float], image_size: int,
                    image_size_eval: int) -> np.ndarray:
    """Sample codes for `labels` (B,) int64 with the `sample` settings, decode them, convert to uint8.

    Conversion as the official samplers: bicubic `F.interpolate` (no antialias) when the saved size differs, then
    `clamp(127.5 x + 128, 0, 255)` truncated to uint8.

    Returns:
        (B, S, S, 3) uint8 numpy array, S = image_size_eval.
    """
    s = config.sample
    generator = torch.Generator(labels.device).manual_seed(seed)
    codes = generate(gpt, labels, tokenizer.num_tokens, cfg_scale=s.cfg_scale, cfg_schedule=s.cfg_schedule,
                     cfg_schedule_kwargs=schedule_kwargs, cfg_interval=s.cfg_interval, temperature=s.temperature,
                     top_k=s.top_k, top_p=s.top_p, generator=generator, compile=s.compile, sampler=s.sampler,
                     sjd_window=s.sjd_window, sjd_noise=s.sjd_noise, cuda_graphs=s.cuda_graphs)  # (B, L) int64
    with torch.no_grad():
        images = tokenizer.decode_code(codes).float()  # (B, 3, S, S) at S = image_size, unclamped ~[-1, 1]
        if image_size_eval != image_size:
            images = F.interpolate(images, size=(image_size_eval, image_size_eval), mode="bicubic")
    return to_uint8(images).numpy()  # (B, S, S, 3) at S = image_size_eval


# ---- FID sampling plan and chunk files (gigatok.stages.sample_c2i) ----

def uniform_class_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Class of every global sample index: each class num_samples // num_classes times, interleaved.

    Sample i has class i % num_classes for the first (num_samples // num_classes) * num_classes indices, so any
    prefix is nearly balanced and every chunk mixes classes. The remaining r = num_samples % num_classes samples go
    to classes spread evenly over [0, num_classes) (class floor(j * num_classes / r) for the j-th of them),
    deterministic. (The official samplers draw `torch.randint(0, num_classes)` per batch instead, so their class
    counts vary by about +-sqrt(num_samples / num_classes).)

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
    """Atomically write one chunk: arr_0 (B, S, S, 3) uint8, arr_1 (B,) int64 (B = the chunk's samples)."""
    save_npz_atomic(path, arr_0=images_uint8, arr_1=labels)


def done_chunks(chunk_dir: Path, num_chunks: int) -> set[int]:
    """Indices of the chunk files present (temp files of interrupted writes never count)."""
    return {i for i in range(num_chunks) if chunk_path(chunk_dir, i).is_file()}


def load_chunks(chunk_dir: Path, bounds: list[tuple[int, int]], labels: np.ndarray) -> np.ndarray:
    """All chunks' images in index order, each checked against the plan (one preallocated array: 50k 256 px
    images are 9.8 GB, so no second copy is made).

    Returns:
        (N, S, S, 3) uint8, N = all planned samples.

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
            images = np.empty((bounds[-1][1], *chunk.shape[1:]), dtype=np.uint8)  # (N, S, S, 3)
        if chunk.shape != (end - start, *images.shape[1:]) or not np.array_equal(chunk_labels, labels[start:end]):
            raise UserError(f"chunk file '{path}' does not match this run's sampling plan (samples {start}.."
                             f"{end - 1}, {images.shape[1:]} images). Delete '{chunk_dir}' to sample again.")
        images[start:end] = chunk
    assert images is not None, "no chunks planned"
    return images
