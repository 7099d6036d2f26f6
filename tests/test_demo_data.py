"""The demo's built-in data: deterministic colourised digits, a stratified disjoint held-out split, and the digit
classifier that scores the generated samples."""
from __future__ import annotations

import numpy as np

from gigatok.data.demo_data import (
    COLOUR_PAIRS,
    make_digit_split,
    read_image_folder,
    write_demo_data,
)
from gigatok.eval.digit_classifier import accuracy, train_digit_classifier


def test_split_is_deterministic_stratified_and_disjoint():
    a, b = make_digit_split(size=16, seed=0), make_digit_split(size=16, seed=0)
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.heldout_index, b.heldout_index)
    assert a.train_images.dtype == np.uint8 and a.train_images.shape[1:] == (16, 16, 3)
    assert not set(a.train_index) & set(a.heldout_index)
    assert len(a.train_index) + len(a.heldout_index) == 1797
    heldout_share = np.bincount(a.heldout_labels, minlength=10) / np.bincount(
        np.concatenate([a.train_labels, a.heldout_labels]), minlength=10)
    assert np.all(np.abs(heldout_share - 0.2) < 0.02)  # every class is held out in the same proportion
    other = make_digit_split(size=16, seed=1)
    assert not np.array_equal(other.heldout_index, a.heldout_index)


def test_colours_do_not_encode_the_class():
    split = make_digit_split(size=16, seed=0)
    corners = {tuple(c) for c in split.train_images[:, 0, 0].astype(int)}  # mostly the background colour
    backgrounds = {bg for _, bg in COLOUR_PAIRS}
    for label in range(10):
        seen = {tuple(c) for c in split.train_images[split.train_labels == label, 0, 0].astype(int)}
        assert backgrounds <= seen, label  # every class is drawn in every colour pair
    assert backgrounds <= corners


def test_written_folders_round_trip_and_are_reused(tmp_path):
    paths = write_demo_data(tmp_path / "data", size=16)
    images, labels, files = read_image_folder(paths.heldout)
    split = make_digit_split(size=16, seed=0)
    position = {int(i): k for k, i in enumerate(split.heldout_index)}
    order = [position[int(f.stem)] for f in files]  # file name = index in load_digits order
    assert np.array_equal(images, split.heldout_images[order]) and np.array_equal(labels, split.heldout_labels[order])
    stamp = paths.info.stat().st_mtime_ns
    write_demo_data(tmp_path / "data", size=16)
    assert paths.info.stat().st_mtime_ns == stamp  # same settings: nothing rewritten
    assert len(list(paths.photos.glob("*.png"))) >= 4


def test_classifier_learns_the_real_digits():
    split = make_digit_split(size=16, seed=0)
    model = train_digit_classifier(split.train_images, split.train_labels, epochs=4, seed=0)
    assert accuracy(model, split.heldout_images, split.heldout_labels) >= 0.9
