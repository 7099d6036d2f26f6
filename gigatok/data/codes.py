"""Pre-extracted tokenizer codes for AR training: the views written at extraction and the datasets that read them.

Our layout (written by `gigatok.stages.extract_codes`), one folder:

    meta.json                   what the codes are (below); written last, so its presence means "complete"
    codes_{shard:05d}.npy       (N, A, L) int16 (int32 when K > 32768): A augmented views x L codes per image
    labels_{shard:05d}.npy      (N,) int64 class labels
    progress/{shard:05d}.json   commit marker of a finished shard (resume bookkeeping)
    extract_settings.json       the settings a resumed extraction must match

Shard s holds images [s * shard_size, s * shard_size + N) of the image folder's (ImageFolder) order, so the
file names and the sample order do not depend on the number of ranks that extracted them. `meta.json` holds
{format_version, tokenizer {checkpoint, checkpoint_hash, hash_algorithm, config, model_cls}, codebook_size,
num_tokens, image_size, augmentation {ten_crop, crop_range, num_aug, views}, count, num_classes, classes, dtype,
shard_size, shards [{codes, labels, start, count}], data_path, created}. The checkpoint hash is a *fast* hash
(`FAST_HASH_ALGORITHM`: sha256 over the file size, the first MiB and the last MiB), enough to tell checkpoints
apart without reading 12 GB.

The official layout (`extract_codes_c2i.py`) is read too: `{code_path}/{dataset}{size}_codes/{i}.npy` holding
(A, L) or (1, A, L) codes and `..._labels/{i}.npy` holding (1,) or () labels; when a sibling folder named by
replacing `ten_crop/` with `ten_crop_105/` in the code path exists, each sample comes from it with p = 0.5.

Augmented views: every access draws one of the A views (and the sibling choice) from a hash of
(seed, epoch, index), not from a random generator, so the draws do not depend on workers, ranks or on where a
resumed run restarts.

Shape letters: S image side (square images, H = W = S); L latent tokens = codes per image (1D tokenizer:
num_latent_tokens; 2D: G*G); K codebook size (= GPT vocabulary); A augmented views per image; N a flattened count,
stated where used. Here N = the images of one shard (N <= shard_size) and S = image_size.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gigatok.data.images import ImageDataError, decode_image, list_image_files
from gigatok.data.transforms import center_crop_arr, to_tensor_normalized
from gigatok.errors import UserError

FORMAT_VERSION = 1
META_NAME = "meta.json"
FAST_HASH_ALGORITHM = "sha256(size|first MiB|last MiB)"
TEN_CROP_VIEWS = ("top_left", "top_right", "bottom_left", "bottom_right", "center",
                  "flip_top_left", "flip_top_right", "flip_bottom_left", "flip_bottom_right", "flip_center")
CENTER_FLIP_VIEWS = ("center", "flip_center")
_MASK64 = (1 << 64) - 1


class CodesError(UserError, ValueError):
    """A code folder that cannot be used as asked: missing, incomplete, or not matching the model."""


# ----------------------------------------------------------------------------------------------------------------
# Views of one image (extraction side)
# ----------------------------------------------------------------------------------------------------------------

def five_crop(image: Image.Image, size: int) -> list[Image.Image]:
    """Four corners and the center, `size` x `size` each (torchvision `five_crop` positions and order)."""
    width, height = image.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    boxes = [(0, 0), (width - size, 0), (0, height - size), (width - size, height - size), (left, top)]
    return [image.crop((x, y, x + size, y + size)) for x, y in boxes]


def ten_crop(image: Image.Image, size: int) -> list[Image.Image]:
    """`five_crop` of the image, then `five_crop` of its mirror image (torchvision `TenCrop`): TEN_CROP_VIEWS."""
    return five_crop(image, size) + five_crop(image.transpose(Image.FLIP_LEFT_RIGHT), size)


class ViewTransform:
    """PIL image -> (A, 3, S, S) float32 in [-1, 1]: the views extraction encodes (picklable for workers).

    Args:
        image_size: S.
        use_ten_crop: official `--ten-crop`: `center_crop_arr` to int(S * crop_range), then `ten_crop` (A = 10).
            Otherwise the `center_crop_arr` view and its mirror image (A = 2), or only the center view with
            `center_only` (validation).
        crop_range: see above (official 1.1).
    """

    def __init__(self, image_size: int, use_ten_crop: bool = False, crop_range: float = 1.1,
                 center_only: bool = False) -> None:
        self.image_size, self.use_ten_crop, self.crop_range = image_size, use_ten_crop, crop_range
        self.center_only = center_only

    @property
    def views(self) -> tuple[str, ...]:
        if self.use_ten_crop:
            return TEN_CROP_VIEWS
        return CENTER_FLIP_VIEWS[:1] if self.center_only else CENTER_FLIP_VIEWS

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.use_ten_crop:
            crops = ten_crop(center_crop_arr(image, int(self.image_size * self.crop_range)), self.image_size)
        else:
            center = center_crop_arr(image, self.image_size)
            crops = [center] if self.center_only else [center, center.transpose(Image.FLIP_LEFT_RIGHT)]
        return torch.stack([to_tensor_normalized(crop) for crop in crops])  # (A, 3, S, S)


class LabeledImageFolder(Dataset):
    """Images of an ImageFolder tree with their class labels: items are (views (A, 3, S, S), label, index).

    Classes are the sorted sub-folders of `root` and files keep the ImageFolder order (as `list_image_files`), so
    index i and label match the official `torchvision.datasets.ImageFolder`. Images lying directly in `root`
    have no class and are left out, as ImageFolder does.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Image.Image], torch.Tensor],
                 exclude: set[Path] = frozenset()) -> None:
        self.root = Path(root)
        files, _ = list_image_files(self.root)
        files = [f for f in files if f not in exclude]  # --skip-bad-images: left out, in order
        self.classes = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        class_index = {name: i for i, name in enumerate(self.classes)}
        self.files = [f for f in files if f.parent != self.root]
        self.labels = [class_index[f.relative_to(self.root).parts[0]] for f in self.files]
        if not self.files:
            raise ImageDataError(
                f"no images in class sub-folders of '{self.root}'. Code extraction and validation read an "
                "ImageFolder tree: <root>/<class name>/<image files> (e.g. ILSVRC2012_img_train/n01440764/...).")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.transform(decode_image(self.files[index])), self.labels[index], index


def file_list_digest(files: list[Path], root: Path) -> str:
    """sha256 of the relative file names in order (tells a changed image folder apart on resume)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root)).encode() + b"\n")
    return digest.hexdigest()


def fast_file_hash(path: str | os.PathLike) -> str:
    """`FAST_HASH_ALGORITHM` of a file: sha256 of its size, first MiB and last MiB (seconds for any size)."""
    mib = 1 << 20
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(mib))
        if size > mib:
            f.seek(max(size - mib, mib))
            digest.update(f.read(mib))
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Files of our layout
# ----------------------------------------------------------------------------------------------------------------

def shard_file_names(shard: int) -> tuple[str, str]:
    """(codes file, labels file) of shard `shard`."""
    return f"codes_{shard:05d}.npy", f"labels_{shard:05d}.npy"


def codes_dtype(codebook_size: int) -> np.dtype:
    """Smallest signed dtype holding codes in [0, K): int16 for every released tokenizer (K = 16384)."""
    return np.dtype(np.int16) if codebook_size <= 2**15 else np.dtype(np.int32)


def read_meta(code_path: str | os.PathLike) -> dict[str, Any] | None:
    """`meta.json` of a code folder of our layout, or None if it has none (official layout or incomplete)."""
    path = Path(code_path) / META_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CodesError(f"cannot read '{path}': {err}. Re-run the extraction with --resume to rewrite it.") from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CodesError(f"'{path}' has format_version {meta['format_version']}; this gigatok reads up to "
                         f"{FORMAT_VERSION}. Update gigatok.")
    return meta


def load_integer_array(path: Path, mmap: bool = False) -> np.ndarray:
    """A `.npy` of integer codes or labels (memory-mapped with `mmap`); anything else is a `CodesError` naming the
    file (pickled object arrays are never loaded)."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CodesError(f"cannot read code file '{path}' ({type(err).__name__}: {err}): it is damaged or not a "
                         "plain integer array. Re-run the extraction for it (gigatok extract_codes --resume after "
                         "deleting the file and its progress marker).") from None
    if not np.issubdtype(array.dtype, np.integer):
        raise CodesError(f"code file '{path}' holds {array.dtype} values, not integer codes: it was not written by a "
                         "code extraction. Re-extract the codes.")
    return array


def check_meta(meta: dict[str, Any], vocab_size: int | None, block_size: int | None) -> None:
    """Refuse codes that do not fit a GPT of vocabulary `vocab_size` and `block_size` codes per sample.

    A None on either side (e.g. the official layout has no codebook size) skips that check.

    Raises:
        CodesError: naming both numbers and where each came from.
    """
    source = meta.get("code_path", "the code folder")
    tok = (meta.get("tokenizer") or {}).get("config") or "its tokenizer"
    codebook_size, num_tokens = meta.get("codebook_size"), meta.get("num_tokens")
    if vocab_size is not None and codebook_size is not None and codebook_size != vocab_size:
        raise CodesError(
            f"the codes in '{source}' come from a tokenizer with codebook_size {codebook_size} ({tok}), but the "
            f"GPT was asked for vocab_size {vocab_size}. Drop the explicit vocabulary/tokenizer flag (it follows "
            "meta.json) or point --code-path at codes of the matching tokenizer.")
    if block_size is not None and num_tokens is not None and num_tokens != block_size:
        raise CodesError(
            f"the codes in '{source}' have {num_tokens} tokens per image ({tok}), but the GPT was asked for "
            f"block_size {block_size}. Drop the explicit --image-size/--downsample-size/--tok-config flag (the "
            "length follows meta.json) or point --code-path at codes of the matching tokenizer.")


# ----------------------------------------------------------------------------------------------------------------
# Reading: sources of (A, L) codes per image
# ----------------------------------------------------------------------------------------------------------------

class _ShardSource:
    """Our layout: memory-mapped shards (opened lazily, so each DataLoader worker maps its own)."""

    def __init__(self, code_path: Path, meta: dict[str, Any]) -> None:
        self.code_path, self.meta = code_path, meta
        shards = sorted(meta["shards"], key=lambda s: s["start"])
        for shard in shards:
            for key in ("codes", "labels"):
                if not (code_path / shard[key]).is_file():
                    raise CodesError(f"'{code_path}' is incomplete: '{shard[key]}' listed in meta.json is missing. "
                                     "Re-run the extraction with --resume.")
        self.shards = shards
        self.starts = np.array([s["start"] for s in shards], dtype=np.int64)
        self.count = int(meta["count"])
        self.num_aug = int(meta["augmentation"]["num_aug"])
        self.num_tokens = int(meta["num_tokens"])
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._maps:
            codes_name, labels_name = self.shards[k]["codes"], self.shards[k]["labels"]
            self._maps[k] = (load_integer_array(self.code_path / codes_name, mmap=True),
                             load_integer_array(self.code_path / labels_name, mmap=True))
        return self._maps[k]

    def item(self, index: int, view: int) -> tuple[np.ndarray, int]:
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        codes, labels = self._shard(k)
        row = index - int(self.starts[k])
        return np.asarray(codes[row, view]), int(labels[row])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # never pickle memory maps into workers


class _OfficialSource:
    """The official per-image layout: `{i}.npy` files in `*_codes` / `*_labels` folders."""

    def __init__(self, codes_dir: Path) -> None:
        self.codes_dir = codes_dir
        self.labels_dir = codes_dir.with_name(codes_dir.name[: -len("_codes")] + "_labels")
        if not self.labels_dir.is_dir():
            raise CodesError(f"'{codes_dir}' has no sibling labels folder '{self.labels_dir.name}'")
        # Sorted by image index i; the names are kept as found (`{i}.npy`).
        self.names = sorted((e.name for e in os.scandir(codes_dir) if re.fullmatch(r"\d+\.npy", e.name)),
                            key=lambda name: int(name[:-4]))
        if not self.names:
            raise CodesError(f"no '<index>.npy' code files in '{codes_dir}'")
        self.count = len(self.names)
        first = self._codes(0)
        self.num_aug, self.num_tokens = first.shape

    def _codes(self, position: int) -> np.ndarray:
        codes = load_integer_array(self.codes_dir / self.names[position])
        return codes.reshape(-1, codes.shape[-1])  # (1, A, L) or (A, L) -> (A, L)

    def item(self, index: int, view: int) -> tuple[np.ndarray, int]:
        codes = self._codes(index)
        label = load_integer_array(self.labels_dir / self.names[index]).reshape(-1)[0]
        return codes[view % codes.shape[0]], int(label)


def _find_official_codes_dir(code_path: Path, image_size: int | None) -> Path | None:
    candidates = sorted(p for p in code_path.glob("*_codes") if p.is_dir())
    if image_size is not None:
        sized = [p for p in candidates if p.name.endswith(f"{image_size}_codes")]
        candidates = sized or candidates
    if len(candidates) > 1:
        raise CodesError(f"'{code_path}' holds several official code folders ({[p.name for p in candidates]}); "
                         "pass --image-size to pick one")
    return candidates[0] if candidates else None


def _official_sibling(code_path: Path) -> Path | None:
    """The official `ten_crop_105` sibling of a `.../ten_crop/...` code path, if it exists."""
    text = str(code_path).rstrip("/") + "/"
    sibling = text.replace("ten_crop/", "ten_crop_105/")
    return Path(sibling) if sibling != text and Path(sibling).is_dir() else None


def _mix(*values: int) -> int:
    """A splitmix64-style mix of a tuple of integers: a fast, well-spread hash for per-sample draws."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 31
    return state


def draw_view(seed: int, epoch: int, index: int, num_views: int) -> int:
    """Which of `num_views` augmented views sample `index` sees in `epoch`: the draw `CodeDataset` makes, shared with
    on-the-fly training on images (`gigatok.data.onthefly`), so both see the same view of every image."""
    return (_mix(seed, epoch, index) & 0xFFFFFFFF) % num_views


class CodeDataset(Dataset):
    """Codes of a folder (our layout or the official one); items are (codes (L,) int64, label () int64).

    Args:
        code_path: the folder given as `--code-path`.
        seed: seed of the per-sample view draws.
        view: "random" (training: one view per (seed, epoch, index)) or "center" (validation: the center crop).
        image_size: picks the official `{dataset}{size}_codes` folder when several exist.
        use_sibling: official layout only: also draw from the `ten_crop_105` sibling with p = 0.5.

    Attributes:
        meta: our meta.json, or one synthesised for the official layout (codebook_size None).
    """

    def __init__(self, code_path: str | os.PathLike, seed: int = 0, view: str = "random",
                 image_size: int | None = None, use_sibling: bool = True) -> None:
        if view not in ("random", "center"):
            raise ValueError(f"view must be 'random' or 'center', got '{view}'")
        self.code_path, self.seed, self.view, self.epoch = Path(code_path), seed, view, 0
        if not self.code_path.is_dir():
            raise CodesError(f"code path not found: '{code_path}'. Extract codes first with "
                             "scripts/extract_code_c2i.sh (or gigatok extract_codes).")
        meta = read_meta(self.code_path)
        self.sources: list[_ShardSource | _OfficialSource] = []
        if meta is not None:
            self.sources.append(_ShardSource(self.code_path, meta))
            sibling = _official_sibling(self.code_path) if use_sibling else None
            if sibling is not None and read_meta(sibling) is not None:
                self.sources.append(_ShardSource(sibling, read_meta(sibling)))
        else:
            official = _find_official_codes_dir(self.code_path, image_size)
            if official is None:
                progress = " (extraction unfinished: re-run it with --resume)" if (
                    self.code_path / "progress").is_dir() else ""
                raise CodesError(f"'{code_path}' holds neither a meta.json{progress} nor official "
                                 "'<dataset><size>_codes' / '_labels' folders")
            self.sources.append(_OfficialSource(official))
            sibling = _official_sibling(self.code_path) if use_sibling else None
            sibling_dir = _find_official_codes_dir(sibling, image_size) if sibling is not None else None
            if sibling_dir is not None:
                self.sources.append(_OfficialSource(sibling_dir))
            meta = self._official_meta(official)
        first = self.sources[0]
        for other in self.sources[1:]:
            if (other.count, other.num_tokens) != (first.count, first.num_tokens):
                raise CodesError(f"the ten_crop_105 sibling of '{code_path}' has {other.count} images x "
                                 f"{other.num_tokens} codes, the folder itself {first.count} x {first.num_tokens}")
        meta = {**meta, "code_path": str(self.code_path), "num_sources": len(self.sources)}
        self.meta = meta

    def _official_meta(self, codes_dir: Path) -> dict[str, Any]:
        source = self.sources[0]
        views = TEN_CROP_VIEWS if source.num_aug == 10 else CENTER_FLIP_VIEWS if source.num_aug == 2 else None
        return {"format": "official", "codes_dir": str(codes_dir), "codebook_size": None,
                "num_tokens": source.num_tokens, "count": source.count, "num_classes": None,
                "augmentation": {"num_aug": source.num_aug, "views": list(views) if views else None},
                "tokenizer": None}

    @property
    def num_tokens(self) -> int:
        return self.sources[0].num_tokens

    def center_view(self) -> int:
        """Index of the center-crop view (validation): by name, else the official order (ten-crop: 4, else 0)."""
        views = self.meta["augmentation"].get("views")
        if views and "center" in views:
            return views.index("center")
        return 4 if self.sources[0].num_aug == 10 else 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the view draws; call before creating the DataLoader iterator (workers copy it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.sources[0].count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.view == "center":
            source, view = 0, self.center_view()
        else:
            draw = _mix(self.seed, self.epoch, index)
            source = (draw >> 32) & 1 if len(self.sources) > 1 else 0  # the sibling with p = 0.5
            view = draw_view(self.seed, self.epoch, index, self.sources[source].num_aug)
        codes, label = self.sources[source].item(index, view)
        return torch.from_numpy(codes.astype(np.int64)), torch.tensor(label, dtype=torch.int64)
