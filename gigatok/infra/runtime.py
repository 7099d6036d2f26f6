"""The per-process settings every stage makes the same way: seeds, numeric precision (autocast dtype, TF32,
determinism) and data loaders.

- `seed_everything(seed)`: python, numpy and torch generators (the official per-rank seed is the caller's choice:
  `global_seed * world_size + rank` for the trainers, so that dropout and augmentation differ between ranks).
- `resolve_precision(name, device)`: "none" | "fp16" | "bf16" -> the autocast dtype, with the warnings and fallbacks
  of the CPU, and the official TF32 setting on CUDA.
- `autocast(device, dtype)`: `torch.autocast` or nothing.
- `build_loader(...)`: a DataLoader with the worker count capped at the CPU cores per rank, pinned memory on CUDA
  and, for training, a private generator: creating an iterator must not draw from the global torch RNG, or a resumed
  run's dropout stream would differ from the uninterrupted one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gigatok.infra.dist import cpu_bf16_warning, get_world_size

logger = logging.getLogger(__name__)

PRECISIONS = ("none", "fp16", "bf16")


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(name: str, device: torch.device, *, flag: str = "--mixed-precision",
                      fp16_on_cpu: str = "fallback", deterministic: bool = False) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of precision `name` on `device`, and the name actually used.

    Args:
        name: "none", "fp16" or "bf16".
        flag: the flag that set it (named in warnings).
        fp16_on_cpu: "fallback" (run fp32, with a warning: CPU fp16 kernels are few and slow) or "keep" (the tokenizer
            trainer: fp16 + GradScalers on the CPU work, slowly, and are how the fp16 path is tested).
        deterministic: `torch.use_deterministic_algorithms(True)` (exact-resume tests, debugging) instead of TF32.

    Side effects: TF32 matmuls and convolutions on CUDA (as the official trainers and samplers), or determinism.
    """
    if name not in PRECISIONS:
        raise ValueError(f"{flag} must be one of {PRECISIONS}, got '{name}'")
    if name == "fp16" and device.type == "cpu":
        if fp16_on_cpu == "fallback":
            logger.warning(f"{flag} fp16 is not supported on CPU; running in fp32 instead")
            name = "none"
        else:
            logger.warning("fp16 autocast on CPU is very slow (no fast fp16 kernels): prefer --mixed-precision bf16 "
                           "or none")
    dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
    if (note := cpu_bf16_warning(device, dtype)) is not None:
        logger.warning(note)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # official
        torch.backends.cudnn.allow_tf32 = True
    return dtype, name


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast(device, dtype)`, or a no-op context for full precision (dtype None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def num_loader_workers(requested: int) -> int:
    """`requested` DataLoader workers, capped at this rank's share of the CPU cores (0 stays 0)."""
    return min(requested, max((os.cpu_count() or 1) // get_world_size(), 1))


def build_loader(dataset: Dataset, batch_size: int, *, num_workers: int, device: torch.device,
                 sampler: Sampler | None = None, seed: int | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader over `dataset` in order (or in `sampler`'s order).

    Args:
        num_workers: requested workers per rank (capped by `num_loader_workers`).
        seed: training loaders pass the run seed: worker seeds then come from a private generator, not the global
            torch RNG (see the module docstring).
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_loader_workers(num_workers), pin_memory=device.type == "cuda",
                      drop_last=drop_last, generator=generator)
