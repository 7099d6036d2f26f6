"""Image-folder dataset for evaluation (reconstruction, code extraction of a folder).

Order: the official code reads folders with torchvision `ImageFolder`, which lists sorted sub-folders, and
inside each one the files of `sorted(os.walk(sub_folder))` with sorted names. We keep exactly that order (so
sample index `i` names the same image as in the official runs) and additionally accept images lying directly in
the root, which `ImageFolder` ignores; they come first, sorted by name. Files whose extension is not an image
extension are skipped with one warning line, because the README's demo points `--data-path` at `tests/`, which
also holds code.

Shape letters: S image side (square images, H = W = S). Here S = image_size.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from gigatok.data.transforms import CenterCropTransform
from gigatok.errors import UserError

logger = logging.getLogger(__name__)

# The extensions torchvision's ImageFolder accepts (lower case; matching is case-insensitive).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageDataError(UserError, ValueError):
    """A data-path problem the user must fix: missing folder, no images, or an undecodable image file."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker re-raises our error as `ImageDataError("Caught ImageDataError in DataLoader worker
        # process 0.\nOriginal Traceback ...\n...ImageDataError: <message>")`; keep only the user's message.
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class UnreadableImageError(ImageDataError):
    """One image file that cannot be used (corrupt, truncated, over Pillow's size limit, an unsupported pixel
    format); training replaces and counts it, the other readers name it."""


# Pixel formats with more than 8 bits per channel: PIL's own convert("RGB") clips them (a 16-bit grayscale PNG became
# near-white, a [0, 1] float TIFF black), so they are scaled to 8 bits here.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_8bit(image: Image.Image, path: Path) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit 'L': 16-bit values / 257; 32-bit integers whose
    values fit 16 bits likewise (PIL reads 16-bit PNGs as 'I'), fitting 8 bits as they are; floats in [0, 1] x 255,
    in [0, 255] as they are. Anything else is refused by name."""
    array = np.asarray(image, dtype=np.float64)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if not np.isfinite(array).all() or low < 0:
        scale = None
    elif image.mode == "F":
        scale = 255.0 if high <= 1.0 else 1.0 if high <= 255.0 else None
    elif image.mode.startswith("I;16") or high > 255:
        scale = 1 / 257 if high <= 65535 else None
    else:
        scale = 1.0
    if scale is None:
        raise UnreadableImageError(
            f"image file '{path}' has {image.mode!r} pixels with values in [{low:g}, {high:g}], which have no 8-bit "
            "meaning here (expected 16-bit integers, or floats in [0, 1] or [0, 255]): convert it to an 8-bit PNG.")
    return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), mode="L")


def decode_image(path: str | os.PathLike) -> Image.Image:
    """THE image reader of every dataset: file -> 8-bit RGB PIL image (fully decoded).

    8-bit formats convert as the official code does (`Image.open(path).convert("RGB")`: grayscale replicated, CMYK
    by PIL's formula, alpha dropped; palette images with transparency go through RGBA so that PIL does not warn);
    wider formats are scaled to 8 bits (`_to_8bit`). Decompression bombs (over `Image.MAX_IMAGE_PIXELS`) count as
    unreadable like any broken file.

    Raises:
        UnreadableImageError: naming the file and why.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refuse, don't decode
            with Image.open(path) as image:
                if image.mode in _WIDE_MODES:
                    return _to_8bit(image, path).convert("RGB")
                if image.mode == "P" and "transparency" in image.info:
                    image = image.convert("RGBA")
                return image.convert("RGB")  # convert() forces the full decode inside the try
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImageError(f"image file '{path}' is too large to decode safely ({err}). Resize it, or raise "
                                   "PIL.Image.MAX_IMAGE_PIXELS if you trust the data.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, UnreadableImageError):
            raise
        raise UnreadableImageError(
            f"cannot decode image file '{path}' ({type(err).__name__}: {err}). The file is corrupt or not really an "
            "image: remove it from the data folder or convert it to PNG/JPEG (reconstruction and code extraction: "
            "--skip-bad-images leaves such files out).") from None


def find_unreadable(files: list[Path], progress: bool = False) -> dict[Path, str]:
    """Decode every file (each rank a strided share; COLLECTIVE under a process group) and return the unreadable
    ones with the reason: the pre-scan of `--skip-bad-images`, so that a long job lists every bad file before it
    starts instead of stopping at the first one hours in."""
    from tqdm import tqdm

    from gigatok.infra.dist import all_gather_objects, get_rank, get_world_size

    bad = {}
    mine = files[get_rank()::get_world_size()]
    for path in tqdm(mine, disable=not progress, desc="check images", unit="img"):
        try:
            decode_image(path)
        except UnreadableImageError as err:
            bad[str(path)] = str(err)
    merged = {Path(k): v for part in all_gather_objects(bad) for k, v in part.items()}
    return dict(sorted(merged.items()))


def report_unreadable(bad: dict[Path, str], root: Path) -> str:
    """One log line about the files `--skip-bad-images` leaves out (the first five named)."""
    shown = "; ".join(str(err) for err in list(bad.values())[:5])
    return (f"--skip-bad-images: leaving out {len(bad)} unreadable image(s) under '{root}'"
            + (f": {shown}{' ...' if len(bad) > 5 else ''}" if bad else ""))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_image_files(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """List the images under `root` in the official (ImageFolder) order, plus the skipped non-image files.

    Returns:
        (images, skipped): root-level images sorted by name, then for each sorted sub-folder the images of
        `sorted(os.walk(sub_folder))`; `skipped` holds every other file found on the way.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageDataError(f"data path not found or not a folder: '{root}'. Pass --data-path pointing at a "
                             "folder of images (sub-folders are searched recursively).")
    images, skipped = [], []
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        if entry.is_file():
            (images if _is_image(entry.name) else skipped).append(Path(entry.path))
    for entry in entries:
        if not entry.is_dir():
            continue
        for dirpath, _, filenames in sorted(os.walk(entry.path, followlinks=True)):
            for name in sorted(filenames):
                (images if _is_image(name) else skipped).append(Path(dirpath) / name)
    return images, skipped


class ImageFolderDataset(Dataset):
    """Every image under a folder, recursively, in a deterministic order.

    Items are `(images, index)`: images is (3, S, S) float32 in [-1, 1] after `transform` (the official
    center crop by default), index is the position in `self.files`.

    Args:
        root: folder to search.
        image_size: side of the default center-crop transform; ignored when `transform` is given.
        transform: PIL RGB image -> tensor.
        warn_skipped: log one warning line about non-image files (turn off on non-main ranks if not using the
            rank-0 logger).
        exclude: files to leave out (`find_unreadable`); the others keep their order.
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 256,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, warn_skipped: bool = True,
                 exclude: set[Path] = frozenset()) -> None:
        self.root = Path(root)
        self.files, self.skipped = list_image_files(self.root)
        self.files = [f for f in self.files if f not in exclude]  # --skip-bad-images: left out, in order
        if not self.files:
            raise ImageDataError(
                f"no images found under '{self.root}' (searched recursively for {', '.join(IMG_EXTENSIONS)}"
                f"{'; skipped ' + str(len(self.skipped)) + ' other files' if self.skipped else ''}). "
                "Point --data-path at a folder that holds image files."
            )
        if self.skipped and warn_skipped:
            shown = ", ".join(str(p.relative_to(self.root)) for p in self.skipped[:5])
            more = ", ..." if len(self.skipped) > 5 else ""
            logger.warning(f"skipped {len(self.skipped)} non-image file(s) under '{self.root}': {shown}{more}")
        self.transform = transform if transform is not None else CenterCropTransform(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> Image.Image:
        """Decode file `index` as an RGB PIL image (`decode_image`: a clear error for a broken file)."""
        return decode_image(self.files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load_image(index)), index
