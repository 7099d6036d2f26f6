"""Discriminators and DiffAug: official keys, shapes and parameter counts, weight lookup, determinism."""
from __future__ import annotations

import pytest
import torch

from gigatok.tokenizer.diffaug import DiffAug
from gigatok.tokenizer.discriminator import NLayerDiscriminator
from gigatok.tokenizer.discriminator_dino import (
    DINO_FILENAME,
    DINO_HF_REPO,
    BatchNormLocal,
    DinoDisc,
    DinoWeightsError,
    create_vit,
    find_dino_weights,
)


# -- PatchGAN ---------------------------------------------------------------------------------------------------------
def test_patchgan_official_keys_shapes_and_count():
    disc = NLayerDiscriminator()  # ndf 64, 3 layers, kw 4: the released setting
    shapes = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    bn = lambda i, c: {f"main.{i}.weight": (c,), f"main.{i}.bias": (c,), f"main.{i}.running_mean": (c,),  # noqa: E731
                       f"main.{i}.running_var": (c,), f"main.{i}.num_batches_tracked": ()}
    expected = {
        "main.0.weight": (64, 3, 4, 4), "main.0.bias": (64,),
        "main.2.weight": (128, 64, 4, 4), **bn(3, 128),
        "main.5.weight": (256, 128, 4, 4), **bn(6, 256),
        "main.8.weight": (512, 256, 4, 4), **bn(9, 512),
        "main.11.weight": (1, 512, 4, 4), "main.11.bias": (1,),
    }
    assert shapes == expected
    assert sum(p.numel() for p in disc.parameters()) == 2_765_633
    assert isinstance(disc.main[3], torch.nn.BatchNorm2d) and not isinstance(disc.main[3], torch.nn.SyncBatchNorm)
    with torch.no_grad():
        logits = disc.eval()(torch.zeros(1, 3, 256, 256))
    assert logits.shape == (1, 1, 30, 30)


def test_patchgan_init_and_debug_size():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(ndf=16)
    conv = disc.main[8].weight  # 64 -> 128 channels, 4x4: 131k samples
    assert abs(conv.std().item() - 0.02) < 1e-3 and abs(conv.mean().item()) < 1e-3
    assert abs(disc.main[9].weight.mean().item() - 1.0) < 0.01 and torch.all(disc.main[9].bias == 0)
    logits = disc(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2
    with pytest.raises(ValueError, match="batch"):
        NLayerDiscriminator(norm="group")


# -- DINO discriminator -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dino_disc():
    torch.manual_seed(0)
    return DinoDisc(random_init=True)


def test_dino_disc_state_dict_holds_only_heads(dino_disc):
    keys = list(dino_disc.state_dict())
    assert keys and all(k.startswith("heads.") for k in keys)
    for i in range(5):  # 5 taps: pre-blocks + blocks 2, 5, 8, 11
        for key in (f"heads.{i}.0.0.weight_orig", f"heads.{i}.0.0.weight_u", f"heads.{i}.0.0.weight_v",
                    f"heads.{i}.0.0.bias", f"heads.{i}.0.1.weight", f"heads.{i}.0.1.bias",
                    f"heads.{i}.1.fn.0.weight_orig", f"heads.{i}.1.fn.1.weight", f"heads.{i}.2.weight_orig",
                    f"heads.{i}.2.bias"):
            assert key in keys, key
    assert dino_disc.state_dict()["heads.0.1.fn.0.weight_orig"].shape == (384, 384, 9)
    assert "heads.5.0.0.bias" not in keys
    # Official trainable size: 7.39M, all of it in the heads; the backbone is in no parameter list.
    assert sum(p.numel() for p in dino_disc.parameters()) == 7_386_245
    assert all(p.requires_grad for p in dino_disc.parameters())
    backbone = dino_disc.backbone(torch.device("cpu"))
    assert not any(p.requires_grad for p in backbone.parameters())
    dino_disc.train()
    assert not backbone.training  # frozen backbone stays in eval mode
    DinoDisc.load_state_dict(dino_disc, dino_disc.state_dict(), strict=True)


def test_dino_disc_forward_and_gradients(dino_disc):
    images = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)  # resized to 224 inside
    logits = dino_disc.train()(images)
    assert logits.shape == (1, 5 * 196) and logits.dtype == torch.float32
    logits.mean().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert dino_disc.heads[0][2].weight_orig.grad is not None
    assert all(p.grad is None for p in dino_disc.backbone(torch.device("cpu")).parameters())
    dino_disc.zero_grad(set_to_none=True)


def test_dino_weights_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(DinoWeightsError) as err:
        find_dino_weights()
    message = str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / DINO_FILENAME) in message
    assert DINO_HF_REPO in message and "load_state_dict_from_url" in message
    with pytest.raises(DinoWeightsError, match="nowhere.pth"):
        DinoDisc(weights_path=tmp_path / "nowhere.pth")


def test_dino_weights_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = create_vit("vit_small_patch16_224", random_init=True)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in source.state_dict().items()}  # non-trivial qkv bias
    path = tmp_path / "hub" / "checkpoints" / DINO_FILENAME
    path.parent.mkdir(parents=True)
    torch.save(state, path)  # the official file is a plain state dict with these timm-compatible keys
    assert find_dino_weights() == path
    loaded = DinoDisc().backbone(torch.device("cpu")).vit.state_dict()
    bias = loaded["blocks.3.attn.qkv.bias"]
    assert torch.all(bias[384:768] == 0)  # key bias zeroed, as the official loader
    torch.testing.assert_close(bias[:384], state["blocks.3.attn.qkv.bias"][:384])
    torch.testing.assert_close(loaded["blocks.3.mlp.fc1.weight"], state["blocks.3.mlp.fc1.weight"])


def test_batchnorm_local_uses_virtual_batches():
    norm = BatchNormLocal(4, virtual_bs=8)
    x = torch.randn(12, 4, 5) * 3 + 1  # ceil(12 / 8) = 2 groups of 6 images (official view semantics)
    out = norm(x)
    for rows in (slice(0, 6), slice(6, 12)):
        group = x[rows]
        mean = group.mean(dim=(0, 2), keepdim=True)
        var = group.var(dim=(0, 2), keepdim=True, unbiased=False)
        torch.testing.assert_close(out[rows], (group - mean) / torch.sqrt(var + 1e-6))


# -- DiffAug ---------------------------------------------------------------------------------------------------------
def test_diffaug_deterministic_under_generator_and_differentiable():
    daug = DiffAug(prob=1.0, cutout=0.2)
    images = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    a = daug(images, generator=torch.Generator().manual_seed(1))
    b = daug(images, generator=torch.Generator().manual_seed(1))
    c = daug(images, generator=torch.Generator().manual_seed(2))
    assert a.shape == images.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert torch.equal(DiffAug(prob=0.0)(images.detach()), images.detach())


def test_diffaug_cutout_and_translation_geometry():
    # On a constant one-channel image, colour jitter maps every pixel through the same affine function, so only
    # three values can remain: the image, the zero border shifted in by the translation, and the exact-zero cutout.
    images = torch.ones(64, 1, 40, 40)
    out = DiffAug(prob=1.0, cutout=0.2)(images, generator=torch.Generator().manual_seed(0))
    for img in out[:, 0]:
        assert len(img.unique()) <= 3
        values, counts = img.unique(return_counts=True)
        value = values[counts.argmax()]  # the (jittered) image value covers most pixels
        border = ((img != value) & (img != 0)).sum()
        assert border <= 5 * 40 * 2  # shifts of at most round(0.125 * 40) = 5 rows and 5 columns
    zeros = (out == 0).flatten(1).sum(1)  # the cutout: an 8x8 square (0.2 * 40), clipped at the borders
    assert (zeros > 0).all() and zeros.max() <= 64
