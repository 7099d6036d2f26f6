"""The run folder's own files: the lock that keeps one trainer per folder, the resolved config, and the comparison
of a resumed run's config with its checkpoint.

One trainer per run folder: rank 0 holds an exclusive `flock` on `<run>/.lock` for the life of the run (the kernel
releases it when the process dies, however it dies), and a second trainer on the same folder stops at once with a
message naming the live one.

`config.yaml` describes the checkpoints next to it, so it is written only after the resume was validated (the
checkpoint was read and loaded into the models built from the new config), and rewritten only when the run really
changes, with the previous version kept as `config.<step>.yaml` (the step it stopped describing the run at).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gigatok.errors import UserError
from gigatok.infra.dist import all_gather_objects, is_main_process
from gigatok.infra.io import write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}  # run folder -> open file descriptor of its lock (held until the process exits)


class RunInUseError(UserError):
    """Another live trainer holds the run folder."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder for the body (COLLECTIVE: rank 0 locks, every rank learns the outcome); the lock also
    ends with the process, however it ends.

    Raises:
        RunInUseError: another process holds the lock; the message names its pid, host and start time.
    """
    key = str(Path(run_dir).resolve())
    owner = key not in _HELD  # re-entrant within one process
    if owner:
        _lock(Path(run_dir))
    try:
        yield
    finally:
        fd = _HELD.pop(key, None) if owner else None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def _lock(run_dir: Path) -> None:
    problem = None
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            problem = (f"the run folder '{run_dir}' is in use by another trainer ({holder}). Two trainers on one "
                       "folder would overwrite each other's checkpoints: wait for it to finish or stop it, then run "
                       "this command again (it resumes), or pass another --sub-exp-dir.")
        else:
            os.ftruncate(fd, 0)
            started = datetime.datetime.now().isoformat(timespec="seconds")
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
            _HELD[str(run_dir.resolve())] = fd
    problem = all_gather_objects(problem)[0]
    if problem is not None:
        raise RunInUseError(problem)


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
