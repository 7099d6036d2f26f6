"""Process-group setup that also runs without torchrun, and the one predicate that gates rank-0 side effects.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) we join the process group: NCCL on CUDA,
gloo on CPU. Without it everything runs as a single process (rank 0 of 1) and the collectives below are no-ops.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gigatok.errors import UserError
from gigatok.infra.host_memory import tune_cpu_allocator


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is a `UserError`."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device '{device}': use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu (or auto)")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def cpu_bf16_warning(device: torch.device, dtype: torch.dtype | None) -> str | None:
    """A warning when bf16 autocast is asked for on a CPU without native bf16 kernels, else None.

    Without AVX512-BF16 / AMX (e.g. AMD Zen 3, most AVX2-only CPUs) oneDNN emulates bf16: a Linear forward+backward
    measured 13x slower than fp32 on a Zen 3 core.
    """
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # no oneDNN in this build: nothing to say
        return None
    if native:
        return None
    return ("bf16 autocast on this CPU is emulated (no AVX512-BF16/AMX kernels) and usually several times slower "
            "than fp32: prefer --mixed-precision none here")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun, else set up a single process.

    Returns:
        rank, world size, local rank and the torch device this process should use.
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if not launched:
        rank, world_size, local_rank = 0, 1, 0
    else:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if torch_device.type == "cpu":
        tune_cpu_allocator()  # large CPU activations: reuse freed heap blocks instead of fresh page-faulting mmaps
    if not launched:
        return DistInfo(0, 1, 0, torch_device)
    exit_with_parent()
    if not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)  # before NCCL init, so each rank talks from its own GPU
            dist.init_process_group("nccl", device_id=torch_device)
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank, world_size, local_rank, torch_device)


def exit_with_parent(poll_seconds: float = 0.5) -> None:
    """End this process when its parent (the torchrun agent) is gone.

    torchrun starts its workers in their own session, so a `kill -9` of the launch script's process group leaves them
    running: they would keep training and writing checkpoints, and the documented recovery (run the same command
    again) would put two trainers on one run folder. A daemon thread notices the re-parenting within `poll_seconds`
    and SIGKILLs this process (writes are atomic: nothing half-written is ever read). Polling instead of
    PR_SET_PDEATHSIG, which fires when the parent *thread* that spawned us exits, not the parent process.
    """
    parent = os.getppid()
    if parent == 1 or getattr(exit_with_parent, "_started", False):
        return
    exit_with_parent._started = True  # type: ignore[attr-defined]

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="gigatok-exit-with-parent", daemon=True).start()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """The predicate for every rank-0-only side effect (logging, writing summary files, grids)."""
    return get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    """Picklable `obj` from every rank, in rank order (`[obj]` without a process group)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup(synchronize: bool = True) -> None:
    """Tear the process group down (a no-op without one).

    `synchronize`: meet at a barrier first, so no rank destroys its group while a peer's last collective is still
    in flight. Only on the success path: after an error the peers may never arrive. Objects that still hold the group
    (a DDP reducer in a reference cycle) are collected first; a gloo group freed later, during interpreter
    shutdown, can abort the process ("terminate called without an active exception") after a finished run.
    """
    if not dist.is_initialized():
        return
    if synchronize:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def setup_logging(log_dir: str | os.PathLike | None = None) -> logging.Logger:
    """Configure the `gigatok` logger: rank 0 logs to stderr (and `log_dir/log.txt`), other ranks log nothing.

    Module loggers (`logging.getLogger(__name__)` inside `gigatok`) propagate to it, so library warnings are
    gated by the same predicate. The root logger is left alone (it belongs to the application or pytest).
    """
    logger = logging.getLogger("gigatok")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    if is_main_process():
        formatter = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(Path(log_dir) / "log.txt"))
        for handler in handlers:
            handler.setFormatter(formatter)
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())  # a handler, so logging's last-resort stderr output stays off
    return logger
