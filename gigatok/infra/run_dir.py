"""The run folder's own files: the resolved config and the comparison of a resumed run's config with its checkpoint.

`config.yaml` describes the checkpoints next to it, so it is written only after the resume was validated (the
checkpoint was read and loaded into the models built from the new config), and rewritten only when the run really
changes, with the previous version kept as `config.<step>.yaml` (the step it stopped describing the run at).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gigatok.infra.dist import is_main_process
from gigatok.infra.io import write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"


def write_run_config(run_dir: str | os.PathLike, text: str, step: int) -> Path:
    """Write `<run_dir>/config.yaml` (rank 0 only) unless it already holds `text`; a different existing one is kept
    as `config.<step:07d>.yaml`. Returns the config path."""
    path = Path(run_dir) / CONFIG_NAME
    if not is_main_process():
        return path
    if path.is_file():
        old = path.read_text()
        if old == text:
            return path
        kept = path.with_name(f"config.{step:07d}.yaml")
        write_text_atomic(kept, old)
        logger.info(f"the run's config changed at step {step:,}: the previous one is kept as {kept.name}")
    return write_text_atomic(path, text)


def config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two nested config dicts."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes
