"""Checkpoint files: safe reading of official and own checkpoints, atomic writing, `hf://` references.

Official GigaTok/LlamaGen checkpoints pickle an `argparse.Namespace` under `"args"`. We never run arbitrary
pickle code: files are read with `torch.load(weights_only=True)` and an allow-list that admits only the
Namespace class (plus what torch itself allows: tensors, containers, numbers, strings).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gigatok.errors import UserError

# Classes an official checkpoint may contain besides tensors and plain containers.
SAFE_GLOBALS: list[Any] = [argparse.Namespace]

# Priority order of the entries that may hold model weights (official loaders: "ema", else "model", ...).
WEIGHT_ENTRIES = ("ema", "model", "module", "state_dict")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or not matching the model."""


def resolve_checkpoint_path(ref: str | os.PathLike) -> Path:
    """Turn a local path or `hf://owner/repo/path/to/file.pt` into a local file path.

    `hf://` references are fetched through `huggingface_hub` into its cache (honours HF_HOME / HF_HUB_CACHE and
    HF_HUB_OFFLINE). Offline, a missing file is a `CheckpointError` that names the cache folder to fill.
    """
    ref = str(ref)
    if not ref.startswith("hf://"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint not found: '{ref}'. Download the official file (see the README's 'Model zoo') "
                "or pass the path of one of your own runs' checkpoints."
            )
        return path
    parts = ref[len("hf://"):].split("/")
    if len(parts) < 3:
        raise CheckpointError(f"bad Hugging Face reference '{ref}': expected hf://owner/repo/path/to/file.pt")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError as err:  # pragma: no cover - huggingface_hub is a declared dependency
        raise CheckpointError("hf:// references need the 'huggingface_hub' package: pip install huggingface_hub") from err
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as err:  # offline, missing repo or file, auth: all end the same way for the user
        cache = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        raise CheckpointError(
            f"could not fetch '{ref}' from the Hugging Face Hub ({type(err).__name__}: {err}). "
            f"When offline, place the file in the hub cache under '{cache}' (snapshots/<revision>/{filename}), "
            "e.g. with `huggingface-cli download` on a connected machine and copying HF_HOME over, "
            "or download it manually and pass its local path instead."
        ) from None


def read_checkpoint(ref: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file safely (no arbitrary pickle code).

    Returns:
        The top-level dict of the file. A bare state dict (tensor values only) is returned as is.
    """
    path = resolve_checkpoint_path(ref)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                # Memory-map zip-format files: a 12 GB XL-XXL checkpoint is paged in, not copied into RAM first.
                data = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err) and "zip" not in str(err):
                    raise
                data = torch.load(path, map_location=map_location, weights_only=True)  # legacy format
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint '{path}': {type(err).__name__}: {err}. "
            "The file is corrupt, truncated, or holds Python objects outside the safe allow-list "
            f"({', '.join(c.__name__ for c in SAFE_GLOBALS)})."
        ) from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(data).__name__}, expected a dict")
    return dict(data)


def extract_state_dict(checkpoint: Mapping[str, Any], prefer: tuple[str, ...] = WEIGHT_ENTRIES,
                       source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Pick the weights out of a checkpoint dict: the first present entry of `prefer`, else a bare state dict.

    Wrapper prefixes that leak from DDP (`module.`) and torch.compile (`_orig_mod.`) are stripped.
    """
    for name in prefer:
        if name in checkpoint and isinstance(checkpoint[name], Mapping):
            state = checkpoint[name]
            break
    else:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            state = checkpoint
        else:
            raise CheckpointError(
                f"{source} has no model weights: expected one of the entries {list(prefer)}, "
                f"found {sorted(checkpoint)[:10]}"
            )
    return {_strip_wrapper_prefixes(k): v for k, v in state.items()}


def _strip_wrapper_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key.replace("._orig_mod.", ".").replace("._fsdp_wrapped_module.", ".")


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                           ignore: tuple[str, ...] = (), hint: str = "Check that the config matches the checkpoint "
                           "(e.g. VQ_SS256.yaml for VQ_SS256_e100.pt).", assign: bool = False) -> None:
    """`load_state_dict(strict=True)` with a readable error listing missing, unexpected and mis-shaped keys.

    Args:
        ignore: key suffixes dropped from `state` before loading (e.g. a stray `freqs_cis`).
        hint: the last line of the error, saying what usually causes a mismatch.
        assign: adopt the checkpoint's tensors instead of copying into the module's (for a module built on the
            meta device: no second copy of the weights in memory).
    """
    state = {k: v for k, v in state.items() if not (ignore and k.endswith(ignore))}
    check_state_dict(module, state, source, hint)
    module.load_state_dict(state, strict=True, assign=assign)


def check_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                     hint: str = "Check that the config matches the checkpoint (e.g. VQ_SS256.yaml for "
                     "VQ_SS256_e100.pt).") -> None:
    """Raise a readable `CheckpointError` unless `state` has exactly the module's keys and shapes (global shapes for
    an FSDP2-sharded module)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        def _fmt(title: str, items: list[str]) -> str:
            if not items:
                return ""
            shown = "\n    ".join(items[:20])
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    {shown}{more}"
        raise CheckpointError(
            f"{source} does not match the model ({type(module).__name__}):"
            + _fmt("missing keys", missing) + _fmt("unexpected keys", unexpected)
            + _fmt("shape mismatches", mismatched)
            + f"\n  {hint}"
        )
