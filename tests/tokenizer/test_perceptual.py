"""LPIPS-VGG16: numerical parity with the `lpips` package, weight loading, errors, frozen-ness.

Offline trick: `lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True)` has the real lin-layer weights on a
random VGG16 backbone; we load that same backbone into ours (directly, and as a torchvision-format file in a fake
torch-hub cache) and compare.
"""
from __future__ import annotations

import logging
import warnings

import pytest
import torch
from helpers import WarningRecords

from gigatok.tokenizer.perceptual import (
    LPIPS,
    VGG16_FILENAME,
    LPIPSWeightsError,
    default_vgg16_path,
)

lpips = pytest.importorskip("lpips")


@pytest.fixture(scope="module")
def reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation warning inside lpips
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    # lpips keys look like `slice2.5.weight`: the number is the index in torchvision's `features`
    features = {f"features.{k.split('.', 1)[1]}": v for k, v in model.net.state_dict().items()}
    return model.eval(), features


def _pair(batch: int = 3, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    b = (a + 0.4 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    return a, b


def test_parity_with_lpips_package_via_torch_hub_cache(reference, tmp_path, monkeypatch):
    model, features = reference
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_vgg16_path() == tmp_path / "hub" / "checkpoints" / VGG16_FILENAME
    default_vgg16_path().parent.mkdir(parents=True)
    torch.save(features, default_vgg16_path())  # torchvision layout: features.{i}.weight/bias
    ours = LPIPS()
    a, b = _pair()
    with torch.no_grad():
        expected = model(a, b).flatten()  # (B, 1, 1, 1) -> (B,)
        got = ours(a, b)
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(got > 0)
    assert torch.allclose(ours(a, a), torch.zeros(3))


def test_random_backbone_is_explicit_seeded_and_loud(reference):
    # A handler on the module logger itself: the `gigatok` logger may not propagate to pytest's root handler.
    handler, logger = WarningRecords(), logging.getLogger("gigatok.tokenizer.perceptual")
    logger.addHandler(handler)
    try:
        one, two = LPIPS(random_backbone=True), LPIPS(random_backbone=True)
    finally:
        logger.removeHandler(handler)
    assert len(handler.messages) == 2 and "MEANINGLESS" in handler.messages[0]
    a, b = _pair(batch=2, size=32, seed=1)
    torch.testing.assert_close(one(a, b), two(a, b))  # same seed on every rank / run
    # loading the reference backbone into the random-backbone module also gives parity
    model, features = reference
    one.features.load_state_dict({k[len("features."):]: v for k, v in features.items()})
    with torch.no_grad():
        torch.testing.assert_close(one(a, b), model(a, b).flatten(), rtol=1e-5, atol=1e-6)


def test_missing_vgg_weights_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LPIPSWeightsError) as info:
        LPIPS()
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "hub" / "checkpoints" / VGG16_FILENAME) in message
    assert "torchvision.models.vgg16(weights='IMAGENET1K_V1')" in message
    with pytest.raises(LPIPSWeightsError, match="nowhere.pth"):
        LPIPS(vgg_path=tmp_path / "nowhere.pth")


def test_frozen_but_differentiable_wrt_inputs():
    model = LPIPS(random_backbone=True)
    model.train()
    assert not model.training and all(not m.training for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())
    a, b = _pair(batch=2, size=32, seed=2)
    a.requires_grad_(True)
    model(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
