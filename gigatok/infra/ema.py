"""Exponential moving average of a model's weights.

Official behaviour (GigaTok `--ema`, LlamaGen `update_ema`): the EMA starts as a copy of the model and, after
every optimizer step, each named parameter becomes `decay * ema + (1 - decay) * param` with a constant decay of
0.9999 (no warm-up). That is our default. `warmup=True` switches to the common
`min(decay, (1 + n) / (10 + n))` ramp, which lets short runs get a useful EMA.

Buffers: the official update leaves them at their value from the initial copy, which freezes e.g. the
tokenizer's `quantize.codebook_used` window and BatchNorm running stats in the EMA. We copy every buffer from the
model at each update instead (buffers are statistics, not weights), unless `average_buffers=True`, which averages
float buffers like parameters. Non-float buffers (counters such as `num_batches_tracked`) are always copied.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from gigatok.infra.checkpoint import extract_state_dict, load_state_dict_strict
from gigatok.infra.parallel import unwrap

OFFICIAL_EMA_DECAY = 0.9999


class EMA:
    """An EMA copy of a module, updated in place after each optimizer step.

    Args:
        model: the trained module; DDP and torch.compile wrappers are removed before copying, so the EMA's keys
            match the bare model's (`ema.state_dict()` loads into an un-wrapped model, official loaders too).
        decay: EMA decay (official 0.9999).
        warmup: use `min(decay, (1 + n) / (10 + n))` with n = number of updates so far (not official).
        average_buffers: average float buffers too instead of copying them.
        device: where the EMA lives (e.g. "cpu" to save accelerator memory); default: the model's device.

    Attributes:
        module: the EMA model (eval mode, `requires_grad=False`); use it for evaluation and sampling.
        num_updates: number of `update` calls so far.

    FSDP-sharded models are not handled here: their parameters are shards (DTensors) per rank.
    """

    def __init__(self, model: nn.Module, decay: float = OFFICIAL_EMA_DECAY, warmup: bool = False,
                 average_buffers: bool = False, device: str | torch.device | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1]; got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.average_buffers = average_buffers
        self.num_updates = 0
        self.module = copy.deepcopy(unwrap(model)).eval()
        if device is not None:
            self.module.to(device)
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of `model` (wrapped or not) into the average; call after `optimizer.step()`."""
        decay = self.current_decay()
        source = unwrap(model)
        model_params = dict(source.named_parameters())
        ema_pairs, model_tensors = [], []
        for name, ema_param in self.module.named_parameters():
            param = model_params[name]
            if ema_param.is_floating_point():
                ema_pairs.append(ema_param)
                model_tensors.append(param.detach().to(device=ema_param.device, dtype=ema_param.dtype))
            else:
                ema_param.copy_(param)
        if ema_pairs:
            # lerp(ema, p, 1 - decay) == decay * ema + (1 - decay) * p, one fused kernel per device/dtype bucket.
            torch._foreach_lerp_(ema_pairs, model_tensors, 1.0 - decay)
        model_buffers = dict(source.named_buffers())
        for name, ema_buf in self.module.named_buffers():
            buf = model_buffers.get(name)
            if buf is None:
                continue  # a non-persistent buffer the source does not have (never happens for a deepcopy)
            if self.average_buffers and ema_buf.is_floating_point():
                ema_buf.lerp_(buf.to(device=ema_buf.device, dtype=ema_buf.dtype), 1.0 - decay)
            else:
                ema_buf.copy_(buf)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA model's state dict: exactly the keys of the bare model (the official `"ema"` checkpoint entry)."""
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor], num_updates: int | None = None) -> None:
        """Load EMA weights strictly (wrapper prefixes are stripped); `num_updates` restores the warm-up position.

        Resuming passes the checkpoint's step as `num_updates`, since the EMA is updated once per step.
        """
        load_state_dict_strict(self.module, extract_state_dict(dict(state), source="EMA state"), source="EMA state")
        if num_updates is not None:
            self.num_updates = num_updates
