"""Pretrained weights that download when they can: one file, into the torch-hub cache, once per machine.

`fetch_weights(url)` makes sure `$TORCH_HOME/hub/checkpoints/<file name>` (the folder `torch.hub.get_dir()` names,
where torchvision and `torch.hub.load_state_dict_from_url` cache the same files) exists, downloading it if not:
- the body is streamed into `<dest>.tmp` in the same folder and moved onto `dest` only when complete and verified
  (`infra.io.atomic_write`), so an interrupted or failed download never leaves a file a lookup would accept;
- a published checksum is checked: torchvision and torch.hub name files `<name>-<sha256 prefix>.<ext>`
  (`vgg16-397923af.pth`), and `sha256_prefix_from_name` reads that prefix. Callers pass it only where it is known
  to be the file's own hash (not every `-<hex>` suffix is one);
- an exclusive `fcntl.flock` on `<dest>.lock` serialises the processes of one machine: with 8 ranks the first
  downloads, the others wait, then find the file. The lock file stays (removing it would race with a waiter);
- a progress bar (tqdm) is drawn when stderr is a terminal.

Environment:
- `GIGATOK_OFFLINE=1` (or Hugging Face's `HF_HUB_OFFLINE=1`): never download; no request is made.
- `GIGATOK_WEIGHTS_BASE_URL=https://mirror/folder`: fetch every file from `<base>/<file name>` instead of its
  official URL (a mirror or an internal server; the tests point it at a local one).

A failure (offline, network, HTTP error, wrong size or checksum) is a `WeightsDownloadError` whose message says
what was tried and why it failed; callers append it to their own "weights not found" error, which says where the
file was looked for and how to get it by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from gigatok.errors import UserError
from gigatok.infra.io import atomic_write

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no cross-process lock, each process downloads on its own
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

OFFLINE_ENVS = ("GIGATOK_OFFLINE", "HF_HUB_OFFLINE")
BASE_URL_ENV = "GIGATOK_WEIGHTS_BASE_URL"
TIMEOUT_S = 60.0  # per socket operation (connect, each read), not for the whole file
_CHUNK = 1 << 20
# torch.hub's HASH_REGEX: the hex run between the last "-" and the extension of `<name>-<sha256 prefix>.<ext>`.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.[A-Za-z0-9]+$")


class WeightsDownloadError(UserError):
    """Weights could not be downloaded (offline, network or HTTP error, or a damaged body); nothing was left at
    the destination. The message says what was tried and why it failed."""


def downloads_allowed() -> bool:
    """False when `GIGATOK_OFFLINE` or `HF_HUB_OFFLINE` is set to 1/true/yes/on."""
    return not any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENVS)


def hub_checkpoint_path(filename: str) -> Path:
    """`<torch.hub.get_dir()>/checkpoints/<filename>`: honours `$TORCH_HOME` (default `~/.cache/torch`)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def url_filename(url: str) -> str:
    """The last path component of `url` (`.../vgg16-397923af.pth` -> `vgg16-397923af.pth`)."""
    return Path(urllib.parse.urlparse(url).path).name


def sha256_prefix_from_name(filename: str) -> str | None:
    """The sha256 prefix a torchvision / torch.hub file name carries (`vgg16-397923af.pth` -> `397923af`), else None."""
    match = _HASH_IN_NAME.search(filename)
    return match.group(1) if match else None


def source_url(url: str) -> str:
    """`url`, or `<GIGATOK_WEIGHTS_BASE_URL>/<its file name>` when that variable is set."""
    base = os.environ.get(BASE_URL_ENV, "").strip()
    return f"{base.rstrip('/')}/{url_filename(url)}" if base else url


@contextmanager
def _exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the duration of the block."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(f"waiting for another process that is downloading {what} (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _stream(url: str, out: IO[bytes], sha256_prefix: str | None, what: str, timeout: float) -> None:
    """Copy the body of `url` into `out`; raise `WeightsDownloadError` on a short body or a wrong checksum."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "gigatok"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        digest, received = hashlib.sha256(), 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what,
                  disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise WeightsDownloadError(f"the connection closed after {received:,} of {total:,} bytes")
    if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix.lower()):
        raise WeightsDownloadError(f"checksum mismatch: the sha256 of the received {received:,} bytes is "
                                   f"{digest.hexdigest()[:16]}..., expected {sha256_prefix}... "
                                   "(a damaged transfer, or a mirror serving another file under this name)")


def fetch_weights(url: str, dest: str | os.PathLike | None = None, sha256_prefix: str | None = None,
                  what: str = "weights", timeout: float = TIMEOUT_S) -> Path:
    """Return `dest`, downloading it from `url` first when it does not exist.

    Args:
        url: the official URL (`GIGATOK_WEIGHTS_BASE_URL` replaces all but its file name).
        dest: where the file goes; default: the torch-hub cache file of the URL's name (`hub_checkpoint_path`).
        sha256_prefix: hex prefix the body's sha256 must start with (None: not checked).
        what: a few words for logs, the progress bar and errors ("VGG16 ImageNet weights").
        timeout: seconds per socket operation.

    Raises:
        WeightsDownloadError: downloading is disabled, or it failed; `dest` is then left absent (or as it was).
        DiskFullError: the disk ran out (the partial file is removed).
    """
    dest = Path(dest) if dest is not None else hub_checkpoint_path(url_filename(url))
    if dest.is_file():
        return dest
    source = source_url(url)
    if not downloads_allowed():
        set_vars = ", ".join(f"{name}={os.environ[name]}" for name in OFFLINE_ENVS if name in os.environ)
        raise WeightsDownloadError(f"Not downloaded from {source}: downloading is disabled ({set_vars}); unset it to "
                                   "let the file download, or place it by hand.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(dest.with_name(dest.name + ".lock"), what):
        if dest.is_file():  # another process downloaded it while this one waited for the lock
            return dest
        logger.info(f"downloading {what}: {source} -> {dest}")
        start = time.perf_counter()
        try:
            atomic_write(dest, lambda out: _stream(source, out, sha256_prefix, what, timeout))
        except WeightsDownloadError as err:
            raise WeightsDownloadError(f"Downloading {what} from {source} failed: {err}") from None
        except UserError:  # a full disk: its own message is the right one
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            # HTTPError/URLError (OSError subclasses): the reason; anything else: the exception itself.
            reason = getattr(err, "reason", None) if isinstance(err, urllib.error.URLError) else None
            code = f"HTTP {err.code} " if isinstance(err, urllib.error.HTTPError) else ""
            detail = f"{code}{reason}" if reason is not None else f"{type(err).__name__}: {err}"
            hint = "" if os.environ.get(BASE_URL_ENV) else f" (a mirror can be named with {BASE_URL_ENV})"
            raise WeightsDownloadError(f"Downloading {what} from {source} failed: {detail}{hint}.") from None
    size = dest.stat().st_size
    logger.info(f"downloaded {what} ({size / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s) to {dest}")
    return dest
