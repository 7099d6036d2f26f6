"""Atomic file writes: the one writer every stage uses for results, checkpoints, codes and configs.

`atomic_write(path, write)` calls `write(file)` on a temporary file in the target folder, flushes and fsyncs it, then
`os.replace`s it onto `path`: a reader (or a resumed run) sees the old file or the new one, never half of one. On any
error (Ctrl-C included) the temporary file is removed, so a failed write leaves nothing behind (a full disk stays no
fuller). The temporary file is `<name>.tmp`: only one process ever writes a given file (rank 0, or the rank that owns
a chunk), and a `kill -9` in the middle of a write can leave one, which no reader matches (checkpoint listings look
for `<step>.pt`), which the next write of the same file replaces, and which `remove_stale_temporaries` cleans up.

The helpers below only choose the serialisation: text, JSON, `.npy`, `.npz`, PNG and `torch.save`.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from gigatok.errors import UserError

TMP_SUFFIX = ".tmp"


class DiskFullError(UserError, OSError):
    """The disk (or quota) ran out while writing a file; the partial file was removed."""


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save's C++ writer reports ENOSPC as a RuntimeError ("... file write failed" / "No space left").
    text = str(err)
    return isinstance(err, RuntimeError) and ("No space left" in text or "file write failed" in text)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` atomically: `write(file)` on a temporary file in the same folder, fsync, `os.replace`.

    Args:
        path: the final file; its folder is created if needed.
        write: fills a binary file object (may be called with a file that is not seekable back to 0).

    Returns:
        `path` as a Path.

    Raises:
        DiskFullError: the disk or quota ran out (the partial file is removed; the old `path`, if any, is intact).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(err):
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(
                f"no space left on the device while writing '{path}' ({free / 2**20:.0f} MiB free in "
                f"'{path.parent}'). The partial file was removed and the previous version, if any, is intact: "
                "free some space (or point the output elsewhere) and run the same command again.") from None
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent))


def save_npy_atomic(path: str | os.PathLike, array: Any) -> Path:
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array))


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> Path:
    """`np.savez` (uncompressed) of `arrays`, atomically."""
    import numpy as np

    return atomic_write(path, lambda f: np.savez(f, **arrays))


def save_png_atomic(path: str | os.PathLike, image_uint8: Any) -> Path:
    """A PNG of an (H, W, 3) or (H, W) uint8 array, atomically."""
    from PIL import Image

    return atomic_write(path, lambda f: Image.fromarray(image_uint8).save(f, format="PNG"))


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path`, atomically (checkpoints)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (`*.tmp`) that a killed writer left in `folder`; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(TMP_SUFFIX)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
