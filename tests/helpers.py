"""Test data shared by several test files: small image folders and an official-format tokenizer checkpoint.

Importable from every test module (tests/ is on sys.path through its conftest.py).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gigatok.builders import build_tokenizer
from gigatok.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "gt_qualitative"
CONFIG = ROOT / "configs" / "vq" / "VQ_debug.yaml"  # the tiny 1D tokenizer: 32 px, 64 codes, codebook 1024
COLOURS = ((210, 60, 50), (40, 70, 220))


class WarningRecords(logging.Handler):
    """Collects the messages of WARNING and above, to attach to one module's logger in a test."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def make_colour_folders(root: Path, train_per_class: int = 6, val_per_class: int = 3) -> Path:
    """`root/ILSVRC2012_img_{train,val}/n{c}/*.png`: noisy images whose mean colour gives the class."""
    rng = np.random.default_rng(0)
    for split, count in (("ILSVRC2012_img_train", train_per_class), ("ILSVRC2012_img_val", val_per_class)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"n{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (36, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def make_val_folder(root: Path) -> list[Path]:
    """An ImageNet-val-like folder: two class folders of 4 images each (the photos and flipped, non-square crops
    of them), plus a file that is not an image. Returns the images in the official (ImageFolder) order."""
    photos = sorted(PHOTOS.iterdir())
    (root / "n01").mkdir(parents=True)
    (root / "n02").mkdir()
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        image.save(root / "n01" / f"{photo.stem}.png")
        image.transpose(Image.FLIP_LEFT_RIGHT).crop((10, 0, 200, 120)).save(root / "n02" / f"{photo.stem}.jpg")
    (root / "n02" / "README.txt").write_text("not an image\n")
    return sorted((root / "n01").iterdir()) + sorted((root / "n02").glob("*.jpg"))


def make_digit_folder(root: Path, num_images: int, size: int = 36) -> Path:
    """ImageFolder tree `root/<digit>/<i>.png` of colourised, upsampled sklearn digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for i in range(num_images):
        ink = digits.images[i][..., None] / 16.0  # (8, 8, 1) in [0, 1]
        fg, bg = rng.uniform(0.4, 1.0, 3), rng.uniform(0.0, 0.3, 3)
        rgb = ((bg * (1 - ink) + fg * ink) * 255).astype(np.uint8)
        folder = root / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.png")
    return root


def save_official_tokenizer(path: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = build_tokenizer(load_config(CONFIG))
    torch.save({"model": tokenizer.state_dict(), "args": argparse.Namespace(image_size=32), "steps": 10}, path)
    return path
