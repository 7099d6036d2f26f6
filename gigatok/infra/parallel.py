"""Everything about how a model is run, kept out of the model files: data parallelism (DDP, FSDP2), torch.compile,
activation checkpointing, gradient sync during accumulation, full state dicts of sharded models, and the CNN
memory layout.

Entry points call `parallelize(model, ...)` once and keep the returned module for the forward pass; `unwrap(module)`
gives the plain model back for anything that needs it (EMA, checkpoints, eval).

FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each unit of `fsdp_wrap_units(model)` (the transformer layers:
the Q-Former / ViT layers of the tokenizer, the blocks of the GPT) and then the root, as the official FSDP trainers
wrap them. On CPU it runs over gloo, which is how the tests exercise it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

DataParallel = Literal["none", "ddp", "fsdp"]

# Attribute names of the nn.ModuleLists that hold transformer layers: `layers` (GPT blocks), `transformer`
# (the tokenizer's Q-Former and ViT stacks). Their elements are the FSDP wrap units.
FSDP_UNIT_LISTS = ("layers", "transformer")


def unwrap(module: nn.Module) -> nn.Module:
    """The plain model under DDP / DataParallel (`.module`) and torch.compile (`._orig_mod`) wrappers, in any nesting
    order (FSDP2 wraps in place, so a sharded model is its own plain model)."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def fsdp_wrap_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP wrap units of a model: every element of its `FSDP_UNIT_LISTS` module lists, in module order."""
    units = []
    for name, child in model.named_modules():
        if isinstance(child, nn.ModuleList) and name.rsplit(".", 1)[-1] in FSDP_UNIT_LISTS:
            units.extend(child)
    return units


def is_fsdp(module: nn.Module) -> bool:
    """True for a model sharded with FSDP2 (`fully_shard` swaps its class for an `FSDP<cls>` subclass)."""
    return any(cls.__name__ == "FSDPModule" for cls in type(unwrap(module)).__mro__)


def _precision_dtype(name: str) -> torch.dtype | None:
    return {"none": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def parallelize(model: nn.Module, data_parallel: DataParallel = "ddp", *, device: torch.device,
                param_dtype: str = "none", reduce_dtype: str = "fp32", find_unused_parameters: bool = False,
                compile_model: bool = False, activation_checkpointing: bool = False) -> nn.Module:
    """Return the module to train with.

    Args:
        data_parallel: "ddp", "fsdp" (FSDP2, full sharding) or "none". Without an initialised process group
            (a single process started without torchrun) "ddp" and "fsdp" fall back to "none".
        param_dtype, reduce_dtype: FSDP2 mixed precision ("none"/"fp32"/"bf16"/"fp16"); ignored by DDP (use
            autocast there).
        find_unused_parameters: DDP option; the tokenizer needs it while parts of the model (distill MLP, shortcut
            decoder pass) are idle on some steps, as the official trainer does.
        compile_model: torch.compile the (wrapped) model.
        activation_checkpointing: recompute the FSDP wrap units' activations in backward.
    """
    units = fsdp_wrap_units(model)
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
        )

        unit_ids = {id(u) for u in units}
        apply_activation_checkpointing(model, check_fn=lambda m: id(m) in unit_ids)
    if data_parallel != "none" and not dist.is_initialized():
        data_parallel = "none"  # single process without torchrun
    if data_parallel == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                    find_unused_parameters=find_unused_parameters)
    elif data_parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(memory_format=torch.contiguous_format)  # FSDP2 cannot shard channels-last conv weights
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        policy = MixedPrecisionPolicy(param_dtype=_precision_dtype(param_dtype),
                                      reduce_dtype=_precision_dtype(reduce_dtype))
        if activation_checkpointing:  # the wrap units are now CheckpointWrapper children: shard those
            units = [m for m in model.modules() if type(m).__name__ == "CheckpointWrapper"]
        for unit in units:
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    elif data_parallel != "none":
        raise ValueError(f"data_parallel must be 'none', 'ddp' or 'fsdp', got '{data_parallel}'")
    if compile_model:
        model = torch.compile(model)
    return model


@contextlib.contextmanager
def grad_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of non-final accumulation micro-batches (DDP `no_sync`, FSDP2
    `set_requires_gradient_sync`); a no-op for a plain model or when `enabled`."""
    inner = getattr(module, "_orig_mod", module)
    if enabled:
        yield
    elif isinstance(inner, nn.parallel.DistributedDataParallel):
        with inner.no_sync():
            yield
    elif hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def params_finite(module: nn.Module) -> bool:
    """Whether every parameter of the model is finite on every rank (COLLECTIVE under a process group: each rank
    checks its own tensors or FSDP2 shards, then one all-reduce)."""
    ok = all(bool(torch.isfinite(getattr(p, "_local_tensor", p)).all()) for p in unwrap(module).parameters())
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = next(unwrap(module).parameters()).device
        flag = torch.tensor(float(ok), device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item())
    return ok


def local_norm(value: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP2's `clip_grad_norm_` returns a DTensor)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


# ----------------------------------------------------------------------------------------------------------------
# Full (unsharded) state dicts: what a checkpoint holds, whatever the data parallelism
# ----------------------------------------------------------------------------------------------------------------

def full_model_state(module: nn.Module) -> dict[str, Any]:
    """The plain model's state dict; for an FSDP2 model the gathered full one on the CPU (COLLECTIVE then: every
    rank calls it; rank 0 gets the tensors)."""
    model = unwrap(module)
    if not is_fsdp(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict: keyed by parameter index (the official layout) for a plain/DDP model, by
    parameter name ("fqn") for an FSDP2 one (gathered to full tensors on the CPU; COLLECTIVE)."""
    model = unwrap(module)
    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


def load_full_model_state(module: nn.Module, state: Mapping[str, Any]) -> None:
    """Load a full state dict into an FSDP2 model (each rank keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
    )

    set_model_state_dict(unwrap(module), dict(state), options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a full, name-keyed optimizer state into the optimizer of an FSDP2 model."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(unwrap(module), optimizer, dict(state), options=StateDictOptions(full_state_dict=True))


def optimizer_format(module: nn.Module) -> str:
    """How `full_optimizer_state` keys this model's optimizer state: "param_ids" (official) or "fqn" (FSDP2)."""
    return "fqn" if is_fsdp(module) else "param_ids"


# ----------------------------------------------------------------------------------------------------------------
# CNN memory layout: the tokenizer's CNN encoder and decoder carry a `memory_format` attribute (their weights and
# activations run in it); these switch it without the model knowing why.
# ----------------------------------------------------------------------------------------------------------------

def _cnns(model: nn.Module) -> list[nn.Module]:
    return [m for m in unwrap(model).modules() if isinstance(getattr(m, "memory_format", None), torch.memory_format)]


def cnn_channels_last(model: nn.Module) -> bool:
    """Whether the model's CNNs run channels-last (False when it has none)."""
    cnns = _cnns(model)
    return bool(cnns) and all(m.memory_format == torch.channels_last for m in cnns)


def set_cnn_memory_format(model: nn.Module, channels_last: bool) -> None:
    """Switch every CNN of `model` to channels-last or NCHW: weights now, activations from the next forward on.
    Values are unchanged; do it before an optimizer or EMA copies the weights, so that their state has the same
    layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for cnn in _cnns(model):
        cnn.memory_format = fmt
        cnn.to(memory_format=fmt)


def restore_memory_format(model: nn.Module) -> None:
    """Put the CNN weights back in their layout after adopting checkpoint tensors with `assign=True`."""
    for cnn in _cnns(model):
        cnn.to(memory_format=cnn.memory_format)


def cnn_channels_last_for_training(setting: bool | None, device: torch.device) -> bool:
    """Resolve `model.init_args.cnn_channels_last` for training on `device`: True/False as set, None = auto.

    Auto is channels-last (cuDNN, and oneDNN's AVX-512 kernels, run convolutions fastest in it; so does every
    CPU in inference), except on x86 CPUs without AVX-512. There oneDNN's channels-last weight-gradient kernel
    (jit:avx2) is 4-5x slower than its blocked one from 128 px up (a 128-channel 3x3 conv at 256 px, batch 2:
    2.2 s vs 0.45 s on a Zen 3 core pair), and torch's channels-last GroupNorm backward is ~6x slower than its
    NCHW one; an S-S train step took 56 s channels-last and 39 s NCHW there.
    """
    if setting is not None:
        return bool(setting)
    return not (device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX2")
