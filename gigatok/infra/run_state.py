"""Training-run checkpoints: one self-describing file per save, written atomically, found and resumed safely.

Layout: `{run_dir}/checkpoints/{step:07d}.pt` (official name), each ONE dict:

    version         CHECKPOINT_VERSION of this layout
    step, steps     global optimizer steps taken ("steps" is the official alias, read by official tools)
    model           bare state dict (no `module.` / `_orig_mod.` prefixes)
    ema             EMA state dict, same keys as "model" (official loaders prefer it)       [if an EMA is used]
    optimizer       generator optimizer state dict                                          [if given]
    discriminator, optimizer_disc                                                            [tokenizer GAN]
    scaler, scaler_disc  GradScaler state dicts                                             [fp16 only]
    rng             list indexed by rank: {python, numpy, torch, cuda} generator states of EVERY rank
    world_size      number of ranks that wrote "rng" (and consumed "data_state")
    data_state      resumable sampler state (`ResumableDistributedSampler.state_dict()`)
    config          the resolved run config as plain containers
    extra           anything else the entry point wants back (plain containers / tensors)

RNG states: gathered to rank 0 with `all_gather_object` and stored in the single file (not one file per rank),
so a run directory stays one file per step, retention and "latest" logic see whole checkpoints only, and a
half-written per-rank set can never be picked up. The cost is a few KB per rank. Consequently
`save_training_checkpoint` is a collective: every rank calls it; only rank 0 writes.

Every value is a tensor or a plain container, so `read_checkpoint` (torch.load with `weights_only=True`) opens
these files without running pickled code; `save_training_checkpoint` rejects anything else before writing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gigatok.infra.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
)
from gigatok.infra.dist import (
    all_gather_objects,
    barrier,
    get_rank,
    get_world_size,
    is_main_process,
)
from gigatok.infra.io import torch_save_atomic
from gigatok.infra.optim import load_optimizer_state

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CHECKPOINT_SUBDIR = "checkpoints"
_CKPT_NAME = re.compile(r"^(\d+)\.pt$")  # `.pt.tmp` leftovers of an interrupted write never match


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers, in any nesting order."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_SUBDIR


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"{step:07d}.pt"


# ----------------------------------------------------------------------------------------------------------------
# RNG states
# ----------------------------------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and (current device) CUDA generator states, as safe-to-load types."""
    np_state = np.random.get_state()  # ('MT19937', uint32 keys (624,), pos, has_gauss, cached_gaussian)
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy arrays would need an allow-list entry for weights_only loading; a tensor does not.
        "numpy": {"bit_generator": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def gather_rng_states() -> list[dict[str, Any]]:
    """RNG states of every rank, in rank order (collective; `[own state]` without a process group)."""
    return all_gather_objects(capture_rng_state())  # type: ignore[return-value]


def restore_rng(checkpoint: Mapping[str, Any], rank: int | None = None) -> bool:
    """Put this rank's saved generator states back (python, numpy, torch CPU, CUDA if saved and available).

    Args:
        checkpoint: a dict from `load_training_checkpoint`.
        rank: whose state to restore; default this process's rank.

    Call it after building the model (whose init draws random numbers) and before the first DataLoader
    iterator is created: worker seeds are drawn from the torch generator when an iterator starts.

    Returns:
        True if restored; False (with a warning) when the file has no RNG states (official checkpoints) or none
        for this rank (the world size grew), in which case the caller's fresh seeding stays in effect.
    """
    rank = get_rank() if rank is None else rank
    states = checkpoint.get("rng")
    if not states:
        logger.warning("checkpoint has no RNG states (official or older file): random streams restart from the seed")
        return False
    if rank >= len(states):
        logger.warning("checkpoint holds RNG states for %d ranks, not for rank %d: this rank keeps its fresh seed",
                       len(states), rank)
        return False
    if checkpoint.get("world_size", len(states)) != get_world_size():
        logger.warning("resuming with world size %d from a checkpoint written by %d ranks: each rank restores the "
                       "RNG state of its own rank number", get_world_size(), checkpoint.get("world_size"))
    state = states[rank]
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["bit_generator"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].clone())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].clone())
    return True


# ----------------------------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------------------------

# Exact types: np.float64 subclasses float but pickles as a numpy object that weights_only loading refuses.
_PLAIN_SCALARS = (type(None), bool, int, float, str)


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value `weights_only` loading would refuse (checked before writing)."""
    if type(obj) in _PLAIN_SCALARS or isinstance(obj, (torch.Tensor, torch.dtype, torch.Size)):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint entry {where} has a {type(key).__name__} key; use str or int keys")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint entry {where} is a {type(obj).__name__}: only tensors, python numbers, strings, "
                    "None and dict/list/tuple of those can be saved (convert configs with OmegaConf.to_container "
                    "or dataclasses.asdict, numpy values with float()/int() or torch.from_numpy)")


def _module_state(obj: nn.Module | Mapping[str, Any], what: str) -> dict[str, Any]:
    """A bare state dict from a (possibly wrapped) module, or a ready-made mapping (e.g. FSDP full state)."""
    if isinstance(obj, nn.Module):
        state = unwrap_model(obj).state_dict()
    elif isinstance(obj, Mapping) or hasattr(obj, "state_dict"):
        state = obj if isinstance(obj, Mapping) else obj.state_dict()  # EMA objects have `state_dict`
    else:
        raise TypeError(f"{what}: expected a module, an object with state_dict() or a state dict, got {type(obj)}")
    if any(type(v).__name__ == "DTensor" for v in state.values()):
        raise NotImplementedError(
            f"{what} holds sharded DTensors (FSDP2): pass a full state dict instead, e.g. "
            "torch.distributed.checkpoint.state_dict.get_model_state_dict(model, options=StateDictOptions("
            "full_state_dict=True, cpu_offload=True))")
    return extract_state_dict({"model": state}, prefer=("model",), source=what)  # strips wrapper prefixes


def save_training_checkpoint(run_dir: str | os.PathLike, step: int, *, model: nn.Module | Mapping[str, Any],
                             ema: Any = None, optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
                             discriminator: nn.Module | Mapping[str, Any] | None = None,
                             optimizer_disc: torch.optim.Optimizer | Mapping[str, Any] | None = None,
                             scaler: Any = None, scaler_disc: Any = None,
                             data_state: Mapping[str, Any] | None = None, config_dict: Any = None,
                             extra: Mapping[str, Any] | None = None) -> Path:
    """Write `{run_dir}/checkpoints/{step:07d}.pt` atomically. COLLECTIVE: call on every rank, at the same step.

    All ranks contribute their RNG states; only rank 0 builds the dict and writes it (tmp file, fsync,
    `os.replace`); then all ranks meet at a barrier, so nobody reads or prunes a file still being written.
    Call it at the end of step `step` (after the optimizer/EMA updates): resuming then starts step `step`.

    Args:
        run_dir: the run directory.
        step: optimizer steps taken so far.
        model: the generator (wrapped or not) or its full state dict.
        ema: an `EMA`, an EMA module, or a state dict; None to omit (official loaders check for the key).
        optimizer, optimizer_disc: optimizers or their state dicts (DDP: rank 0's state is everyone's).
        discriminator: the GAN discriminator (tokenizer training), wrapped or not.
        scaler, scaler_disc: `torch.amp.GradScaler`s; saved only when enabled (fp16).
        data_state: the sampler state (`ResumableDistributedSampler.state_dict()`); rank-symmetric.
        config_dict: the resolved config (dict, dataclass or OmegaConf container).
        extra: other plain values to get back on resume (e.g. `NonFiniteGuard.state_dict()`).

    Returns:
        The checkpoint path (on every rank).
    """
    path = checkpoint_path(run_dir, step)
    # Validate the caller's plain entries on every rank BEFORE any collective, so a bad value raises everywhere
    # instead of leaving the other ranks waiting at the barrier.
    plain = {"data_state": None if data_state is None else dict(data_state),
             "config": None if config_dict is None else _plain_config(config_dict),
             "extra": None if extra is None else dict(extra)}
    for key, value in plain.items():
        _check_plain(value, f"'{key}'")
    rng_states = gather_rng_states()  # collective: before the rank-0 branch
    if is_main_process():
        ckpt: dict[str, Any] = {"version": CHECKPOINT_VERSION, "step": int(step), "steps": int(step),
                                "model": _module_state(model, "model")}
        if ema is not None:
            ckpt["ema"] = _module_state(ema, "ema")
        for name, obj in (("optimizer", optimizer), ("optimizer_disc", optimizer_disc)):
            if obj is not None:
                ckpt[name] = obj if isinstance(obj, Mapping) else obj.state_dict()
        if discriminator is not None:
            ckpt["discriminator"] = _module_state(discriminator, "discriminator")
        for name, obj in (("scaler", scaler), ("scaler_disc", scaler_disc)):
            if obj is not None and (not hasattr(obj, "is_enabled") or obj.is_enabled()):
                ckpt[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj
        ckpt["rng"] = rng_states
        ckpt["world_size"] = get_world_size()
        ckpt.update({key: value for key, value in plain.items() if value is not None})
        for key in ("optimizer", "optimizer_disc", "scaler", "scaler_disc"):
            if key in ckpt:
                _check_plain(ckpt[key], f"'{key}'")
        torch_save_atomic(ckpt, path)
        logger.info("saved checkpoint %s", path)
    barrier()
    return path


def _plain_config(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Find, load, restore
# ----------------------------------------------------------------------------------------------------------------

def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every finished `{step}.pt` in `ckpt_dir`, oldest first (tmp leftovers ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_file() and (m := _CKPT_NAME.match(p.name))]
    return sorted(found)


def find_latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest readable checkpoint of a run, or None.

    Looks in `{run_dir}/checkpoints` (or in `run_dir` itself if it has no such sub-folder). `.tmp` leftovers of
    an interrupted write are never considered; a file that cannot be opened (truncated, corrupt) is skipped
    with a warning and the previous one is tried. Opening is cheap: files are memory-mapped, not read.
    """
    ckpt_dir = checkpoint_dir(run_dir)
    if not ckpt_dir.is_dir():
        ckpt_dir = Path(run_dir)
    for step, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            ckpt = read_checkpoint(path)
            if "step" not in ckpt and "steps" not in ckpt:
                raise CheckpointError(f"'{path}' has no 'step'/'steps' entry")
        except CheckpointError as err:
            logger.warning("skipping unreadable checkpoint %s (%s); trying the previous one", path, err)
            continue
        del ckpt
        return path
    return None


def load_training_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint (ours or an official GigaTok/LlamaGen one) and check its layout.

    Returns:
        The checkpoint dict, with "step" always set (official files only carry "steps"). Official files have no
        "rng" or "data_state": `restore_rng` then warns, and the sampler restarts the epoch.

    Raises:
        CheckpointError: unreadable, written by a newer layout, or without "model" weights.
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    version = ckpt.get("version")
    if version is not None and version > CHECKPOINT_VERSION:
        raise CheckpointError(f"'{path}' has checkpoint layout version {version}; this gigatok reads up to "
                              f"{CHECKPOINT_VERSION}. Update gigatok to resume this run.")
    if "step" not in ckpt:
        if "steps" not in ckpt:
            raise CheckpointError(f"'{path}' is not a training checkpoint: no 'step'/'steps' entry "
                                  f"(entries: {sorted(ckpt)[:10]})")
        ckpt["step"] = int(ckpt["steps"])
    if "model" not in ckpt:
        raise CheckpointError(f"'{path}' has no 'model' entry to resume from (entries: {sorted(ckpt)[:10]})")
    if version is None:
        logger.warning("'%s' is an official (or foreign) checkpoint: no RNG states or data position, "
                       "so the resumed data order restarts the epoch", path)
    return ckpt


def restore_training_state(checkpoint: Mapping[str, Any], *, model: nn.Module, ema: Any = None,
                           optimizer: torch.optim.Optimizer | None = None, discriminator: nn.Module | None = None,
                           optimizer_disc: torch.optim.Optimizer | None = None, scaler: Any = None,
                           scaler_disc: Any = None) -> int:
    """Load every entry of `checkpoint` into the given (possibly wrapped) objects; return the step to resume at.

    Modules are loaded strictly (readable error on any key/shape mismatch). An object passed without a matching
    entry is left as is, with a warning (e.g. an EMA added to a run that had none starts from the model).
    RNG and sampler state are restored separately: `restore_rng(checkpoint)`,
    `sampler.load_state_dict(checkpoint["data_state"])`.
    """
    step = int(checkpoint["step"])
    load_state_dict_strict(unwrap_model(model), extract_state_dict(checkpoint, prefer=("model",)),
                           source="checkpoint 'model'")
    if ema is not None:
        if "ema" in checkpoint:
            ema.load_state_dict(checkpoint["ema"], num_updates=step)
        else:
            logger.warning("checkpoint has no 'ema' entry: the EMA restarts from the resumed model weights")
            ema.module.load_state_dict(unwrap_model(model).state_dict())
            ema.num_updates = step
    if discriminator is not None:
        if "discriminator" in checkpoint:
            load_state_dict_strict(unwrap_model(discriminator),
                                   extract_state_dict(checkpoint, prefer=("discriminator",)),
                                   source="checkpoint 'discriminator'")
        else:
            logger.warning("checkpoint has no 'discriminator' entry: the discriminator starts fresh")
    for name, obj in (("optimizer", optimizer), ("optimizer_disc", optimizer_disc),
                      ("scaler", scaler), ("scaler_disc", scaler_disc)):
        if obj is None:
            continue
        if name in checkpoint:
            if isinstance(obj, torch.optim.Optimizer):
                load_optimizer_state(obj, checkpoint[name])  # keeps the built kernel (fused or not)
            else:
                obj.load_state_dict(checkpoint[name])
            continue
        scaler_off = name.startswith("scaler") and not obj.is_enabled()  # bf16/fp32 runs never save a scaler
        if not scaler_off:
            logger.warning("checkpoint has no '%s' entry: it starts fresh", name)
    return step


# ----------------------------------------------------------------------------------------------------------------
# Retention
# ----------------------------------------------------------------------------------------------------------------

def prune_checkpoints(ckpt_dir: str | os.PathLike, keep_last: int = 10, milestone_every: int = 50_000,
                      milestone_start: int = 50_000, max_milestones: int = 30) -> list[Path]:
    """Delete old checkpoints with the official `manage_ckpt_num` policy (rank 0 only; a no-op elsewhere).

    Milestones are steps `milestone_start + k * milestone_every` (k >= 0). Kept: the newest `max_milestones`
    milestones, and the newest `keep_last` non-milestone checkpoints that are newer than the newest milestone
    (older non-milestones are superseded by it). The newest checkpoint is never deleted. Official values:
    every 50k from 50k, 30 milestones (tokenizer) / 40 (GPT), 10 non-milestones. Leftover `*.pt.tmp` files
    from interrupted writes are removed as well.

    Returns:
        The deleted paths.
    """
    if keep_last < 1 or max_milestones < 0 or milestone_every < 1:
        raise ValueError(f"prune_checkpoints needs keep_last >= 1, max_milestones >= 0, milestone_every >= 1; got "
                         f"{keep_last}, {max_milestones}, {milestone_every}")
    if not is_main_process():
        return []
    found = list_checkpoints(ckpt_dir)
    if not found:
        return []
    newest = found[-1][0]
    milestones = [(s, p) for s, p in found if s >= milestone_start and (s - milestone_start) % milestone_every == 0]
    others = [(s, p) for s, p in found if (s, p) not in milestones]
    doomed = milestones[:-max_milestones] if max_milestones else list(milestones)
    doomed += others[:-keep_last]
    if milestones:
        doomed += [(s, p) for s, p in others[-keep_last:] if s < milestones[-1][0]]
    deleted = []
    for step, path in sorted(set(doomed)):
        if step == newest:
            continue
        path.unlink(missing_ok=True)
        deleted.append(path)
    for tmp in Path(ckpt_dir).glob("*.pt.tmp"):
        tmp.unlink(missing_ok=True)
        deleted.append(tmp)
    if deleted:
        logger.info("pruned %d old checkpoint file(s) in %s", len(deleted), ckpt_dir)
    return deleted
