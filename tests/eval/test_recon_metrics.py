"""PSNR / SSIM against scikit-image (the official implementation), codebook usage and the resumable records."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")
skimage_metrics = pytest.importorskip("skimage.metrics")

from gigatok.eval.recon_metrics import (
    CodebookUsage,
    ReconRecords,
    peak_signal_noise_ratio,
    psnr_batch,
    read_png_images,
    ssim_batch,
    structural_similarity,
)
from gigatok.infra.io import save_png_atomic


def _photos() -> list[np.ndarray]:
    """Real RGB photos (uint8, cropped to keep the test fast) and one grayscale photo made RGB."""
    gray = skimage_data.camera()[100:228, 150:278]
    return [skimage_data.astronaut()[:128, 100:260], skimage_data.chelsea()[50:170, 100:240],
            skimage_data.coffee()[100:196, 200:328], np.stack([gray] * 3, axis=-1)]


def _reconstruction_like(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A degraded uint8 copy: 2x2 box blur (lost detail) plus noise, like a tokenizer's output."""
    x = image.astype(np.float64)
    blurred = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(np.roll(x, 1, 0), 1, 1)) / 4
    return np.clip(blurred + rng.normal(0, 6, x.shape), 0, 255).astype(np.uint8)


def _official_pair(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(restored, gt) exactly as the official script builds them: float32 in [0, 1], the restored one from uint8."""
    gt = ((image.astype(np.float32) / 255 - 0.5) / 0.5 + 1.0) / 2.0  # through the [-1, 1] tensor, as there
    restored = _reconstruction_like(image, rng).astype(np.float32) / 255.0
    return restored, gt


def test_official_calls_match_scikit_image_on_photos():
    rng = np.random.default_rng(0)
    for image in _photos():
        restored, gt = _official_pair(image, rng)
        expected_psnr = skimage_metrics.peak_signal_noise_ratio(restored, gt)
        assert peak_signal_noise_ratio(restored, gt) == pytest.approx(expected_psnr, abs=1e-6)
        for data_range in (2.0, 1.0):
            expected = skimage_metrics.structural_similarity(restored, gt, channel_axis=-1, data_range=data_range)
            assert structural_similarity(restored, gt, data_range=data_range) == pytest.approx(expected, abs=1e-6)
        # the quirk is real: data_range=2 reports a higher SSIM than the standard convention
        assert structural_similarity(restored, gt, 2.0) > structural_similarity(restored, gt, 1.0) + 0.01


def test_batched_metrics_equal_the_per_image_ones():
    rng = np.random.default_rng(1)
    pairs = [_official_pair(skimage_data.astronaut()[i * 40:i * 40 + 64, 50:114], rng) for i in range(4)]
    restored, gt = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])  # (4, 64, 64, 3)
    psnr = psnr_batch(restored, gt)
    ssim = ssim_batch(restored, gt, data_ranges=(2.0, 1.0))  # (4, 2)
    assert psnr.shape == (4,) and ssim.shape == (4, 2)
    for i in range(4):
        assert psnr[i] == pytest.approx(skimage_metrics.peak_signal_noise_ratio(restored[i], gt[i]), abs=1e-6)
        for j, data_range in enumerate((2.0, 1.0)):
            expected = skimage_metrics.structural_similarity(restored[i], gt[i], channel_axis=-1,
                                                             data_range=data_range)
            assert ssim[i, j] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_random_images_any_dtype_and_shape(dtype):
    rng = np.random.default_rng(2)
    for shape in [(17, 23, 3), (40, 31, 1), (9, 64, 4)]:
        if dtype == np.uint8:
            a = rng.integers(0, 256, shape).astype(np.uint8)
            b = np.clip(a.astype(int) + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
            data_range = 255
        else:
            a = rng.random(shape).astype(dtype)
            b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1).astype(dtype)
            data_range = 1.0
        assert peak_signal_noise_ratio(a, b) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a, b),
                                                             abs=1e-6)
        expected = skimage_metrics.structural_similarity(a, b, channel_axis=-1, data_range=data_range)
        assert structural_similarity(a, b, data_range=data_range) == pytest.approx(expected, abs=1e-6)
    # grayscale (channel_axis=None), channels first, and images whose values are negative (PSNR range 2)
    gray = skimage_data.camera()[:64, :80]
    noisy = np.clip(gray.astype(int) + rng.integers(-9, 10, gray.shape), 0, 255).astype(np.uint8)
    expected = skimage_metrics.structural_similarity(gray, noisy, data_range=255)
    assert structural_similarity(gray, noisy, data_range=255, channel_axis=None) == pytest.approx(expected, abs=1e-9)
    a, b = rng.random((3, 20, 20)) * 2 - 1, rng.random((3, 20, 20)) * 2 - 1
    expected = skimage_metrics.structural_similarity(a, b, channel_axis=0, data_range=2.0)
    assert structural_similarity(a, b, data_range=2.0, channel_axis=0) == pytest.approx(expected, abs=1e-9)
    assert peak_signal_noise_ratio(a, b) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a, b), abs=1e-9)


def test_psnr_and_ssim_limits():
    image = skimage_data.coffee()[:32, :32].astype(np.float32) / 255
    assert peak_signal_noise_ratio(image, image) == np.inf
    assert structural_similarity(image, image, data_range=1.0) == pytest.approx(1.0, abs=1e-6)
    # a known MSE: every pixel off by 0.1 -> 10 log10(1 / 0.01) = 20 dB
    assert peak_signal_noise_ratio(np.full((8, 8, 3), 0.5), np.full((8, 8, 3), 0.6)) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="win_size"):
        structural_similarity(image[:5, :5], image[:5, :5], data_range=1.0)
    with pytest.raises(ValueError, match="outside"):
        peak_signal_noise_ratio(image + 1.5, image)  # a float image above 1: scikit-image's range check


def test_codebook_usage_counts_a_known_code_set():
    usage = CodebookUsage(codebook_size=10)
    usage.update(torch.tensor([[0, 3, 3], [9, 0, 3]]))
    assert usage.num_used == 3 and usage.usage == pytest.approx(0.3)
    usage.update(torch.tensor([[5]]))
    assert usage.used.nonzero().flatten().tolist() == [0, 3, 5, 9]
    other = np.zeros(10, dtype=bool)
    other[[1, 5]] = True
    usage.merge(other)
    assert usage.num_used == 5 and usage.usage == pytest.approx(0.5)
    usage.reduce_across_ranks()  # no process group: a no-op
    assert usage.num_used == 5
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        usage.update(torch.tensor([10]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        usage.update(torch.tensor([-1]))


def test_records_roundtrip_summary_and_run_key(tmp_path):
    records = ReconRecords(codebook_size=8, run_key="a")
    records.add_batch([4, 1], psnr=np.array([20.0, 30.0]), ssim=np.array([0.5, 0.7]),
                      ssim_data_range_1=np.array([0.4, 0.6]), lpips=None, codes=torch.tensor([[1, 2], [2, 7]]))
    summary = records.summary()
    assert summary["psnr"] == pytest.approx(25.0) and summary["ssim"] == pytest.approx(0.6)
    assert summary["ssim_data_range_1"] == pytest.approx(0.5) and summary["lpips"] is None
    assert summary["codebook_usage"] == pytest.approx(3 / 8) and summary["num_images"] == 2
    records.save(tmp_path / "r.npz")
    loaded = ReconRecords.load(tmp_path / "r.npz", codebook_size=8, run_key="a")
    assert loaded is not None and sorted(loaded.values) == [1, 4] and loaded.usage.num_used == 3
    np.testing.assert_array_equal([loaded.values[i] for i in (1, 4)], [records.values[i] for i in (1, 4)])
    assert ReconRecords.load(tmp_path / "r.npz", codebook_size=8, run_key="b") is None  # other settings
    assert ReconRecords.load(tmp_path / "r.npz", codebook_size=16, run_key="a") is None
    assert ReconRecords.load(tmp_path / "missing.npz", codebook_size=8, run_key="a") is None
    more = ReconRecords(codebook_size=8, run_key="a")
    more.add_batch([0], np.array([10.0]), np.array([0.1]), np.array([0.1]), np.array([0.3]), torch.tensor([[0]]))
    loaded.update(more)
    assert sorted(loaded.values) == [0, 1, 4] and loaded.usage.num_used == 4
    assert loaded.summary()["lpips"] is None  # NaN for two of three images: not a complete LPIPS mean


def test_png_helpers(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    paths = [tmp_path / f"{i:06d}.png" for i in range(3)]
    for image, path in zip(images, paths):
        save_png_atomic(path, image)
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temp files left
    np.testing.assert_array_equal(read_png_images(paths[::-1]), images[::-1])
    Image.fromarray(images[0][:4]).save(paths[1])
    with pytest.raises(ValueError, match="one size"):
        read_png_images(paths)
