"""Image batches in the ADM `.npz` format: read them in a stream, check them loudly, write them atomically.

The format (openai/guided-diffusion `evaluations/`, used by LlamaGen and GigaTok):
  arr_0               (N, H, W, 3) uint8, NHWC, values in [0, 255]       the images (required)
  arr_1               (N,) int                                            class labels (optional, ignored by ADM)
  mu, sigma           (2048,), (2048, 2048) float64                       stored pool_3 statistics (reference only)
  mu_s, sigma_s       (2023,), (2023, 2023) float64                       stored spatial (sFID) statistics
  gigatok_kind        0-d unicode array                                   ours: what the batch is (see `KINDS`);
                                                                          ADM ignores extra keys

A batch of 50k 256-px images is ~9.8 GB, and `np.load(..., mmap_mode=...)` does not memory-map members of an
`.npz` (it is a zip), so `read_image_batches` opens the `arr_0.npy` member of the zip, parses its `.npy` header
itself and reads `batch_size` rows at a time (also through deflate for `np.savez_compressed` files), as the ADM
evaluator does.

Shape letters: B batch; H, W height and width of an image or feature map; N a flattened count, stated where used.
Here N is the number of images of a batch file and B <= batch_size the images of one streamed read.
"""
from __future__ import annotations

import ast
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from gigatok.errors import UserError
from gigatok.infra.io import save_npz_atomic

KINDS = ("generation", "reconstruction", "reference-generation", "reference-reconstruction")
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
_RANGE_PROBE_ROWS = 256  # rows read to describe the value range of a wrong-dtype array in the error message
_UINT8_HINT = "convert images in [-1, 1] with torch.clamp(127.5 * x + 128, 0, 255).to(torch.uint8) (LlamaGen/GigaTok)"


class NpzFormatError(UserError, ValueError):
    """An `.npz` that is not an ADM image batch (missing, not a zip, no `arr_0`, wrong dtype/layout, ...)."""


def _read_npy_header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Parse a `.npy` header (format versions 1, 2 and 3) and leave `fp` at the first data byte.

    Returns:
        (shape, dtype, fortran_order).
    """
    magic = fp.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY":
        raise NpzFormatError(f"{where} is not a .npy array (bad magic bytes)")
    major = magic[6]
    length_bytes = 2 if major == 1 else 4
    header_len = int.from_bytes(fp.read(length_bytes), "little")
    header = fp.read(header_len).decode("latin1" if major < 3 else "utf8")
    try:
        meta = ast.literal_eval(header)
        dtype = np.lib.format.descr_to_dtype(meta["descr"])
        return tuple(int(d) for d in meta["shape"]), dtype, bool(meta["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError) as err:
        raise NpzFormatError(f"{where} has an unreadable .npy header ({err})") from None


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    path = Path(path)
    if not path.is_file():
        raise NpzFormatError(f"'{path}' does not exist (or is not a file): expected an ADM .npz image batch")
    try:
        return zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile:
        raise NpzFormatError(
            f"'{path}' is not an .npz archive (not a zip file). Save image batches with "
            "np.savez(path, arr_0=images_uint8_nhwc) or gigatok.eval.npz.write_image_npz") from None


def _member_keys(zf: zipfile.ZipFile) -> list[str]:
    return [name[:-4] for name in zf.namelist() if name.endswith(".npy")]


def _read_small_member(zf: zipfile.ZipFile, key: str) -> np.ndarray:
    with zf.open(f"{key}.npy") as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def _describe_range(zf: zipfile.ZipFile, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> tuple[float, float]:
    """(min, max) over the first rows of arr_0 (or all of it when it is Fortran-ordered)."""
    with zf.open("arr_0.npy") as fp:
        if fortran or not shape:
            values = np.lib.format.read_array(fp, allow_pickle=False)
        else:
            _read_npy_header(fp, "arr_0")
            rows = min(shape[0], _RANGE_PROBE_ROWS)
            count = rows * int(np.prod(shape[1:]))
            values = np.frombuffer(fp.read(count * dtype.itemsize), dtype=dtype, count=count)
    values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    return (float(values.min()), float(values.max())) if values.size else (float("nan"), float("nan"))


def _check_images(path: Path, zf: zipfile.ZipFile, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
    """Raise NpzFormatError unless arr_0 is a (N, H, W, 3) uint8 array, saying how to fix what is wrong."""
    where = f"'{path}': arr_0"
    if dtype.hasobject or dtype.fields is not None:
        raise NpzFormatError(f"{where} has dtype {dtype} (objects/records); expected (N, H, W, 3) uint8 images")
    if len(shape) != 4:
        hint = ""
        if len(shape) == 3 and shape[-1] in (3, 4):
            hint = " It looks like a single image: add a batch axis (images[None])."
        elif len(shape) == 3:
            hint = " It looks like grayscale (N, H, W): repeat to 3 channels (np.repeat(x[..., None], 3, -1))."
        raise NpzFormatError(f"{where} has shape {shape} ({len(shape)}-D); expected 4-D (N, H, W, 3) NHWC.{hint}")
    if shape[-1] != 3:
        if shape[1] == 3:
            raise NpzFormatError(
                f"{where} has shape {shape}: this is NCHW (channels first), but ADM batches are NHWC. "
                "Transpose with images.transpose(0, 2, 3, 1) (torch: images.permute(0, 2, 3, 1)).")
        fix = {1: "repeat the gray channel 3 times", 4: "drop the alpha channel (images[..., :3])"}
        raise NpzFormatError(f"{where} has {shape[-1]} channels (shape {shape}); expected 3 (RGB), "
                             f"{fix.get(shape[-1], 'convert the images to RGB')}.")
    if dtype == np.uint8:
        return
    low, high = _describe_range(zf, shape, dtype, fortran)
    seen = f"dtype {dtype}, values in [{low:.4g}, {high:.4g}] over the first rows"
    if np.issubdtype(dtype, np.floating) and low >= -1.0 - 1e-6 and high <= 1.0 + 1e-6 and low < 0:
        fix = f"these look like images in [-1, 1]: {_UINT8_HINT}"
    elif np.issubdtype(dtype, np.floating) and low >= 0 and high <= 1.0 + 1e-6:
        fix = "these look like images in [0, 1]: convert with np.clip(255 * x + 0.5, 0, 255).astype(np.uint8)"
    elif low >= 0 and high <= 255:
        fix = "values are in [0, 255]: convert with np.clip(np.rint(x), 0, 255).astype(np.uint8)"
    else:
        fix = f"expected images in [0, 255]; for images in [-1, 1], {_UINT8_HINT}"
    raise NpzFormatError(f"{where} has {seen}; ADM batches must be uint8 in [0, 255]. Fix: {fix}.")


def npz_info(path: str | os.PathLike) -> dict[str, Any]:
    """Check an ADM image batch without reading its pixels.

    Returns:
        {"path", "count" (N), "height", "width", "keys" (sorted member names), "has_stats" (stored mu/sigma),
         "has_spatial_stats" (stored mu_s/sigma_s), "has_labels" (arr_1), "kind" (gigatok_kind or None)}.

    Raises:
        NpzFormatError: the file is missing, not an npz, has no arr_0, or arr_0 is not (N, H, W, 3) uint8.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        keys = sorted(_member_keys(zf))
        if "arr_0" not in keys:
            stats_only = " It holds only statistics: precision/recall need the images as arr_0." if "mu" in keys else ""
            raise NpzFormatError(f"'{path}' has no 'arr_0' array (keys: {keys or 'none'}); ADM batches keep the "
                                 f"(N, H, W, 3) uint8 images in arr_0 (np.savez(path, arr_0=images)).{stats_only}")
        with zf.open("arr_0.npy") as fp:
            shape, dtype, fortran = _read_npy_header(fp, f"'{path}': arr_0")
        _check_images(path, zf, shape, dtype, fortran)
        if shape[0] == 0:
            raise NpzFormatError(f"'{path}': arr_0 holds no images (shape {shape})")
        kind = None
        if "gigatok_kind" in keys:
            kind = str(_read_small_member(zf, "gigatok_kind"))
    return {"path": str(path), "count": shape[0], "height": shape[1], "width": shape[2], "keys": keys,
            "has_stats": "mu" in keys and "sigma" in keys, "has_spatial_stats": "mu_s" in keys and "sigma_s" in keys,
            "has_labels": "arr_1" in keys, "kind": kind}


def _stream_rows(path: Path, batch_size: int) -> Iterator[np.ndarray]:
    with _open_zip(path) as zf, zf.open("arr_0.npy") as fp:
        shape, dtype, fortran = _read_npy_header(fp, f"'{path}': arr_0")
        if fortran:  # rows are not contiguous on disk: load it whole (only happens for hand-made files)
            with zf.open("arr_0.npy") as whole:
                images = np.ascontiguousarray(np.lib.format.read_array(whole, allow_pickle=False))
            for start in range(0, shape[0], batch_size):
                yield images[start:start + batch_size]
            return
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            rows = min(batch_size, shape[0] - start)
            data = fp.read(rows * row_bytes)  # ZipExtFile.read(n) returns n bytes unless the member ends
            if len(data) != rows * row_bytes:
                raise NpzFormatError(f"'{path}': arr_0 is truncated (the header says {shape[0]} images, the data "
                                     f"ends inside image {start + len(data) // row_bytes})")
            yield np.frombuffer(data, dtype=dtype).reshape(rows, *shape[1:])  # (B, H, W, 3), read-only


def read_image_batches(path: str | os.PathLike, batch_size: int) -> Iterator[np.ndarray]:
    """Stream the images of an ADM batch without loading them all.

    The file is validated (see `npz_info`) when this is called, before the first batch is read.

    Args:
        path: the `.npz`.
        batch_size: images per yielded batch (the last one may be smaller).

    Returns:
        An iterator over (B, H, W, 3) uint8 arrays, B = batch_size (smaller for the last one; read-only views), in
        file order.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    npz_info(path)
    return _stream_rows(Path(path), batch_size)


def read_reference_stats(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Stored FID statistics of a reference batch (e.g. VIRTUAL_imagenet256_labeled.npz), or None when it has none.

    Returns:
        {"mu": (2048,), "sigma": (2048, 2048)} float64, plus "mu_s" (2023,) and "sigma_s" (2023, 2023) when stored;
        None when there is no `mu` (the evaluator then computes the statistics from arr_0, as ADM does).
    """
    path = Path(path)
    with _open_zip(path) as zf:
        keys = _member_keys(zf)
        if "mu" not in keys:
            return None
        stats = {k: _read_small_member(zf, k).astype(np.float64) for k in STAT_KEYS if k in keys}
    if "sigma" not in stats:
        raise NpzFormatError(f"'{path}' stores 'mu' but no 'sigma'; a reference with stored statistics needs both")
    for mean, cov in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if mean in stats and (cov not in stats or stats[mean].ndim != 1
                              or stats[cov].shape != (stats[mean].shape[0],) * 2):
            raise NpzFormatError(f"'{path}': stored {mean}/{cov} have shapes "
                                 f"{stats[mean].shape}/{stats.get(cov, np.empty(0)).shape}; expected (D,) and (D, D)")
    return stats


def write_image_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None,
                    kind: str | None = None) -> Path:
    """Write an ADM image batch atomically (`gigatok.infra.io`).

    Args:
        path: destination `.npz`.
        images: (N, H, W, 3) uint8 in [0, 255] (convert [-1, 1] images with clamp(127.5 * x + 128, 0, 255)).
        labels: optional (N,) integer class labels, saved as arr_1.
        kind: optional tag saved as `gigatok_kind`, one of `KINDS`; the evaluator's guards read it.

    Returns:
        The written path.
    """
    path = Path(path)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise NpzFormatError(f"write_image_npz needs (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}; "
                             f"{_UINT8_HINT}, then permute to NHWC")
    arrays: dict[str, np.ndarray] = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise NpzFormatError(f"labels must be ({images.shape[0]},) integers, got {labels.dtype} {labels.shape}")
        arrays["arr_1"] = labels
    if kind is not None:
        if kind not in KINDS:
            raise NpzFormatError(f"kind must be one of {KINDS}, got {kind!r}")
        arrays["gigatok_kind"] = np.array(kind)
    return save_npz_atomic(path, **arrays)
