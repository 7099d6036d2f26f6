"""Reconstruction metrics: PSNR, SSIM (scikit-image conventions), codebook usage, plus the pieces of the
quantitative reconstruction run that are not the entry point: per-image records (resumable, gathered across
ranks), PNG reading/writing, the results summary and --clear-cache.

PSNR and SSIM reproduce `skimage.metrics.peak_signal_noise_ratio` / `structural_similarity` (defaults: 7x7 uniform
window, sample covariance, K1 0.01, K2 0.03, scipy 'reflect' borders, a 3-pixel border cropped before averaging),
including their floating-point types: float32 inputs are processed in float32 as scikit-image does, so values
agree to ~1e-7 while scikit-image stays a test-only dependency.

The official evaluation (LlamaGen / GigaTok `reconstruction_*_ddp.py`) calls, per image,
    psnr = peak_signal_noise_ratio(recon_uint8 / 255, gt)                  data range inferred: 1
    ssim = structural_similarity(recon_uint8 / 255, gt, channel_axis=-1, data_range=2.0)
with float32 (H, W, 3) arrays in [0, 1] and averages over images. data_range=2.0 is a quirk: both constants
C1 = (0.01 data_range)^2 and C2 = (0.03 data_range)^2 become 4x larger than the standard data_range=1, which pulls
every SSIM towards 1. We report that value as `ssim` (comparable with the papers) and the standard one as
`ssim_data_range_1`.

Shape letters: B batch; C channels; H, W height and width of an image or feature map; L latent tokens = codes per
image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook size (= GPT vocabulary); N a flattened count, stated
where used. Here N is a number of images.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from gigatok.infra.dist import get_world_size
from gigatok.infra.io import save_npz_atomic

SSIM_WIN_SIZE = 7  # scikit-image's default for uniform windows
SSIM_K1, SSIM_K2 = 0.01, 0.03
OFFICIAL_SSIM_DATA_RANGE = 2.0  # the official scripts' argument for images in [0, 1]


def _float_type(*dtypes: np.dtype) -> np.dtype:
    """scikit-image's `_supported_float_type`: float16/32 -> float32, float64 stays, anything else -> float64."""
    mapped = [np.dtype(np.float32) if np.dtype(d) in (np.float16, np.float32) else np.dtype(np.float64)
              for d in dtypes]
    return np.result_type(*mapped)


def _infer_data_range(image_true: np.ndarray) -> float:
    """scikit-image's PSNR data range for `image_true`: the dtype's max if all values are >= 0, else max - min
    (uint8: 255; floats, whose nominal range is [-1, 1]: 1 for non-negative images, else 2)."""
    if np.issubdtype(image_true.dtype, np.integer):
        info = np.iinfo(image_true.dtype)
        low, high = float(info.min), float(info.max)
    elif np.issubdtype(image_true.dtype, np.floating):
        low, high = -1.0, 1.0
    else:
        raise TypeError(f"unsupported image dtype {image_true.dtype}")
    true_min, true_max = float(image_true.min()), float(image_true.max())
    if true_max > high or true_min < low:
        raise ValueError(f"image_true has values in [{true_min}, {true_max}], outside its dtype's range "
                         f"[{low}, {high}]; pass data_range explicitly")
    return high if true_min >= 0 else high - low


def psnr_batch(images_true: np.ndarray, images_test: np.ndarray, data_range: float | None = None) -> np.ndarray:
    """Per-image PSNR in dB of a batch, as `peak_signal_noise_ratio` on each pair.

    Args:
        images_true: (B, ...) images, e.g. (B, H, W, C); any real dtype. The official call passes the uint8
            reconstruction / 255 (float32, [0, 1]) here.
        images_test: same shape.
        data_range: peak value; None infers it from `images_true` as scikit-image does (1 for floats in [0, 1]).

    Returns:
        (B,) float64; +inf where the images are identical.
    """
    images_true, images_test = np.asarray(images_true), np.asarray(images_test)
    if images_true.shape != images_test.shape:
        raise ValueError(f"shape mismatch: {images_true.shape} vs {images_test.shape}")
    if data_range is None:
        data_range = _infer_data_range(images_true)
    float_type = _float_type(images_true.dtype, images_test.dtype)
    # Difference and square in the working float type, the mean in float64: scikit-image's mean_squared_error.
    diff = images_true.astype(float_type, copy=False) - images_test.astype(float_type, copy=False)
    axes = tuple(range(1, diff.ndim))
    mse = np.mean(diff * diff, axis=axes, dtype=np.float64)  # (B,)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(float(data_range) ** 2 / mse)


def peak_signal_noise_ratio(image_true: np.ndarray, image_test: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB of one image pair; same arguments and result as `skimage.metrics.peak_signal_noise_ratio`."""
    return float(psnr_batch(np.asarray(image_true)[None], np.asarray(image_test)[None], data_range)[0])


def _box_filter(images: np.ndarray, size: int, axes: Sequence[int]) -> np.ndarray:
    """Mean over a `size`-wide window along each of `axes` in turn, with scipy.ndimage's 'reflect' borders
    (half-sample symmetric: d c b a | a b c d | d c b a), as `scipy.ndimage.uniform_filter`.

    Like scipy, each pass accumulates in float64 and stores its result in the input's dtype, so float32 inputs
    reproduce scipy's float32 intermediates.
    """
    radius = size // 2
    out = images
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, size - 1 - radius)
        padded = np.pad(out.astype(np.float64), pad, mode="symmetric")  # numpy 'symmetric' == scipy 'reflect'
        cumsum = np.cumsum(padded, axis=axis)
        zero = np.zeros_like(np.take(cumsum, [0], axis=axis))
        cumsum = np.concatenate([zero, cumsum], axis=axis)  # cumsum[i] = sum of the first i padded values
        length = out.shape[axis]
        window_sums = (np.take(cumsum, np.arange(size, size + length), axis=axis)
                       - np.take(cumsum, np.arange(length), axis=axis))
        out = (window_sums / size).astype(images.dtype)
    return out


def _ssim_channel_means(images_a: np.ndarray, images_b: np.ndarray, data_ranges: Sequence[float],
                        win_size: int) -> tuple[np.ndarray, np.dtype]:
    """(B, H, W, C) pairs -> ((B, len(data_ranges), C) float64 mean SSIM per image, data range and channel; the
    working type)."""
    if images_a.shape != images_b.shape or images_a.ndim != 4:
        raise ValueError(f"expected two (B, H, W, C) arrays of one shape; got {images_a.shape}, {images_b.shape}")
    if win_size % 2 != 1 or min(images_a.shape[1:3]) < win_size:
        raise ValueError(f"win_size must be odd and at most the image side; got {win_size} for {images_a.shape}")
    float_type = _float_type(images_a.dtype)  # scikit-image casts both images to im1's float type
    a, b = images_a.astype(float_type, copy=False), images_b.astype(float_type, copy=False)
    cov_norm = win_size**2 / (win_size**2 - 1)  # sample covariance

    # Local means, variances and covariance; arithmetic in `float_type`, in scikit-image's order of operations
    # (float32 inputs therefore see the same cancellation in uxx - ux * ux as there).
    def smooth(x: np.ndarray) -> np.ndarray:
        return _box_filter(x, win_size, axes=(1, 2))

    ux, uy = smooth(a), smooth(b)
    uxx, uyy, uxy = smooth(a * a), smooth(b * b), smooth(a * b)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    pad = (win_size - 1) // 2
    means = []
    for data_range in data_ranges:
        c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
        numerator = (2 * ux * uy + c1) * (2 * vxy + c2)
        denominator = (ux**2 + uy**2 + c1) * (vx + vy + c2)
        ssim_map = (numerator / denominator)[:, pad:-pad or None, pad:-pad or None]  # (B, H - 2 pad, W - 2 pad, C)
        means.append(ssim_map.mean(axis=(1, 2), dtype=np.float64))  # (B, C), border cropped as in scikit-image
    return np.stack(means, axis=1), float_type


def ssim_batch(images_a: np.ndarray, images_b: np.ndarray, data_ranges: Sequence[float],
               win_size: int = SSIM_WIN_SIZE) -> np.ndarray:
    """Mean SSIM of each image pair of a batch for several data ranges at once (the local statistics are shared).

    Same result as `structural_similarity(a, b, channel_axis=-1, data_range=r)` for every pair and r.

    Args:
        images_a: (B, H, W, C) real images (C >= 1), H and W >= `win_size`. The official call passes the uint8
            reconstruction / 255 (float32, [0, 1]) here.
        images_b: same shape.
        data_ranges: the data ranges, e.g. (2.0, 1.0) for the official and the standard convention on [0, 1]
            images.
        win_size: odd side of the uniform window.

    Returns:
        (B, len(data_ranges)) float64.
    """
    channel_means, float_type = _ssim_channel_means(np.asarray(images_a), np.asarray(images_b), data_ranges,
                                                    win_size)
    # scikit-image stores the channel means in the working float type and averages them there.
    return channel_means.astype(float_type).mean(axis=2).astype(np.float64)


def structural_similarity(im1: np.ndarray, im2: np.ndarray, data_range: float,
                          channel_axis: int | None = -1, win_size: int = SSIM_WIN_SIZE) -> float:
    """Mean SSIM of one image pair; the result of `skimage.metrics.structural_similarity` with the same arguments
    (uniform window, sample covariance; `data_range` is required, as scikit-image requires it for floats).

    Args:
        im1, im2: (H, W, C) with `channel_axis` pointing at C, or (H, W) with `channel_axis=None`.
    """
    im1, im2 = np.asarray(im1), np.asarray(im2)
    if channel_axis is None:
        if im1.ndim != 2:
            raise ValueError(f"channel_axis=None expects (H, W) images; got {im1.shape}")
        # Grayscale: scikit-image returns the float64 mean directly (no rounding to the working type).
        means, _ = _ssim_channel_means(im1[None, :, :, None], im2[None, :, :, None], [data_range], win_size)
        return float(means[0, 0, 0])
    im1, im2 = np.moveaxis(im1, channel_axis, -1), np.moveaxis(im2, channel_axis, -1)
    return float(ssim_batch(im1[None], im2[None], [data_range], win_size)[0, 0])


class CodebookUsage:
    """Which of the K codes were used at least once, over a whole evaluation set.

    `update(codes)` per batch, then `reduce_across_ranks()` once (MAX all-reduce of the (K,) mask, so every rank
    ends with the union), then `usage` = #used / K (the official "codebook usage").
    """

    def __init__(self, codebook_size: int) -> None:
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1; got {codebook_size}")
        self.used = torch.zeros(codebook_size, dtype=torch.bool)  # (K,) on CPU

    @property
    def codebook_size(self) -> int:
        return self.used.numel()

    @torch.no_grad()
    def update(self, codes: torch.Tensor) -> None:
        """Mark the codes of one batch as used: integer tensor of any shape (typically (B, L)), values in [0, K)."""
        flat = codes.detach().reshape(-1).long().cpu()
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}); got [{int(flat.min())}, "
                             f"{int(flat.max())}]")
        self.used[flat] = True

    def merge(self, used: np.ndarray | torch.Tensor) -> None:
        """OR another (K,) mask into this one (e.g. one saved by an interrupted run)."""
        used = torch.as_tensor(np.asarray(used), dtype=torch.bool)
        if used.shape != self.used.shape:
            raise ValueError(f"mask shape {tuple(used.shape)} does not match codebook size {self.codebook_size}")
        self.used |= used

    def reduce_across_ranks(self, device: torch.device | str = "cpu") -> None:
        """Union of the masks of all ranks (a no-op without a process group). `device`: where the collective runs
        (the rank's GPU under NCCL)."""
        if not dist.is_initialized() or get_world_size() == 1:
            return
        mask = self.used.to(device=device, dtype=torch.int32)
        dist.all_reduce(mask, op=dist.ReduceOp.MAX)
        self.used = mask.cpu().bool()

    @property
    def num_used(self) -> int:
        return int(self.used.sum())

    @property
    def usage(self) -> float:
        return self.num_used / self.codebook_size


RECORD_FIELDS = ("psnr", "ssim", "ssim_data_range_1", "lpips")


class ReconRecords:
    """Per-image metrics of a reconstruction run, keyed by image index, plus its codebook-usage mask.

    Saved atomically as a small .npz (`indices` (N,) int64, `values` (N, 4) float64 in RECORD_FIELDS order, lpips
    NaN when not computed, `used` (K,) bool, `run_key` str; N = the recorded images), so an interrupted run resumes
    from the images already recorded; the saved PNGs are written before the record that vouches for them.

    Args:
        codebook_size: K.
        run_key: identifies the settings the records were made with; records with another key are not reused.
    """

    def __init__(self, codebook_size: int, run_key: str) -> None:
        self.values: dict[int, tuple[float, float, float, float]] = {}
        self.usage = CodebookUsage(codebook_size)
        self.run_key = run_key

    def __len__(self) -> int:
        return len(self.values)

    def add_batch(self, indices: Iterable[int], psnr: np.ndarray, ssim: np.ndarray, ssim_data_range_1: np.ndarray,
                  lpips: np.ndarray | None, codes: torch.Tensor) -> None:
        """Record one batch: image indices (B,), per-image metrics (B,) each (lpips None if not computed) and the
        batch's codes (B, L)."""
        lpips = np.full(len(psnr), np.nan) if lpips is None else lpips
        for i, idx in enumerate(indices):
            self.values[int(idx)] = (float(psnr[i]), float(ssim[i]), float(ssim_data_range_1[i]), float(lpips[i]))
        self.usage.update(codes)

    def update(self, other: ReconRecords) -> None:
        """Add every record and the usage mask of `other`."""
        self.values.update(other.values)
        self.usage.merge(other.usage.used)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        indices = np.fromiter(self.values, dtype=np.int64, count=len(self.values))
        values = np.array([self.values[int(i)] for i in indices], dtype=np.float64).reshape(-1, len(RECORD_FIELDS))
        save_npz_atomic(path, indices=indices, values=values, used=self.usage.used.numpy(),
                        run_key=np.array(self.run_key))

    @classmethod
    def load(cls, path: str | os.PathLike, codebook_size: int, run_key: str) -> ReconRecords | None:
        """The records saved at `path`, or None when they were made with other settings (or are unreadable)."""
        records = cls(codebook_size, run_key)
        try:
            with np.load(path) as data:
                if str(data["run_key"]) != run_key or data["used"].shape != (codebook_size,):
                    return None
                indices, values, used = data["indices"], data["values"], data["used"]
        except (OSError, KeyError, ValueError):
            return None
        records.values = {int(i): tuple(float(v) for v in row) for i, row in zip(indices, values)}
        records.usage.merge(used)
        return records

    def summary(self) -> dict[str, float | int | None]:
        """Means over the recorded images (lpips None when it was not computed), codebook usage and counts."""
        values = np.array(list(self.values.values()), dtype=np.float64).reshape(-1, len(RECORD_FIELDS))
        means = {name: float(values[:, k].mean()) if len(values) else None for k, name in enumerate(RECORD_FIELDS)}
        if means["lpips"] is not None and np.isnan(means["lpips"]):
            means["lpips"] = None
        return {**means, "codebook_usage": self.usage.usage, "codebook_used": self.usage.num_used,
                "codebook_size": self.usage.codebook_size, "num_images": len(self.values)}


def read_png_images(paths: Sequence[str | os.PathLike], progress: Iterable | None = None) -> np.ndarray:
    """Read same-sized RGB PNGs into one preallocated (N, H, W, 3) uint8 array (one copy of the images in memory).

    Args:
        paths: N image files, in the order wanted in the array.
        progress: optional wrapper around range(N) for a progress bar (e.g. `tqdm(range(N))`).
    """
    first = np.asarray(Image.open(paths[0]).convert("RGB"))
    images_uint8 = np.empty((len(paths), *first.shape), dtype=np.uint8)
    for i in progress if progress is not None else range(len(paths)):
        with Image.open(paths[i]) as image:
            array = np.asarray(image.convert("RGB"))
        if array.shape != first.shape:
            raise ValueError(f"'{paths[i]}' is {array.shape[1]}x{array.shape[0]}, but '{paths[0]}' is "
                             f"{first.shape[1]}x{first.shape[0]}: an npz needs images of one size")
        images_uint8[i] = array
    return images_uint8


def load_run_records(folder: Path, codebook_size: int, run_key: str, num_images: int) -> ReconRecords:
    """The union of the records an earlier, interrupted run left in `folder` (`records_rank*.npz`, any world
    size), keeping only records made with the same `run_key`. If a recorded image's PNG is missing (or an index is
    out of range), nothing is reused: the usage mask cannot be split per image, so only a consistent set counts."""
    merged = ReconRecords(codebook_size, run_key)
    for path in sorted(folder.glob("records_rank*.npz")):
        previous = ReconRecords.load(path, codebook_size, run_key)
        if previous is not None:
            merged.update(previous)
    if any(idx >= num_images or not (folder / f"{idx:06d}.png").is_file() for idx in merged.values):
        return ReconRecords(codebook_size, run_key)
    return merged


def format_recon_results(results: dict) -> str:
    """Human summary of a reconstruction evaluation; the first line is the official `PSNR: %f, SSIM: %f`."""
    def number(key: str, digits: int = 6) -> str:
        value = results.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    inception_score = number("inception_score", 4)
    if results.get("inception_score") is None and results.get("inception_score_unavailable"):
        inception_score = f"unavailable ({results['inception_score_unavailable']})"
    lines = [
        f"PSNR: {number('psnr')}, SSIM: {number('ssim')}",
        f"SSIM (standard data_range=1): {number('ssim_data_range_1')}   [SSIM above: official data_range=2.0]",
        f"LPIPS: {number('lpips')}",
        (f"codebook usage: {number('codebook_usage', 4)} ({results.get('codebook_used')} / "
         f"{results.get('codebook_size')} codes)"),
        f"images: {results.get('num_images')}",
        f"rFID: {number('rfid', 4)}",
        f"sFID: {number('sfid', 4)}",
        f"Inception Score: {inception_score}",
        f"Precision: {number('precision', 4)}",
        f"Recall: {number('recall', 4)}",
        f"reference: {results.get('gt_npz_path')}",
        f"checkpoint: {results.get('checkpoint')}   config: {results.get('config')}",
    ]
    lines += [f"warning: {w}" for w in results.get("warnings") or []]
    return "\n".join(lines) + "\n"


def clear_cache(folder: Path, files: Iterable[Path], protect: Iterable[Path] = ()) -> list[Path]:
    """Delete `files` and every entry of `folder` that is not a .txt/.json file (images, npz, sub-folders), except
    the paths in `protect` (e.g. the rFID reference). Returns what was removed."""
    protected = {Path(p).resolve() for p in protect}
    entries = list(files) + (sorted(folder.iterdir()) if folder.is_dir() else [])
    removed = []
    for entry in entries:
        if not entry.exists() or any(p == entry.resolve() or p.is_relative_to(entry.resolve()) for p in protected):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.parent.resolve() == folder.resolve() and entry.suffix in (".txt", ".json"):
            continue
        else:
            entry.unlink()
        removed.append(entry)
    return removed
