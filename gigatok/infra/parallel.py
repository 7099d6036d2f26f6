"""Everything about how a model is run, kept out of the model files: data parallelism (DDP, FSDP2), torch.compile,
activation checkpointing, gradient sync during accumulation, full state dicts of sharded models, and the CNN
memory layout.

Entry points call `parallelize(model, ...)` once and keep the returned module for the forward pass; `unwrap(module)`
gives the plain model back for anything that needs it (EMA, checkpoints, eval).

FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each unit of `fsdp_wrap_units(model)` (the transformer layers:
the Q-Former / ViT layers of the tokenizer, the blocks of the GPT) and then the root, as the official FSDP trainers
wrap them. The official `--data-parallel` modes (FSDP1 sharding strategies) map onto it as:
    fsdp  FULL_SHARD      parameters, gradients and optimizer state sharded; parameters freed after forward
                          (`reshard_after_forward=True`) and gathered again for backward
    sdp   SHARD_GRAD_OP   gradients and optimizer state sharded, parameters kept gathered from forward to backward
                          (`reshard_after_forward=False`; ZeRO-2-like: one all-gather per step instead of two)
    hsdp  HYBRID_SHARD    a 2D mesh (replicas, shard size): full sharding within a node, replication across nodes
                          (gradients reduce-scattered within the node, then all-reduced across nodes); the shape is
                          (WORLD_SIZE / LOCAL_WORLD_SIZE, LOCAL_WORLD_SIZE), or `GIGATOK_HSDP_MESH="RxS"`
All three gather to the same full state dicts, so checkpoints do not depend on the mode. On CPU they run over gloo,
which is how the tests exercise them.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from gigatok.errors import UserError

DataParallel = Literal["none", "ddp", "fsdp", "sdp", "hsdp"]
DATA_PARALLEL_MODES = ("none", "ddp", "fsdp", "sdp", "hsdp")
SHARDED_MODES = ("fsdp", "sdp", "hsdp")  # the FSDP2 modes (official train_*_fsdp.py --data-parallel choices)
HSDP_MESH_ENV = "GIGATOK_HSDP_MESH"

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


def grad_reduce_precision(grad_precision: str | None, mixed_precision: str) -> str:
    """The dtype FSDP reduces gradients in ("fp32" / "bf16" / "fp16"): `--grad-precision`, or when it is not set
    the `--mixed-precision` dtype ("none": fp32), as the official FSDP trainers do
    (`reduce_dtype = grad_precision or mixed_precision`)."""
    name = grad_precision or mixed_precision
    return "fp32" if name in ("none", "fp32") else name


def hsdp_mesh_shape(world_size: int) -> tuple[int, int]:
    """(replicas, shard size) of the HSDP mesh: one replica per node, sharded over the node's ranks, i.e.
    (WORLD_SIZE / LOCAL_WORLD_SIZE, LOCAL_WORLD_SIZE) from torchrun's environment; `GIGATOK_HSDP_MESH="RxS"`
    (e.g. "2x4") sets it explicitly (other shard group sizes, tests).

    Raises:
        UserError: a malformed `GIGATOK_HSDP_MESH`, or a shape whose product is not the world size.
    """
    text = os.environ.get(HSDP_MESH_ENV, "").strip()
    if text:
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise UserError(f"{HSDP_MESH_ENV}='{text}' is not a mesh shape: write it as REPLICASxSHARD_SIZE, e.g. "
                            f"'2x4' for 2 nodes of 4 GPUs")
        shape = (int(parts[0]), int(parts[1]))
        source = f"{HSDP_MESH_ENV}='{text}'"
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        shape = (world_size // max(local, 1), local)
        source = f"LOCAL_WORLD_SIZE={local} (ranks per node)"
    if shape[0] * shape[1] != world_size:
        raise UserError(f"--data-parallel hsdp: the mesh {shape[0]}x{shape[1]} from {source} does not cover the "
                        f"{world_size} ranks; launch the same number of ranks on every node, or set "
                        f"{HSDP_MESH_ENV}=REPLICASxSHARD_SIZE with REPLICAS x SHARD_SIZE = {world_size}")
    return shape


def describe_data_parallel(data_parallel: str, reduce_dtype: str = "fp32") -> str:
    """One line for the startup log: the mode as it will run (every mode is "none" without a process group), with
    the FSDP2 mesh and gradient reduce dtype of the sharded modes."""
    if not dist.is_initialized() or data_parallel == "none":
        return "none (one process)"
    world_size = dist.get_world_size()
    if data_parallel not in SHARDED_MODES:
        return f"{data_parallel} over {world_size} ranks"
    if data_parallel == "hsdp":
        replicas, shard = hsdp_mesh_shape(world_size)
        layout = f"{replicas} replica(s) x {shard} shard(s)"
    else:
        layout = f"{world_size} shards" + (", parameters kept from forward to backward" if data_parallel == "sdp"
                                           else "")
    return f"{data_parallel} (FSDP2: {layout}; gradients reduced in {reduce_dtype})"


@torch.no_grad()
def _broadcast_from_rank0(model: nn.Module) -> None:
    """Overwrite every parameter and buffer with rank 0's values (COLLECTIVE)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_contiguous():
            dist.broadcast(tensor.data, src=0)
        else:  # collectives need contiguous memory
            value = tensor.data.contiguous()
            dist.broadcast(value, src=0)
            tensor.data.copy_(value)


def _device_mesh(data_parallel: str, device: torch.device) -> Any:
    """The FSDP2 mesh: 1D over all ranks (fsdp, sdp) or 2D (replicate, shard) for hsdp."""
    from torch.distributed.device_mesh import init_device_mesh

    world_size = dist.get_world_size()
    if data_parallel != "hsdp":
        return init_device_mesh(device.type, (world_size,))
    return init_device_mesh(device.type, hsdp_mesh_shape(world_size), mesh_dim_names=("replicate", "shard"))


def parallelize(model: nn.Module, data_parallel: DataParallel = "ddp", *, device: torch.device,
                param_dtype: str = "none", reduce_dtype: str = "fp32", find_unused_parameters: bool = False,
                compile_model: bool = False, activation_checkpointing: bool = False) -> nn.Module:
    """Return the module to train with.

    Args:
        data_parallel: "ddp", one of the FSDP2 modes "fsdp" / "sdp" / "hsdp" (see the module docstring), or
            "none". Without an initialised process group (a single process started without torchrun) every mode
            falls back to "none".
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
    elif data_parallel in SHARDED_MODES:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(memory_format=torch.contiguous_format)  # FSDP2 cannot shard channels-last conv weights
        # Every rank must start from rank 0's weights, as DDP ensures and the official FSDP's sync_module_states:
        # fully_shard keeps each rank's own slice, so differently seeded inits (the tokenizer seeds per rank) would
        # otherwise mix into one model, or, across hsdp replicas, train diverging copies.
        _broadcast_from_rank0(model)
        mesh = _device_mesh(data_parallel, device)
        policy = MixedPrecisionPolicy(param_dtype=_precision_dtype(param_dtype),
                                      reduce_dtype=_precision_dtype(reduce_dtype))
        # sdp keeps each unit's gathered parameters from forward to backward (SHARD_GRAD_OP); fsdp and hsdp free
        # them after forward and gather again in backward.
        reshard = data_parallel != "sdp"
        if activation_checkpointing:  # the wrap units are now CheckpointWrapper children: shard those
            units = [m for m in model.modules() if type(m).__name__ == "CheckpointWrapper"]
        for unit in units:
            fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    elif data_parallel != "none":
        raise ValueError(f"data_parallel must be one of {DATA_PARALLEL_MODES}, got '{data_parallel}'")
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
    """Load a full, name-keyed optimizer state into the optimizer of an FSDP2 model.

    A trainable parameter without saved state (it never had a gradient before the checkpoint: the tokenizer's
    distill MLP with `distill_loss` off, parts idle until a later phase) starts without state, as
    `Optimizer.load_state_dict` does for DDP runs; strict loading would refuse the checkpoint.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    model = unwrap(module)
    set_optimizer_state_dict(model, optimizer, dict(state), options=StateDictOptions(full_state_dict=True,
                                                                                     strict=False))
    # set_optimizer_state_dict first creates a state for every parameter (a zero-gradient step at lr 0) and keeps
    # it where the checkpoint has none: drop those, so that the optimizer is exactly the saved one (a later first
    # gradient then starts Adam's bias correction at step 1, as in the uninterrupted run).
    saved = set(state.get("state", {}))
    for name, param in model.named_parameters():
        if name.replace("_checkpoint_wrapped_module.", "") not in saved:
            optimizer.state.pop(param, None)


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
