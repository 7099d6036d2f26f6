"""Training-run checkpoints: one self-describing file per save, written atomically, and ONE resume path for every
trainer.

Layout: `{run_dir}/checkpoints/{step:07d}.pt` (official name), each ONE dict:

    version         CHECKPOINT_VERSION of this layout
    step, steps     global optimizer steps taken ("steps" is the official alias, read by official tools)
    model           bare state dict (no `module.` / `_orig_mod.` prefixes), gathered to full tensors under FSDP2
    ema             EMA state dict, same keys as "model" (official loaders prefer it)       [if an EMA is used]
    optimizer       generator optimizer state dict (param ids; parameter names under FSDP2) [if given]
    discriminator, optimizer_disc                                                            [tokenizer GAN]
    scaler, scaler_disc  GradScaler state dicts                                             [fp16 only]
    data_state      resumable sampler state (`ResumableDistributedSampler.state_dict()`)
    rng             list indexed by rank: {python, numpy, torch, cuda} generator states of EVERY rank
    world_size      number of ranks that wrote "rng" (and consumed "data_state")
    config          the resolved run config as plain containers
    extra           everything else the trainer wants back: loop counters, guards, format notes

`CheckpointManager` (after torchtitan's `Stateful` objects and `CheckpointManager`): a trainer registers every object
that has state under its entry name (`"model"`, `"extra.guard"`, ...), wrapped in one of the `*State` adapters below.
`save(step)` asks each for its entry; `restore(path)` hands each entry back in one loop, then the RNG streams, so a new
object cannot be remembered by one trainer and forgotten by another. An entry a checkpoint lacks (official files,
older runs) goes to the object's `missing` hook: a documented fallback or a warning.

RNG states are gathered to rank 0 with `all_gather_object` and stored in the single file (not one file per rank), so
a run directory stays one file per step and a half-written per-rank set can never be picked up; `save` is therefore a
collective: every rank calls it; only rank 0 writes.

Every value is a tensor or a plain container, so `read_checkpoint` (torch.load with `weights_only=True`) opens these
files without running pickled code; `save` rejects anything else before writing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gigatok.errors import UserError
from gigatok.infra.checkpoint import CheckpointError, read_checkpoint
from gigatok.infra.dist import (
    all_gather_objects,
    barrier,
    get_rank,
    get_world_size,
    is_main_process,
)
from gigatok.infra.io import (
    remove_stale_temporaries,
    torch_save_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
CHECKPOINT_SUBDIR = "checkpoints"
_CKPT_NAME = re.compile(r"^(\d+)\.pt$")  # `.pt.tmp` leftovers of an interrupted write never match


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

    Call it after building the models (whose init draws random numbers) and before the first DataLoader iterator
    is created: worker seeds are drawn from the torch generator when an iterator starts.

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
# Plain values only (weights_only loading)
# ----------------------------------------------------------------------------------------------------------------

# Exact types: np.float64 subclasses float but pickles as a numpy object that weights_only loading refuses.
_PLAIN_SCALARS = (type(None), bool, int, float, str)


def check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value `weights_only` loading would refuse (checked before writing)."""
    if type(obj) in _PLAIN_SCALARS or isinstance(obj, (torch.Tensor, torch.dtype, torch.Size)):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint entry {where} has a {type(key).__name__} key; use str or int keys")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint entry {where} is a {type(obj).__name__}: only tensors, python numbers, strings, "
                    "None and dict/list/tuple of those can be saved (convert configs with OmegaConf.to_container "
                    "or dataclasses.asdict, numpy values with float()/int() or torch.from_numpy)")


def plain_config(config: Any) -> Any:
    """A config (dataclass, OmegaConf container or dict) as plain containers."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if type(config).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Find, load, prune
# ----------------------------------------------------------------------------------------------------------------

def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every finished `{step}.pt` in `ckpt_dir`, oldest first (tmp leftovers ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_file() and (m := _CKPT_NAME.match(p.name))]
    return sorted(found)


def find_latest_checkpoint(run_dir: str | os.PathLike, max_step: int | None = None,
                           quarantine: bool = False) -> Path | None:
    """The newest readable checkpoint of a run (at most `max_step`), or None.

    Looks in `{run_dir}/checkpoints` (or in `run_dir` itself if it has no such sub-folder). `.tmp` leftovers of
    an interrupted write are never considered; a file that cannot be opened (truncated, corrupt) is skipped
    with a warning and the previous one is tried. Opening is cheap: files are memory-mapped, not read.

    Args:
        quarantine: a trainer resuming: move an unreadable file to `checkpoints/bad/` (rank 0), with a note of why
            beside it, so that it is neither retried on every resume nor taken for the newest one by the pruning.
    """
    ckpt_dir = checkpoint_dir(run_dir)
    if not ckpt_dir.is_dir():
        ckpt_dir = Path(run_dir)
    for step, path in reversed(list_checkpoints(ckpt_dir)):
        if max_step is not None and step > max_step:
            continue
        try:
            ckpt = read_checkpoint(path)
            if "step" not in ckpt and "steps" not in ckpt:
                raise CheckpointError(f"'{path}' has no 'step'/'steps' entry")
        except CheckpointError as err:
            logger.warning("skipping unreadable checkpoint %s (%s); trying the previous one", path, err)
            if quarantine and is_main_process() and path.is_file():
                _set_aside(path, ckpt_dir / "bad", f"unreadable when resuming: {err}")
            continue
        del ckpt
        return path
    return None


def _set_aside(path: Path, folder: Path, why: str) -> Path:
    """Move a checkpoint out of the run's listing into `folder`, with `<name>.why.txt` saying why (nothing is
    deleted: the user decides)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    path.rename(target)  # same folder tree: a rename, nothing is copied or rewritten
    write_text_atomic(folder / f"{path.name}.why.txt", why + "\n")
    logger.warning("moved %s to %s (%s)", path, target, why.splitlines()[0])
    return target


def resume_from_step(run_dirs: list[Path], step: int) -> None:
    """`--resume-from STEP`: set aside (into `checkpoints/abandoned/`) every checkpoint newer than `step` in these
    folders, so that the newest one left is STEP's (0: none, the run starts over). COLLECTIVE (rank 0 moves; all
    meet after).

    Raises:
        UserError: `step` > 0 has no checkpoint in any of the folders.
    """
    found = {s for d in run_dirs for s, _ in list_checkpoints(checkpoint_dir(d))}
    if step < 0 or (step > 0 and step not in found):
        raise UserError(f"--resume-from {step}: no checkpoint of step {step} in {[str(d) for d in run_dirs]} (steps "
                        f"there: {sorted(found) or 'none'}; 0 starts the run over)")
    if is_main_process():
        for run_dir in run_dirs:
            for s, path in list_checkpoints(checkpoint_dir(run_dir)):
                if s > step:
                    _set_aside(path, checkpoint_dir(run_dir) / "abandoned",
                               f"newer than --resume-from {step}: set aside when the run went back to step {step}")
    barrier()


def divergence_advice(run_dirs: list[Path], first_bad_step: int) -> str:
    """What to do after a divergence whose non-finite streak started at `first_bad_step`: the checkpoints written
    before it, newest first, and the flag that goes back to one."""
    before = sorted((s for d in run_dirs for s, _ in list_checkpoints(checkpoint_dir(d)) if s < first_bad_step),
                    reverse=True)
    if not before:
        return ("No checkpoint was written before the divergence: change the settings and start over "
                "(--resume-from 0).")
    others = f"; earlier ones: {before[1:6]}" if len(before) > 1 else ""
    return (f"The last checkpoint before the first skipped step is step {before[0]}{others}. It may already hold "
            f"diverging weights: after changing the settings, rerun with --resume-from {before[0]} (or an earlier "
            "step) to continue from there; newer checkpoints are set aside, not deleted.")


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


@dataclasses.dataclass(frozen=True)
class Retention:
    """The official `manage_ckpt_num` policy. Milestones are steps `milestone_start + k * milestone_every`
    (k >= 0); kept: the newest `max_milestones` milestones, and the newest `keep_last` non-milestone checkpoints that
    are newer than the newest milestone. Official values: every 50k from 50k, 30 milestones (tokenizer) / 40 (GPT),
    10 non-milestones."""

    keep_last: int = 10
    milestone_every: int = 50_000
    milestone_start: int = 50_000
    max_milestones: int = 30


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep_last: int = 10, milestone_every: int = 50_000,
                      milestone_start: int = 50_000, max_milestones: int = 30) -> list[Path]:
    """Delete old checkpoints with the `Retention` policy (rank 0 only; a no-op elsewhere). The newest checkpoint
    is never deleted; leftover `*.tmp` files of interrupted writes are removed as well.

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
    deleted += remove_stale_temporaries(ckpt_dir)
    if deleted:
        logger.info("pruned %d old checkpoint file(s) in %s", len(deleted), ckpt_dir)
    return deleted


# ----------------------------------------------------------------------------------------------------------------
# The one save / resume path
# ----------------------------------------------------------------------------------------------------------------

class State(Protocol):
    """Something a checkpoint entry saves and restores (see the adapters in `gigatok.infra.states`)."""

    def save(self) -> Any:
        """The entry's value (plain containers / tensors); None leaves the entry out. May be a collective (FSDP2):
        `CheckpointManager.save` calls it on every rank."""

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        """Restore from the entry (`checkpoint` is the whole file, for context such as its step)."""

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        """The checkpoint has no such entry: fall back (and say so)."""


_RESERVED = {"version", "step", "steps", "rng", "world_size", "config", "extra"}


class CheckpointManager:
    """Saves and restores every registered state of a training run (see the module docstring).

    Args:
        run_dir: where `checkpoints/` lives (each `save` may name another folder, e.g. a WSD cool-down folder).
        states: entry name -> `State`, in restore order. Dotted names ("extra.guard") live inside "extra".
        config: the resolved run config (saved in every checkpoint).
        retention: pruning policy applied after each save.
        health: called on every rank before a save (a collective if it needs one): a reason not to save (e.g.
            non-finite weights, or steps just skipped for a non-finite loss), or None. A refused save writes nothing
            and logs the reason: a checkpoint is never made of weights the run could not resume from.
    """

    def __init__(self, run_dir: str | os.PathLike, states: Mapping[str, State], config: Any = None,
                 retention: Retention = Retention(), health: Callable[[], str | None] | None = None) -> None:
        bad = sorted(set(states) & _RESERVED)
        if bad:
            raise ValueError(f"checkpoint entries {bad} are written by the manager itself")
        self.run_dir = Path(run_dir)
        self.states = dict(states)
        self.config = None if config is None else plain_config(config)
        self.retention = retention
        self.health = health

    def save(self, step: int, run_dir: str | os.PathLike | None = None) -> Path | None:
        """Write `{run_dir}/checkpoints/{step:07d}.pt` atomically, then prune. COLLECTIVE: every rank calls it at the
        same step; only rank 0 writes; all meet at a barrier after, so nobody reads or prunes a file being written.

        Call it at the end of step `step` (after the optimizer/EMA updates): resuming then starts step `step`.

        Returns:
            The checkpoint path, or None when the health check refused the save.
        """
        if self.health is not None and (reason := self.health()) is not None:
            logger.warning("not saving a checkpoint at step %d: %s", step, reason)
            return None
        run_dir = self.run_dir if run_dir is None else Path(run_dir)
        path = checkpoint_path(run_dir, step)
        entries = {name: state.save() for name, state in self.states.items()}  # collective for FSDP2 states
        top = {k: v for k, v in entries.items() if "." not in k and v is not None}
        extra = {k.split(".", 1)[1]: v for k, v in entries.items() if "." in k and v is not None}
        # Validate on every rank BEFORE the RNG collective, so that a bad value raises everywhere instead of
        # leaving the other ranks waiting at a barrier.
        for key in ("data_state", *(k for k in top if k.startswith(("scaler", "optimizer")))):
            if key in top:
                check_plain(top[key], f"'{key}'")
        check_plain(extra, "'extra'")
        check_plain(self.config, "'config'")
        rng_states = gather_rng_states()  # collective: before the rank-0 branch
        if is_main_process():
            ckpt: dict[str, Any] = {"version": CHECKPOINT_VERSION, "step": int(step), "steps": int(step), **top,
                                    "rng": rng_states, "world_size": get_world_size()}
            if self.config is not None:
                ckpt["config"] = self.config
            if extra:
                ckpt["extra"] = extra
            torch_save_atomic(ckpt, path)
            logger.info("saved checkpoint %s", path)
        barrier()
        r = self.retention
        prune_checkpoints(checkpoint_dir(run_dir), r.keep_last, r.milestone_every, r.milestone_start,
                          r.max_milestones)
        return path

    def restore(self, checkpoint: str | os.PathLike | Mapping[str, Any], *, only: tuple[str, ...] | None = None,
                with_rng: bool = True) -> int:
        """Restore every registered state from a checkpoint (path or loaded dict); returns its step.

        Args:
            only: restore just these entries (e.g. the weights for `--finetune`); the rest keep their fresh state.
            with_rng: restore the RNG streams last (after every random init, before the first data iterator).
        """
        ckpt = checkpoint if isinstance(checkpoint, Mapping) else load_training_checkpoint(checkpoint)
        extra = ckpt.get("extra") or {}
        for name, state in self.states.items():
            if only is not None and name not in only:
                continue
            holder, key = (extra, name.split(".", 1)[1]) if "." in name else (ckpt, name)
            if holder.get(key) is not None:
                state.load(holder[key], ckpt)
            else:
                state.missing(ckpt)
        if with_rng:
            restore_rng(ckpt)
        return int(ckpt["step"])
