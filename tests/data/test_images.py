"""The evaluation image-folder dataset: order, skipping, and clear errors."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WarningRecords
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from gigatok.data.images import ImageDataError, ImageFolderDataset, list_image_files

PHOTOS = Path(__file__).resolve().parents[1] / "gt_qualitative"


@pytest.fixture
def warnings_of_images_module():
    handler, logger = WarningRecords(), logging.getLogger("gigatok.data.images")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _write(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_order_matches_imagefolder_and_root_images_come_first(tmp_path):
    for i, rel in enumerate(["b/2.png", "b/10.png", "a/z.jpg", "a/sub/x.png", "a/a.PNG", "c/deep/er/q.bmp"]):
        _write(tmp_path / rel, seed=i)
    _write(tmp_path / "root.png")
    images, skipped = list_image_files(tmp_path)
    assert skipped == []
    assert images[0] == tmp_path / "root.png"  # ImageFolder ignores root files; we take them, first
    official = [Path(p) for p, _ in ImageFolder(str(tmp_path)).samples]
    assert images[1:] == official


def test_items_are_normalized_crops_with_their_index():
    dataset = ImageFolderDataset(PHOTOS, image_size=32)
    assert [p.name for p in dataset.files] == ["astronaut.png", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    images, index = dataset[2]
    assert index == 2 and images.shape == (3, 32, 32) and images.dtype == torch.float32
    assert -1 <= images.min() < images.max() <= 1


def test_non_image_files_are_skipped_with_one_warning(tmp_path, warnings_of_images_module):
    shutil.copytree(PHOTOS, tmp_path / "gt")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "gt" / "helper.py").write_text("print('hi')")
    dataset = ImageFolderDataset(tmp_path, image_size=16)
    assert len(dataset) == 4 and len(dataset.skipped) == 2
    assert len(warnings_of_images_module) == 1
    message = warnings_of_images_module[0]
    assert "skipped 2 non-image file(s)" in message and "notes.txt" in message and "helper.py" in message


def test_corrupt_image_is_a_clear_error_naming_the_file(tmp_path):
    _write(tmp_path / "cls" / "good.png")
    bad = tmp_path / "cls" / "zz_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    dataset = ImageFolderDataset(tmp_path, image_size=16)
    dataset[0]
    with pytest.raises(ImageDataError, match="zz_bad.png.*remove it from the data folder or convert it"):
        dataset[1]


def test_corrupt_image_error_from_a_worker_keeps_the_plain_message(tmp_path):
    bad = tmp_path / "cls" / "truncated.jpg"
    bad.parent.mkdir()
    bad.write_bytes((PHOTOS / "chelsea.jpg").read_bytes()[:2000])  # valid header, truncated data
    loader = DataLoader(ImageFolderDataset(tmp_path, image_size=16), batch_size=1, num_workers=1)
    with pytest.raises(ImageDataError) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith("cannot decode image file") and "truncated.jpg" in message
    assert "Traceback" not in message


def test_no_images_and_missing_folder_are_clear_errors(tmp_path):
    (tmp_path / "readme.md").write_text("nothing here")
    with pytest.raises(ImageDataError, match=f"no images found under '{tmp_path}'"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(ImageDataError, match="data path not found"):
        ImageFolderDataset(tmp_path / "missing")


# -- decoding: every reader goes through decode_image ------------------------------------------------------------------
def test_wide_pixel_formats_are_scaled_to_8_bits_not_clipped(tmp_path):
    from gigatok.data.images import decode_image

    ramp = np.linspace(0, 1, 64 * 48).reshape(48, 64)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "gray16.png")  # PIL reads it as 'I' / 'I;16'
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tmp_path / "float01.tiff")
    Image.fromarray((ramp * 255).astype(np.float32), mode="F").save(tmp_path / "float255.tiff")
    for name in ("gray16.png", "float01.tiff", "float255.tiff"):
        rgb = np.asarray(decode_image(tmp_path / name))
        assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3), name
        assert abs(rgb.mean() - 127.5) < 1.5 and rgb.min() == 0 and rgb.max() == 255, (name, rgb.mean())
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # grayscale replicated
    # The official conversion of the 8-bit formats is kept: grayscale, palette (with transparency), CMYK, RGBA.
    rgb8 = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb8).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(rgb8).convert("RGBA").save(tmp_path / "rgba.png")
    palette = Image.fromarray(rgb8).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    for name in ("cmyk.jpg", "rgba.png", "palette.png"):
        with Image.open(tmp_path / name) as image:
            np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / name)),
                                          np.asarray(image.convert("RGBA").convert("RGB")
                                                     if name == "palette.png" else image.convert("RGB")))
    Image.fromarray((ramp * 1e6).astype(np.int32), mode="I").save(tmp_path / "int32.tiff")
    with pytest.raises(ImageDataError, match=r"int32.tiff' has 'I' pixels with values in \[0, 1e\+06\]"):
        decode_image(tmp_path / "int32.tiff")


def test_a_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch):
    from gigatok.data.images import UnreadableImageError, decode_image
    from gigatok.data.train_images import TrainImageDataset

    _write(tmp_path / "data" / "a" / "big.png", size=(64, 64))
    _write(tmp_path / "data" / "a" / "small.png", size=(16, 16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 pixels: over 2x the limit
    with pytest.raises(UnreadableImageError, match="big.png' is too large to decode safely"):
        decode_image(tmp_path / "data" / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # over 1x: PIL only warns; we refuse all the same
    with pytest.raises(UnreadableImageError, match="too large"):
        decode_image(tmp_path / "data" / "a" / "big.png")
    dataset = TrainImageDataset(tmp_path / "data", 16, seed=0)
    images, _, unreadable = dataset[dataset.files.index(tmp_path / "data" / "a" / "big.png")]
    assert images.shape == (3, 16, 16) and unreadable == 1  # replaced by the other image and counted
    with pytest.raises(ImageDataError, match="too large"):
        ImageFolderDataset(tmp_path / "data", 16)[0]  # the evaluation readers name it
