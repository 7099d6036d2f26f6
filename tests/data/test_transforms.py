"""Crops and tensor conversions of gigatok.data.transforms."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from gigatok.data.transforms import (
    CenterCropTransform,
    center_crop_arr,
    random_crop_arr,
    to_tensor_normalized,
    to_uint8,
)

PHOTOS = Path(__file__).resolve().parents[1] / "gt_qualitative"


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_center_crop_of_exact_short_side_is_a_plain_center_slice():
    image = Image.open(PHOTOS / "rocket.jpg").convert("RGB")  # 384 x 256: no resize needed
    out = center_crop_arr(image, 256)
    assert out.size == (256, 256)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image)[:, 64:320])


def test_center_crop_box_halves_then_bicubic():
    image = _random_image(1000, 600)  # 600 >= 2 * 128 -> halved twice (500x300, 250x150), then bicubic to 128
    expected = image.resize((500, 300), Image.BOX).resize((250, 150), Image.BOX)
    expected = expected.resize((round(250 * 128 / 150), 128), Image.BICUBIC)
    left = (expected.width - 128) // 2
    out = center_crop_arr(image, 128)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected)[:, left:left + 128])


def test_center_crop_upsamples_small_images():
    out = center_crop_arr(_random_image(20, 12), 32)
    assert out.size == (32, 32)


def test_random_crop_size_range_and_determinism():
    image = _random_image(400, 300)
    crops = [np.asarray(random_crop_arr(image, 64, rng=random.Random(s))) for s in range(6)]
    assert all(c.shape == (64, 64, 3) for c in crops)
    np.testing.assert_array_equal(crops[0], np.asarray(random_crop_arr(image, 64, rng=random.Random(0))))
    assert any(not np.array_equal(crops[0], c) for c in crops[1:])
    # max_crop_frac == min_crop_frac == 1: the short side is resized to exactly the crop size
    tall = random_crop_arr(_random_image(64, 200), 64, min_crop_frac=1.0, rng=random.Random(1))
    assert tall.size == (64, 64)


def test_to_tensor_normalized_matches_torchvision_bit_for_bit():
    image = Image.open(PHOTOS / "chelsea.jpg").convert("RGB")
    reference = T.Normalize([0.5] * 3, [0.5] * 3)(T.ToTensor()(image))
    ours = to_tensor_normalized(image)
    assert ours.dtype == torch.float32 and ours.shape == (3, image.height, image.width)
    assert torch.equal(ours, reference)
    assert ours.min() >= -1 and ours.max() <= 1


def test_to_uint8_round_trips_and_clamps():
    image = _random_image(16, 8)
    images = to_tensor_normalized(image)[None]  # (1, 3, 8, 16)
    np.testing.assert_array_equal(to_uint8(images)[0].numpy(), np.asarray(image))
    out_of_range = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(out_of_range)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_center_crop_transform_output():
    images = CenterCropTransform(32)(Image.open(PHOTOS / "coffee.jpg").convert("RGB"))
    assert images.shape == (3, 32, 32) and images.dtype == torch.float32
    assert -1 <= images.min() and images.max() <= 1
