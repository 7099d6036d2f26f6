"""Training images for the tokenizer: an ImageNet-style folder with the official augmentation.

Layout: `ILSVRC2012_img_train/<class>/<image>` (torchvision `ImageFolder`: the sorted class sub-folders get the
labels 0, 1, ... in order, files are walked recursively inside each) or a flat folder of images (label -1). Images
directly in the root of a folder that also has class sub-folders are ignored, as `ImageFolder` does. Files without an
image extension are skipped with one warning line.

Augmentation (official `vq_train.py`): ADM `random_crop_arr` (short side resized to U{S..ceil(S/0.8)}, random S
crop) then a horizontal flip with probability 0.5, normalised to [-1, 1]. The official code draws both from the
global RNG of the DataLoader worker; here they come from a generator seeded with (seed, epoch, index), so an image
gets the same crop whatever the number of ranks or workers and whether or not the run was resumed in between.

A file that cannot be decoded (corrupt, truncated, not really an image) does not stop training: it is replaced
by another image chosen deterministically from (seed, epoch, index, attempt), a warning names it (once per file
per process), and the sample carries the number of unreadable files it met, so the trainer can sum the count over
a batch and over ranks and log it (this also works with DataLoader workers, whose own counters the main process
cannot see).

Small datasets (at most `CACHE_MAX_FILES` files) keep their decoded images in memory, up to `CACHE_MAX_BYTES` per
process: re-opening and decoding a tiny PNG costs about as much as augmenting it (0.4 ms per 16 px digit on the
demo CPU, half of the loading time of a demo step). ImageNet-size folders are never cached. With DataLoader
workers each worker builds its own cache, which lasts one epoch (workers are re-created per epoch).

Shape letters: S image side (square images, H = W = S). Here S = image_size.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gigatok.data.images import (
    ImageDataError,
    UnreadableImageError,
    decode_image,
    list_image_files,
)
from gigatok.data.transforms import random_crop_arr, to_tensor_normalized

logger = logging.getLogger(__name__)

MAX_REPLACEMENTS = 50  # unreadable files met in a row for one sample before the data is declared broken
FLIP_PROB = 0.5
CACHE_MAX_FILES = 20_000  # folders with more files are never cached
CACHE_MAX_BYTES = 256 * 2**20  # decoded RGB bytes kept per process


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> random.Random:
    """A generator determined by (seed, epoch, index, attempt) only (well mixed through numpy's SeedSequence)."""
    state = np.random.SeedSequence([seed, epoch, index, attempt]).generate_state(2, dtype=np.uint32)
    return random.Random(int(state[0]) << 32 | int(state[1]))


def list_training_images(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of an ImageFolder (class sub-folders) or of a flat folder (labels -1).

    Raises:
        ImageDataError: the folder does not exist or holds no images.
    """
    root = Path(root)
    files, skipped = list_image_files(root)  # root-level images first, then sorted sub-folders, walked in order
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    in_class = [f for f in files if f.parent != root]
    if classes and in_class:
        files, class_index = in_class, {name: i for i, name in enumerate(classes)}
        labels = [class_index[f.relative_to(root).parts[0]] for f in files]  # ImageFolder's class_to_idx
    else:
        classes, labels = [], [-1] * len(files)
    if not files:
        raise ImageDataError(f"no training images found under '{root}'. --data-path must point at an ImageNet-style "
                             "folder (e.g. ILSVRC2012_img_train/ with one sub-folder per class) or a folder of images.")
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:5])
        more = ", ..." if len(skipped) > 5 else ""
        logger.warning(f"skipped {len(skipped)} non-image file(s) under '{root}': {shown}{more}")
    return files, labels, classes


class TrainImageDataset(Dataset):
    """Augmented training images; items are `(images, label, num_unreadable)`.

    images: (3, S, S) float32 in [-1, 1]; label: class index (-1 for a flat folder); num_unreadable: how many
    unreadable files were met (and replaced) to produce this sample, usually 0.

    Args:
        root: data folder (see module docstring).
        image_size: S.
        seed: augmentation seed (the run's global seed); the same on every rank.
        flip_prob: probability of the horizontal flip (official 0.5).

    Call `set_epoch(epoch)` before creating each epoch's DataLoader iterator (workers copy the dataset when the
    iterator starts, so do not use persistent workers).
    """

    def __init__(self, root: str | os.PathLike, image_size: int, seed: int = 0, flip_prob: float = FLIP_PROB) -> None:
        self.root = Path(root)
        self.files, self.labels, self.classes = list_training_images(self.root)
        self.image_size, self.seed, self.flip_prob = image_size, seed, flip_prob
        self.epoch = 0
        self._reported: set[int] = set()
        self._cache: dict[int, Image.Image] | None = {} if len(self.files) <= CACHE_MAX_FILES else None
        self._cache_bytes = 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, index: int) -> Image.Image | None:
        """The RGB image of file `index`, or None (with a warning, once per file) when it cannot be decoded.
        Callers must not modify it in place (it may be the cached copy)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        try:
            rgb = decode_image(self.files[index])
        except UnreadableImageError as err:
            if index not in self._reported:
                self._reported.add(index)
                logger.warning(f"unreadable training image: {err} Replaced by another image (counted in "
                               "train/corrupt_images).")
            return None
        size = rgb.width * rgb.height * 3
        if self._cache is not None and self._cache_bytes + size <= CACHE_MAX_BYTES:
            self._cache[index] = rgb
            self._cache_bytes += size
        return rgb

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        source = index
        for attempt in range(MAX_REPLACEMENTS + 1):
            image = self._load(source)
            if image is not None:
                break
            if len(self.files) == 1:
                break
            pick = sample_rng(self.seed, self.epoch, index, attempt + 1).randrange(len(self.files) - 1)
            source = pick + (pick >= source)  # any other file
        if image is None:
            raise ImageDataError(f"{MAX_REPLACEMENTS + 1} unreadable images in a row while loading sample {index} "
                                 f"from '{self.root}': the data folder looks broken (check the files, the disk and "
                                 "the file permissions).")
        # keyed by the requested index: replacements stay deterministic
        return to_tensor_normalized(self.augment(image, index)), self.labels[source], attempt

    def augment(self, image: Image.Image, index: int) -> Image.Image:
        """The S x S training view of sample `index` in the current epoch (a function of (seed, epoch, index) only):
        ADM random crop, then a horizontal flip with probability `flip_prob`. Must not modify `image` in place."""
        rng = sample_rng(self.seed, self.epoch, index)
        image = random_crop_arr(image, self.image_size, rng=rng)
        if rng.random() < self.flip_prob:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image
