"""The `State` adapters a trainer registers with `CheckpointManager`: one per kind of object with state.

Each says what its checkpoint entry holds (`save`), how to put it back (`load`), and what to do when a checkpoint
lacks it (`missing`: official files have no EMA, RNG, data position or loop counters; older runs may lack newer
entries). Models and optimizers are unwrapped from DDP / compile and gathered from FSDP2 shards here, so the files
never depend on how the run was parallelised.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from gigatok.infra.checkpoint import (
    CheckpointError,
    check_state_dict,
    extract_state_dict,
    load_state_dict_strict,
)
from gigatok.infra.ema import EMA
from gigatok.infra.optim import load_optimizer_state
from gigatok.infra.parallel import (
    full_model_state,
    full_optimizer_state,
    is_fsdp,
    load_full_model_state,
    load_full_optimizer_state,
    optimizer_format,
    unwrap,
)

logger = logging.getLogger(__name__)


class ModelState:
    """A (possibly wrapped or sharded) model: its bare full state dict; loaded strictly (a readable error lists
    missing, unexpected and mis-shaped keys).

    Args:
        name: the entry ("model", "discriminator"), named in messages.
        required: a missing entry is an error (the generator) rather than a fresh start with a warning.
    """

    def __init__(self, model: nn.Module, name: str = "model", required: bool = True) -> None:
        self.model, self.name, self.required = model, name, required

    def save(self) -> dict[str, torch.Tensor]:
        # extract_state_dict strips wrapper prefixes that nested wrappers (compile inside a module) leak into keys.
        return extract_state_dict({"s": full_model_state(self.model)}, prefer=("s",), source=self.name)

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        state = extract_state_dict(checkpoint, prefer=(self.name,), source=f"checkpoint '{self.name}'")
        if is_fsdp(self.model):
            check_state_dict(unwrap(self.model), state, source=f"checkpoint '{self.name}'")
            load_full_model_state(self.model, state)
        else:
            load_state_dict_strict(unwrap(self.model), state, source=f"checkpoint '{self.name}'")

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        if self.required:
            raise CheckpointError(f"the checkpoint has no '{self.name}' entry (entries: {sorted(checkpoint)[:10]})")
        logger.warning("checkpoint has no '%s' entry: it starts fresh", self.name)


class EMAState:
    """An `EMA` of `model`; one update per step, so its update count is the checkpoint's step. A checkpoint without
    an EMA (the run had none) restarts it from the resumed model weights."""

    def __init__(self, ema: EMA, model: nn.Module) -> None:
        self.ema, self.model = ema, model

    def save(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict()

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        self.ema.load_state_dict(entry, num_updates=int(checkpoint["step"]))

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        logger.warning("checkpoint has no 'ema' entry: the EMA restarts from the resumed model weights")
        self.ema.module.load_state_dict(unwrap(self.model).state_dict())
        self.ema.num_updates = int(checkpoint["step"])


class OptimizerState:
    """An optimizer of `model`. Saved keyed by parameter index (the official layout) or, under FSDP2, by parameter
    name; the layout is recorded in "extra.<name>_format" (`format_entry`). A saved state in the other layout (a run
    moved between DDP and FSDP) cannot be mapped: the moments restart from zero, with a warning."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, name: str = "optimizer") -> None:
        self.optimizer, self.model, self.name = optimizer, model, name

    @property
    def format(self) -> str:
        return optimizer_format(self.model)

    def save(self) -> dict[str, Any]:
        return full_optimizer_state(self.model, self.optimizer)

    def _saved_format(self, checkpoint: Mapping[str, Any]) -> str:
        extra = checkpoint.get("extra") or {}
        if self.name == "optimizer" and "optimizer_format" in extra:
            return extra["optimizer_format"]
        if extra.get("data_parallel") == "fsdp":  # GPT runs before the format was recorded
            return "fqn"
        return "param_ids"  # official files and DDP runs

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        saved = self._saved_format(checkpoint)
        if saved != self.format:
            logger.warning(f"the checkpoint's '{self.name}' state is in another data-parallel layout ({saved} vs "
                           f"{self.format}): AdamW moments restart from zero")
        elif self.format == "fqn":
            load_full_optimizer_state(self.model, self.optimizer, entry)
        else:
            load_optimizer_state(self.optimizer, entry)  # keeps the built kernel (fused or not)

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        logger.warning("checkpoint has no '%s' entry: it starts fresh", self.name)


class ScalerState:
    """A `torch.amp.GradScaler`: saved only when enabled (fp16 runs); bf16/fp32 runs never have one."""

    def __init__(self, scaler: torch.amp.GradScaler, name: str = "scaler") -> None:
        self.scaler, self.name = scaler, name

    def save(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        self.scaler.load_state_dict(entry)

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        if self.scaler.is_enabled():
            logger.warning("checkpoint has no '%s' entry: it starts fresh", self.name)


class SamplerState:
    """The data position (`ResumableDistributedSampler`). Official checkpoints have none: the run restarts the epoch
    its step falls in, as the official loop does."""

    def __init__(self, sampler: Any, steps_per_epoch: int) -> None:
        self.sampler, self.steps_per_epoch = sampler, steps_per_epoch

    def save(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(entry)

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        self.sampler.set_epoch(int(checkpoint["step"]) // self.steps_per_epoch)


class ObjectState:
    """Any object with `state_dict()` / `load_state_dict(state)` (guards, codebook counters); a missing entry keeps
    its fresh state."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def save(self) -> Any:
        return self.obj.state_dict()

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        self.obj.load_state_dict(entry)

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        pass


class ValueState:
    """A value read and written through two functions (loop counters, small tensors of a loss); a missing entry
    keeps the current value."""

    def __init__(self, get: Callable[[], Any], set: Callable[[Any], None]) -> None:  # noqa: A002 - pairs with get
        self.get, self.set = get, set

    def save(self) -> Any:
        return self.get()

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        self.set(entry)

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        pass


class ConstState:
    """A fact about the run recorded for later readers (e.g. the GPT's architecture); nothing to restore."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def save(self) -> Any:
        return self.value

    def load(self, entry: Any, checkpoint: Mapping[str, Any]) -> None:
        pass

    def missing(self, checkpoint: Mapping[str, Any]) -> None:
        pass
