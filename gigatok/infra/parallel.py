"""Wrap a model for data parallelism (DDP or FSDP2), torch.compile and activation checkpointing.

Model code never sees any of this: entry points call `parallelize(model, ...)` once and keep the returned module
for the forward pass, and `unwrap(module)` for anything that needs the plain model (EMA, checkpoints, eval).

FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each unit listed by the model's `get_fsdp_wrap_module_list()`
(the Q-Former layers of the tokenizer, the blocks of the GPT) and then the root, as the official FSDP trainers
wrap them. On CPU it runs over gloo, which is how the tests exercise it.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

DataParallel = Literal["none", "ddp", "fsdp"]


def unwrap(module: nn.Module) -> nn.Module:
    """The plain model under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers (FSDP2 wraps in place)."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


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
    units = list(model.get_fsdp_wrap_module_list()) if hasattr(model, "get_fsdp_wrap_module_list") else []
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
