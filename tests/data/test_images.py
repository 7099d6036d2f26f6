"""The evaluation image-folder dataset: order, skipping, and clear errors."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from gigatok.data.images import ImageDataError, ImageFolderDataset, list_image_files

PHOTOS = Path(__file__).resolve().parents[1] / "gt_qualitative"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_of_images_module():
    handler, logger = _Records(), logging.getLogger("gigatok.data.images")
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
