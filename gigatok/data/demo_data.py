"""Built-in real data for the CPU demo: colourised scikit-learn digits and scikit-image's bundled photos.

Digits. scikit-learn's `load_digits` holds 1,797 greyscale 8x8 images (16 grey levels plus 0, i.e. values
0..16) of the digits 0..9, about 180 per class. Each one becomes an RGB image of `size` x `size` pixels:

1. Intensity: values / 16 -> [0, 1] (0 = background, 1 = ink).
2. Upsampling: PIL BICUBIC resize of the 8x8 float image to `size` x `size`, clipped to [0, 1] (bicubic
   overshoots slightly at stroke edges).
3. Colour: `rgb = (1 - t) * background + t * foreground`, rounded to uint8. The (foreground, background) pair
   is drawn uniformly from the six `COLOUR_PAIRS` with a generator seeded by (seed, image index in `load_digits`
   order) only. The draw never sees the label, so colour carries no information about the class.

Split. A fixed, stratified held-out split: inside every class, a seeded permutation (seed, class) puts the first
round(fraction * n_class) images into the held-out set, the rest into the training set. Both sets are written as
ImageFolder trees (`<root>/<class>/<index>.png`, class sub-folders `0`..`9`, index = position in `load_digits`),
which the tokenizer trainer, the code extractor and the reconstruction stage read unchanged.

Photos. A few colour photos bundled with scikit-image (`PHOTO_NAMES`), ADM center-cropped (the project's
`center_crop_arr`) to `size` x `size`, for a qualitative reconstruction of out-of-domain images.

scikit-learn and scikit-image are test extras (`pip install -e ".[test]"`, done by env_install.sh); without them
the loaders raise `DemoDataError` saying so.

Shape letters: S image side (square images, H = W = S); N a flattened count, stated where used. Here S = `size`
and N is a number of images, stated in each docstring.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gigatok.data.transforms import center_crop_arr
from gigatok.errors import UserError
from gigatok.infra.io import write_json_atomic

NUM_CLASSES = 10
DIGIT_LEVELS = 16  # load_digits pixel values are 0..16
# (foreground, background) sRGB colours. Few pairs on purpose: every pair multiplies the variety of image patches
# the tokenizer's codebook and the GPT must cover, and the demo's models are tiny.
COLOUR_PAIRS: tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...] = (
    ((240, 240, 230), (20, 20, 30)),    # white on black
    ((20, 20, 30), (240, 240, 230)),    # black on white
    ((245, 210, 60), (40, 80, 210)),    # yellow on blue
    ((220, 50, 50), (240, 240, 230)),   # red on white
    ((40, 200, 90), (20, 20, 30)),      # green on black
    ((245, 210, 60), (140, 60, 170)),   # yellow on purple
)
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
               "retina", "colorwheel")
DATA_VERSION = 2  # bump when the rendering changes, so cached folders are rebuilt


class DemoDataError(UserError, RuntimeError):
    """The demo data cannot be produced (a missing optional dependency)."""


@dataclass
class DigitSplit:
    """The colourised digits, split. images: (N, S, S, 3) uint8; labels: (N,) int64 in [0, 9]; index: (N,) int64
    positions in `load_digits` order (names of the written files); N = the images of the split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    train_index: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    heldout_index: np.ndarray


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: intensities (N, 8, 8) float32 in [0, 1] and labels (N,) int64 (N = 1797)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DemoDataError("the demo data needs scikit-learn (load_digits): run `bash env_install.sh` or "
                            "`pip install -e \".[test]\"`") from None
    digits = load_digits()
    return (digits.images / DIGIT_LEVELS).astype(np.float32), digits.target.astype(np.int64)


def upsample_intensity(intensity: np.ndarray, size: int) -> np.ndarray:
    """(8, 8) float in [0, 1] -> (size, size) float32 in [0, 1]: PIL BICUBIC resize, then clipped."""
    image = Image.fromarray(intensity.astype(np.float32), mode="F").resize((size, size), resample=Image.BICUBIC)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def colour_index(index: int, seed: int) -> int:
    """The `COLOUR_PAIRS` entry of the digit at position `index` of `load_digits` (uniform, seeded, label-blind)."""
    return int(np.random.default_rng([seed, index]).integers(len(COLOUR_PAIRS)))


def colourise_digits(intensities: np.ndarray, index: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Render digits as colour images.

    Args:
        intensities: (N, 8, 8) float in [0, 1], N images.
        index: (N,) the images' positions in `load_digits` order; with `seed` they alone pick the colours.
        size: output side S.
        seed: colour seed.

    Returns:
        (N, S, S, 3) uint8.
    """
    pairs = np.asarray(COLOUR_PAIRS, dtype=np.float32)  # (len(COLOUR_PAIRS), 2, 3): foreground, background
    out = np.empty((len(intensities), size, size, 3), dtype=np.uint8)
    for i, (intensity, idx) in enumerate(zip(intensities, index)):
        fg, bg = pairs[colour_index(int(idx), seed)]
        t = upsample_intensity(intensity, size)[..., None]  # (S, S, 1)
        out[i] = np.rint((1.0 - t) * bg + t * fg).astype(np.uint8)
    return out


def stratified_split(labels: np.ndarray, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, heldout), each sorted ascending, disjoint, covering every index; per class, a seeded
    permutation sends round(fraction * n_class) images to the held-out set."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    train, heldout = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[np.random.default_rng([seed, int(c)]).permutation(len(members))]
        n_held = round(heldout_fraction * len(members))
        heldout.append(members[:n_held])
        train.append(members[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


def make_digit_split(size: int = 32, seed: int = 0, heldout_fraction: float = 0.2) -> DigitSplit:
    """The colourised, split digits (deterministic in `size`, `seed`, `heldout_fraction`)."""
    intensities, labels = load_digit_arrays()
    index = np.arange(len(labels), dtype=np.int64)
    images = colourise_digits(intensities, index, size, seed)
    train, heldout = stratified_split(labels, heldout_fraction, seed)
    return DigitSplit(images[train], labels[train], train, images[heldout], labels[heldout], heldout)


def load_photos(size: int, names: tuple[str, ...] = PHOTO_NAMES) -> tuple[np.ndarray, list[str]]:
    """scikit-image's bundled photos, ADM center-cropped: (N, S, S, 3) uint8, N = len(names), and their names."""
    try:
        import skimage.data
    except ImportError:
        raise DemoDataError("the demo photos need scikit-image: run `bash env_install.sh` or "
                            "`pip install -e \".[test]\"`") from None
    photos = []
    for name in names:
        array = getattr(skimage.data, name)()
        image = Image.fromarray(array).convert("RGB")  # greyscale / RGBA photos become RGB
        photos.append(np.asarray(center_crop_arr(image, size), dtype=np.uint8))
    return np.stack(photos), list(names)


def write_image_folder(root: Path, images_uint8: np.ndarray, labels: np.ndarray, index: np.ndarray) -> None:
    """ImageFolder tree `<root>/<label>/<index:04d>.png`, written to `<root>.tmp` then renamed into place."""
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in range(NUM_CLASSES):
        (tmp / str(c)).mkdir(parents=True)
    for image, label, idx in zip(images_uint8, labels, index):
        Image.fromarray(image).save(tmp / str(int(label)) / f"{int(idx):04d}.png")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)


@dataclass
class DemoDataPaths:
    """Folders of the written demo data."""

    train: Path  # ImageFolder of the training digits
    heldout: Path  # ImageFolder of the held-out digits
    photos: Path  # flat folder of photos, <name>.png
    info: Path  # JSON record of the settings and counts (also the "done" marker)


def demo_data_paths(root: str | os.PathLike) -> DemoDataPaths:
    root = Path(root)
    return DemoDataPaths(root / "digits_train", root / "digits_heldout", root / "photos", root / "data.json")


def write_demo_data(root: str | os.PathLike, size: int = 32, seed: int = 0,
                    heldout_fraction: float = 0.2) -> DemoDataPaths:
    """Write the digit ImageFolders and the photo folder under `root` (skipped when `data.json` records the same
    settings). Returns the paths."""
    paths = demo_data_paths(root)
    settings = {"version": DATA_VERSION, "size": size, "seed": seed, "heldout_fraction": heldout_fraction,
                "colour_pairs": [[list(fg), list(bg)] for fg, bg in COLOUR_PAIRS], "photos": list(PHOTO_NAMES)}
    if paths.info.is_file() and json.loads(paths.info.read_text()).get("settings") == settings:
        return paths
    split = make_digit_split(size, seed, heldout_fraction)
    photos, names = load_photos(size)
    Path(root).mkdir(parents=True, exist_ok=True)
    write_image_folder(paths.train, split.train_images, split.train_labels, split.train_index)
    write_image_folder(paths.heldout, split.heldout_images, split.heldout_labels, split.heldout_index)
    shutil.rmtree(paths.photos, ignore_errors=True)
    paths.photos.mkdir(parents=True)
    for photo, name in zip(photos, names):
        Image.fromarray(photo).save(paths.photos / f"{name}.png")
    info = {"settings": settings, "num_train": len(split.train_labels), "num_heldout": len(split.heldout_labels),
            "train_per_class": np.bincount(split.train_labels, minlength=NUM_CLASSES).tolist(),
            "heldout_per_class": np.bincount(split.heldout_labels, minlength=NUM_CLASSES).tolist()}
    write_json_atomic(paths.info, info)  # last: its presence means the folders are complete
    return paths


def write_eval_subset(source: str | os.PathLike, target: str | os.PathLike, limit: int) -> Path:
    """A class-balanced subset of the ImageFolder `source`: about `limit` images, the first ones (file order) of
    every class, copied to `target` (rebuilt when its recorded source/limit differ). For quick test runs."""
    source, target = Path(source), Path(target)
    stamp = target.with_name(target.name + ".json")  # next to the folder: image readers would warn about it
    settings = {"source": str(source.resolve()), "limit": limit}
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return target
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    per_class = max(limit // len(classes), 1)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in classes:
        (tmp / c).mkdir(parents=True)
        for image in sorted((source / c).glob("*.png"))[:per_class]:
            shutil.copyfile(image, tmp / c / image.name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    write_json_atomic(stamp, settings)
    return target


def read_image_folder(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Read back an ImageFolder written by `write_image_folder`: images (N, S, S, 3) uint8, labels (N,) int64 and
    files (N = the images found), in ImageFolder order (sorted class folders, sorted names)."""
    root = Path(root)
    files = sorted(root.glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    images = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8) for f in files])
    return images, np.array([int(f.parent.name) for f in files], dtype=np.int64), files
