"""Build GPTs from registry names and load official GigaTok / LlamaGen (or own) checkpoints into them.

Level 2 of the import graph: it joins `gigatok.gpt` (architecture) with `gigatok.infra.checkpoint` (files).
Loading is always strict: a checkpoint that does not match the requested architecture raises a
`CheckpointError` naming the missing, unexpected and mis-shaped keys. The only key ever dropped is a stray
`freqs_cis` (never a parameter; some LlamaGen-derived files carry it).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gigatok.gpt.config import GPTConfig
from gigatok.gpt.model import GPT, GPT_MODELS
from gigatok.infra.checkpoint import (
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
    resolve_checkpoint_path,
)

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}


def build_gpt_config(gpt_model: str, **overrides: Any) -> GPTConfig:
    """`GPTConfig` of registry size `gpt_model` (e.g. "GPT-B") with field overrides.

    Raises:
        ValueError: unknown size name or unknown field.
    """
    if gpt_model not in GPT_MODELS:
        raise ValueError(f"unknown gpt_model '{gpt_model}', expected one of {sorted(GPT_MODELS)}")
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown GPT config field(s) {unknown}; valid fields: {sorted(_CONFIG_FIELDS)}")
    return GPTConfig(**{**GPT_MODELS[gpt_model], **overrides})


def recorded_gpt_fields(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The GPT config fields our training runs record in their checkpoints (`extra.gpt_config`), or None for
    official files, which must be sized from flags and data."""
    recorded = (ckpt.get("extra") or {}).get("gpt_config")
    if recorded is None:
        return None
    return {k: v for k, v in recorded.items() if k in _CONFIG_FIELDS}


def build_gpt(gpt_model: str, **overrides: Any) -> GPT:
    """Freshly initialised GPT of registry size `gpt_model`; builds on the current default device (meta works)."""
    return GPT(build_gpt_config(gpt_model, **overrides))


def load_gpt(checkpoint: str | os.PathLike | Mapping[str, Any], gpt_model: str, pos_type: str = "learned_1d",
             vocab_size: int = 16384, block_size: int = 256, num_classes: int = 1000, cls_token_num: int = 1,
             use_qk_norm: bool = False, use_ema: bool = False, device: str | torch.device = "cpu",
             **overrides: Any) -> GPT:
    """Build a GPT and load weights strictly; returns it in eval mode on `device` (float32).

    Args:
        checkpoint: a path / `hf://owner/repo/file.pt`, or an already loaded checkpoint dict. Weights are taken
            from "model" (official samplers' choice), else "module", else "state_dict", else a bare state dict
            (`--from-fsdp` files); with `use_ema` the "ema" entry comes first.
        gpt_model: registry size ("GPT-B", ..., "GPT-3B").
        pos_type: "learned_1d" for GigaTok gpt_1d checkpoints, "rope_2d" for LlamaGen c2i, "rope_1d" for
            GigaTok --rope.
        vocab_size, block_size, num_classes, cls_token_num, use_qk_norm, overrides: further `GPTConfig` fields.

    Raises:
        CheckpointError: unreadable file, no weights, or any key/shape mismatch with the built model.
    """
    config = build_gpt_config(gpt_model, pos_type=pos_type, vocab_size=vocab_size, block_size=block_size,
                              num_classes=num_classes, cls_token_num=cls_token_num, use_qk_norm=use_qk_norm,
                              **overrides)
    source = "checkpoint dict" if isinstance(checkpoint, Mapping) else f"checkpoint '{checkpoint}'"
    if isinstance(checkpoint, Mapping):
        ckpt = dict(checkpoint)
    elif str(checkpoint).endswith(".safetensors"):  # weights-only export (python -m gigatok.export --gpt-ckpt ...)
        from safetensors.torch import load_file

        ckpt = {"model": load_file(str(resolve_checkpoint_path(checkpoint)))}
    else:
        ckpt = read_checkpoint(checkpoint)
    prefer = ("ema", "model", "module", "state_dict") if use_ema else ("model", "module", "state_dict")
    state = extract_state_dict(ckpt, prefer=prefer, source=source)

    # Allocate without initialising (the weights are overwritten anyway): meta build, then real storage.
    with torch.device("meta"):
        gpt = GPT(config)
    gpt.to_empty(device=device)
    load_state_dict_strict(gpt, state, source=source, ignore=("freqs_cis",), hint=_pos_type_hint(state, pos_type))
    return gpt.eval()


def _pos_type_hint(state: Mapping[str, torch.Tensor], pos_type: str) -> str:
    has_pos = "positional_embedding" in state
    if has_pos and pos_type != "learned_1d":
        return "The checkpoint has 'positional_embedding' (GigaTok gpt_1d): use pos_type='learned_1d'."
    if not has_pos and pos_type == "learned_1d":
        return ("The checkpoint has no 'positional_embedding' (LlamaGen gpt.py or GigaTok --rope): use "
                "pos_type='rope_2d' (LlamaGen c2i) or 'rope_1d'.")
    return f"Check gpt_model, vocab_size, block_size and num_classes against the checkpoint (pos_type='{pos_type}')."


def load_gpt_export(folder: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """Load a GPT exported by `python -m gigatok.export --gpt-ckpt ...` (model.safetensors + config.yaml)."""
    import yaml

    folder = Path(folder)
    with open(folder / "config.yaml") as f:
        exported = yaml.safe_load(f)
    fields = {k: v for k, v in exported["config"].items() if k in _CONFIG_FIELDS}
    return load_gpt(folder / "model.safetensors", exported["gpt_model"], device=device, **fields)
