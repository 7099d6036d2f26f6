"""`GPTImageDataset`: the views of on-the-fly GPT training, against the code extraction's views and the official
random crop."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import PHOTOS
from PIL import Image

from gigatok.data.codes import LabeledImageFolder, ViewTransform, draw_view
from gigatok.data.images import ImageDataError, decode_image
from gigatok.data.onthefly import GPTImageDataset
from gigatok.data.train_images import sample_rng
from gigatok.data.transforms import random_crop_arr, to_tensor_normalized

SIZE = 32


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The four test photos in two class folders (a: astronaut, chelsea; b: coffee, rocket)."""
    root = tmp_path_factory.mktemp("photos")
    for i, path in enumerate(sorted(PHOTOS.iterdir())):
        (root / "ab"[i // 2]).mkdir(exist_ok=True)
        shutil.copy(path, root / "ab"[i // 2] / path.name)
    return root


@pytest.mark.parametrize("augmentation, ten_crop", [("center_flip", False), ("ten_crop", True)])
def test_stored_views_are_the_extracted_views_drawn_as_the_code_dataset_draws(photos, augmentation, ten_crop):
    dataset = GPTImageDataset(photos, SIZE, seed=3, augmentation=augmentation)
    folder = LabeledImageFolder(photos, ViewTransform(SIZE, use_ten_crop=ten_crop))  # what extract_codes encodes
    assert dataset.labels == folder.labels == [0, 0, 1, 1]
    seen = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            images, label, num_unreadable = dataset[index]
            views, expected_label, _ = folder[index]  # (A, 3, S, S)
            view = draw_view(3, epoch, index, len(views))
            assert images.shape == (3, SIZE, SIZE) and (label, num_unreadable) == (expected_label, 0)
            torch.testing.assert_close(images, views[view], rtol=0, atol=0)
            seen.add(view)
    assert len(seen) > 1  # the draw does pick different views


def test_random_crop_is_the_official_crop_and_flip_seeded_per_sample(photos):
    dataset = GPTImageDataset(photos, SIZE, seed=5)  # default: random_crop
    flips = []
    for epoch in (0, 1, 2):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            rng = sample_rng(5, epoch, index)
            crop = random_crop_arr(decode_image(dataset.files[index]), SIZE, rng=rng)
            flips.append(rng.random() < 0.5)
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT) if flips[-1] else crop
            torch.testing.assert_close(dataset[index][0], to_tensor_normalized(crop), rtol=0, atol=0)
    assert any(flips) and not all(flips)
    dataset.set_epoch(0)
    again = GPTImageDataset(photos, SIZE, seed=5)  # a fresh copy (a resumed run, another worker): the same view
    torch.testing.assert_close(again[2][0], dataset[2][0], rtol=0, atol=0)
    dataset.set_epoch(1)
    assert not torch.equal(again[2][0], dataset[2][0])  # another epoch, another crop


def test_a_folder_without_class_sub_folders_is_refused(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    with pytest.raises(ImageDataError, match="no class sub-folders"):
        GPTImageDataset(tmp_path, SIZE)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        GPTImageDataset(tmp_path, SIZE, augmentation="five_crop")
