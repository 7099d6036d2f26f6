"""Image transforms shared by training, reconstruction and code extraction.

The crops follow the ADM convention that the official code uses (`dataset/augmentation.py`): shrink large images
with repeated BOX halving (cheap anti-aliasing), then one BICUBIC resize of the short side, then crop. Tensors
follow the house convention: `images` are float in [-1, 1], `images_uint8` are in [0, 255].

Shape letters: B batch; H, W height and width of an image or feature map; S image side (square images, H = W = S).
Here S = image_size.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image


def _resize_short_side(pil_image: Image.Image, short_side: int) -> Image.Image:
    """BOX-halve while the short side is at least twice `short_side`, then BICUBIC-resize it to `short_side`."""
    while min(*pil_image.size) >= 2 * short_side:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = short_side / min(*pil_image.size)
    return pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM center crop: short side resized to `image_size`, then the central `image_size` square.

    Args:
        pil_image: any size; RGB expected (the datasets convert before calling).
        image_size: output side in pixels.

    Returns:
        An `image_size` x `image_size` PIL image.
    """
    pil_image = _resize_short_side(pil_image, image_size)
    width, height = pil_image.size
    left, top = (width - image_size) // 2, (height - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def random_crop_arr(pil_image: Image.Image, image_size: int, min_crop_frac: float = 0.8,
                    max_crop_frac: float = 1.0, rng: random.Random | None = None) -> Image.Image:
    """ADM random crop: short side resized to a random length, then a random `image_size` square.

    The short side is drawn uniformly from the integers [ceil(image_size / max_crop_frac),
    ceil(image_size / min_crop_frac)], i.e. [256, 320] for 256 px with the defaults, so the crop covers between
    `min_crop_frac` and `max_crop_frac` of the short side.

    Args:
        rng: source of randomness; the global `random` module when None (as in the official code, which
            DataLoader workers seed per worker).
    """
    rng = rng if rng is not None else random
    short_side = rng.randrange(math.ceil(image_size / max_crop_frac), math.ceil(image_size / min_crop_frac) + 1)
    pil_image = _resize_short_side(pil_image, short_side)
    width, height = pil_image.size
    left, top = rng.randrange(width - image_size + 1), rng.randrange(height - image_size + 1)
    return pil_image.crop((left, top, left + image_size, top + image_size))


def to_tensor_normalized(pil_image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 in [-1, 1].

    Same arithmetic as torchvision `ToTensor()` followed by `Normalize(0.5, 0.5)` (the official transform), so
    results match it bit for bit.
    """
    array = np.asarray(pil_image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    images = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)  # (3, H, W) in [0, 1]
    return images.sub_(0.5).div_(0.5)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float (~[-1, 1], unclamped decoder output) -> (B, H, W, 3) uint8 on CPU.

    Uses the official rounding `clamp(127.5 * x + 128, 0, 255)` followed by truncation to uint8.
    """
    images_uint8 = torch.clamp(127.5 * images.float() + 128.0, 0, 255)
    return images_uint8.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8)


class CenterCropTransform:
    """Picklable eval transform (DataLoader workers need that): PIL image -> (3, S, S) float in [-1, 1]."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, pil_image: Image.Image) -> torch.Tensor:
        return to_tensor_normalized(center_crop_arr(pil_image, self.image_size))

    def __repr__(self) -> str:
        return f"CenterCropTransform(image_size={self.image_size})"
