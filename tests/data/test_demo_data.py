"""The demo's built-in data (deterministic colourised digits, a stratified disjoint held-out split, photos) and the
digit classifier that scores the generated samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gigatok.data.demo_data import (
    COLOUR_PAIRS,
    colour_index,
    make_digit_split,
    read_image_folder,
    stratified_split,
    upsample_intensity,
    write_demo_data,
    write_eval_subset,
)
from gigatok.engine.digit_classifier import (
    accuracy,
    augment,
    to_input,
    train_digit_classifier,
)


@pytest.fixture(scope="module")
def split():
    return make_digit_split(size=16, seed=0)


def test_split_is_deterministic_stratified_and_disjoint(split):
    again = make_digit_split(size=16, seed=0)
    assert np.array_equal(split.train_images, again.train_images)
    assert np.array_equal(split.heldout_index, again.heldout_index)
    assert split.train_images.dtype == np.uint8 and split.train_images.shape[1:] == (16, 16, 3)
    assert split.train_labels.dtype == np.int64 and split.heldout_images.shape[0] == len(split.heldout_labels)
    assert not set(split.train_index) & set(split.heldout_index)
    assert len(split.train_index) + len(split.heldout_index) == 1797
    per_class = np.bincount(np.concatenate([split.train_labels, split.heldout_labels]), minlength=10)
    heldout_share = np.bincount(split.heldout_labels, minlength=10) / per_class
    assert np.all(np.abs(heldout_share - 0.2) < 0.01)  # every class is held out in the same proportion
    _train, heldout = stratified_split(np.repeat(np.arange(10), 50), 0.2, seed=1)
    assert len(heldout) == 100 and not np.array_equal(heldout, stratified_split(np.repeat(np.arange(10), 50), 0.2,
                                                                                 seed=2)[1])


def test_rendering_is_documented_upsampling_then_a_colour_pair(split):
    t = upsample_intensity(np.eye(8, dtype=np.float32), 16)
    assert t.shape == (16, 16) and t.dtype == np.float32 and t.min() >= 0.0 and t.max() <= 1.0
    image, index = split.train_images[0], int(split.train_index[0])
    fg, bg = (np.array(c) for c in COLOUR_PAIRS[colour_index(index, 0)])
    # Every pixel lies on the segment between the background and the foreground colour (up to uint8 rounding).
    t_hat = ((image - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
    closest = bg + np.clip(t_hat, 0, 1)[..., None] * (fg - bg)
    assert np.abs(closest - image).max() <= 1.5


def test_colours_do_not_encode_the_class(split):
    backgrounds = {bg for _, bg in COLOUR_PAIRS}
    for label in range(10):
        pairs = {colour_index(int(i), 0) for i in split.train_index[split.train_labels == label]}
        assert pairs == set(range(len(COLOUR_PAIRS))), label  # every class is drawn in every colour pair
        corners = {tuple(c) for c in split.train_images[split.train_labels == label, 0, 0].astype(int)}
        assert backgrounds <= corners


def test_written_folders_round_trip_are_reused_and_subset(tmp_path, split):
    paths = write_demo_data(tmp_path / "data", size=16)
    images, labels, files = read_image_folder(paths.heldout)
    position = {int(i): k for k, i in enumerate(split.heldout_index)}
    order = [position[int(f.stem)] for f in files]  # file name = index in load_digits order
    assert np.array_equal(images, split.heldout_images[order]) and np.array_equal(labels, split.heldout_labels[order])
    stamp = paths.info.stat().st_mtime_ns
    write_demo_data(tmp_path / "data", size=16)
    assert paths.info.stat().st_mtime_ns == stamp  # same settings: nothing rewritten
    photos = sorted(paths.photos.glob("*.png"))
    assert len(photos) == 8 and read_image_folder(paths.train)[0].shape[1:] == (16, 16, 3)
    subset = write_eval_subset(paths.heldout, tmp_path / "subset", 20)
    sub_images, sub_labels, _ = read_image_folder(subset)
    assert np.array_equal(np.bincount(sub_labels), [2] * 10) and sub_images.dtype == np.uint8


def test_classifier_input_ignores_the_colours_and_learns_the_digits(split):
    images = split.train_images[:8]
    recoloured = 255 - images[..., ::-1]  # other colours, fore- and background swapped in brightness
    assert torch.allclose(to_input(images), to_input(np.ascontiguousarray(recoloured)), atol=1e-5)
    batch = to_input(images)
    shifted = augment(batch, torch.Generator().manual_seed(0), flip=True)
    assert shifted.shape == batch.shape and not torch.equal(shifted, batch)
    model = train_digit_classifier(split.train_images, split.train_labels, epochs=4, seed=0)
    assert accuracy(model, split.heldout_images, split.heldout_labels) >= 0.9
    with pytest.raises(ValueError, match="uint8"):
        to_input(images.astype(np.float32))
