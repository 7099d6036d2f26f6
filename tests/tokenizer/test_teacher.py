"""DINOv2 teacher: weight lookup (explicit path, torch-hub cache, Hugging Face cache), errors, preprocessing, frozen."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gigatok.tokenizer.discriminator_dino import create_vit
from gigatok.tokenizer.teacher import (
    DinoV2Teacher,
    TeacherWeightsError,
    find_teacher_weights,
)

hf_constants = pytest.importorskip("huggingface_hub.constants")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the torch-hub and Hugging Face caches at empty folders."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def _hub_style_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A DINOv2 ViT-S/14 state dict as the official hub file stores it: 37x37 (518 px) table plus mask_token."""
    vit = create_vit("vit_small_patch14_dinov2", random_init=True, img_size=518)
    g = torch.Generator().manual_seed(seed)
    state = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 384)
    return state


def test_missing_weights_error_names_every_place(empty_caches):
    with pytest.raises(TeacherWeightsError) as err:
        DinoV2Teacher("dinov2-vit-b")
    message = str(err.value)
    assert str(empty_caches / "torch" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth") in message
    assert "timm/vit_base_patch14_dinov2.lvd142m" in message
    assert "dinov2_vitb14/dinov2_vitb14_pretrain.pth" in message  # download URL
    assert "distill_loss: False" in message
    with pytest.raises(TeacherWeightsError, match="missing.pth"):
        find_teacher_weights("dinov2-vit-s", empty_caches / "missing.pth")


def test_unsupported_teachers_are_named():
    with pytest.raises(ValueError, match="not supported.*dinov2-vit-b"):
        DinoV2Teacher("siglip-sovit-400m", random_init=True)
    with pytest.raises(ValueError, match="unknown trainer.distill_model"):
        DinoV2Teacher("dinov3", random_init=True)


def test_random_teacher_shape_and_frozen(caplog):
    teacher = DinoV2Teacher("dinov2-vit-b", grid_size=16, random_init=True)
    assert "RANDOM" in caplog.text
    assert teacher.vit.pos_embed.shape == (1, 1 + 256, 768)  # resampled table: 16x16 patches of 224 px input
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training
    images = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    feats = teacher(images)
    assert feats.shape == (1, 256, 768) and feats.dtype == torch.float32 and not feats.requires_grad
    assert torch.isfinite(feats).all()


def test_hub_cache_weights_load_with_resampled_pos_embed(empty_caches):
    from timm.layers import resample_abs_pos_embed

    state = _hub_style_state()
    path = empty_caches / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    teacher = DinoV2Teacher("dinov2-vit-s", grid_size=4)
    loaded = teacher.vit.state_dict()
    torch.testing.assert_close(loaded["pos_embed"], resample_abs_pos_embed(state["pos_embed"], [4, 4]))
    torch.testing.assert_close(loaded["blocks.5.attn.qkv.bias"], state["blocks.5.attn.qkv.bias"])
    torch.testing.assert_close(loaded["norm.weight"], state["norm.weight"])


def test_hf_cache_weights_load(empty_caches):
    from safetensors.torch import save_file

    state = _hub_style_state(seed=1)
    del state["mask_token"]  # timm's Hugging Face files have timm keys only
    snapshot = empty_caches / "hf" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    assert find_teacher_weights("dinov2-vit-s") == snapshot / "model.safetensors"
    teacher = DinoV2Teacher("dinov2-vit-s", grid_size=2)
    torch.testing.assert_close(teacher.vit.state_dict()["blocks.0.mlp.fc2.weight"], state["blocks.0.mlp.fc2.weight"])


def test_preprocessing_matches_official_order():
    teacher = DinoV2Teacher("dinov2-vit-s", grid_size=2, random_init=True)
    seen = {}
    handle = teacher.vit.patch_embed.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    images = torch.rand(2, 3, 40, 40) * 2 - 1
    feats = teacher(images)
    handle.remove()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = F.interpolate(((images + 1) / 2 - mean) / std, size=(28, 28), mode="bicubic")
    torch.testing.assert_close(seen["x"], expected)
    # Output: the final-norm patch tokens (cls dropped), raster order.
    with torch.no_grad():
        full = teacher.vit.forward_features(expected)
    torch.testing.assert_close(feats, full[:, 1:])
