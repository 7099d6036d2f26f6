"""Training images for a GPT tokenized on the fly (official `train_c2i.py --dataset imagenet`).

The official trainer reads an ImageFolder tree with `random_crop_arr` + `RandomHorizontalFlip` and encodes each batch
with the frozen tokenizer inside the loop; this module holds the image side (the tokenizer side is
`gigatok.engine.gpt_train.GPTData`). Items are one augmented view per image and epoch, chosen by `augmentation`:

- "random_crop" (official): ADM random crop (short side resized to U{S..ceil(S/0.8)}, random S crop), then a flip
  with p = 0.5, exactly `TrainImageDataset`'s augmentation (the tokenizer trainer's).
- "center_flip": `center_crop_arr` or its mirror image: the two views `gigatok extract_codes` stores.
- "ten_crop": one of the ten crops of `center_crop_arr` to int(S * 1.1) that `extract_codes --ten-crop` stores
  (official crop range 1.1).

Every draw is a function of (seed, epoch, index) only, so a run resumed mid-epoch, or run on another number of ranks
or workers, sees the same views. The last two draw the view exactly as `CodeDataset` draws a stored view
(`draw_view`): training on the fly with them sees the same codes, in the same order, as training on the codes
`extract_codes` wrote from the same folder.

Unreadable files are replaced and counted as in `TrainImageDataset`.

Shape letters: S image side (square images, H = W = S). Here S = image_size.
"""
from __future__ import annotations

import os

from PIL import Image

from gigatok.data.codes import draw_view, five_crop
from gigatok.data.images import ImageDataError
from gigatok.data.train_images import TrainImageDataset
from gigatok.data.transforms import center_crop_arr

AUGMENTATIONS = ("random_crop", "center_flip", "ten_crop")
TEN_CROP_RANGE = 1.1  # official extract_codes_c2i.py --crop-range default


class GPTImageDataset(TrainImageDataset):
    """An ImageFolder tree (class sub-folders) for on-the-fly GPT training; items are `(images, label,
    num_unreadable)`: images (3, S, S) float32 in [-1, 1], label the class index (ImageFolder's), num_unreadable the
    unreadable files replaced to produce it (usually 0).

    Args:
        root: `<root>/<class>/<images>` (e.g. ILSVRC2012_img_train/); images directly in `root` are ignored.
        image_size: S, the tokenizer's image size.
        seed: the run's global seed (the same on every rank).
        augmentation: one of `AUGMENTATIONS` (module docstring).

    Raises:
        ImageDataError: the folder is missing, holds no images, or has no class sub-folders.

    Call `set_epoch(epoch)` before creating each epoch's DataLoader iterator.
    """

    def __init__(self, root: str | os.PathLike, image_size: int, seed: int = 0,
                 augmentation: str = "random_crop") -> None:
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got '{augmentation}'")
        super().__init__(root, image_size, seed=seed)
        if not self.classes:
            raise ImageDataError(
                f"'{self.root}' has no class sub-folders: class-conditional training on images reads an ImageFolder "
                "tree, <data-path>/<class name>/<image files> (e.g. ILSVRC2012_img_train/n01440764/...), and takes "
                "each sub-folder as one class.")
        self.augmentation = augmentation

    def augment(self, image: Image.Image, index: int) -> Image.Image:
        if self.augmentation == "random_crop":
            return super().augment(image, index)
        size = self.image_size
        if self.augmentation == "center_flip":
            view = draw_view(self.seed, self.epoch, index, 2)  # CENTER_FLIP_VIEWS: center, flip_center
            center = center_crop_arr(image, size)
            return center.transpose(Image.FLIP_LEFT_RIGHT) if view == 1 else center
        # TEN_CROP_VIEWS: the five crops of the image (views 0-4), then of its mirror image (5-9)
        view = draw_view(self.seed, self.epoch, index, 10)
        base = center_crop_arr(image, int(size * TEN_CROP_RANGE))
        base = base.transpose(Image.FLIP_LEFT_RIGHT) if view >= 5 else base
        return five_crop(base, size)[view % 5]
