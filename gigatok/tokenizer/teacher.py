"""Frozen DINOv2 teacher for semantic regularisation (`trainer.distill_loss`, `trainer.distill_model`).

The official trainer loads `torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14')`, drops the head and
resamples the positional embedding to 16 x 16 with timm's `resample_abs_pos_embed`. Here the same network is built
with timm (`vit_base_patch14_dinov2` family; no hub code is executed) and its weights are loaded from local files:

1. an explicit `weights_path` (hub `.pth` or timm `.safetensors`);
2. the torch-hub cache: `$TORCH_HOME/hub/checkpoints/dinov2_vit{s,b,l}14_pretrain.pth`;
3. the Hugging Face cache: timm's `timm/vit_{small,base,large}_patch14_dinov2.lvd142m`, offline lookup only.

A missing file is a `TeacherWeightsError` that lists every place looked. `random_init=True` builds a randomly
initialised teacher for tests (logged loudly).

Features: images in [-1, 1] -> (x + 1) / 2 -> ImageNet normalisation -> bicubic resize to 14 * G -> ViT ->
final LayerNorm -> patch tokens (`x_norm_patchtokens`), (B, G * G, Dt) float32, raster order. G = 16 (224 px input)
matches the 16 x 16 latent grid of the released 256 px tokenizers; tiny test configs use their own grid.

Shape letters: B batch; H, W height and width of an image or feature map; G latent grid side (G*G 2D tokens);
P patch tokens of a ViT; Dt teacher width. The teacher's patch grid is sized to the tokenizer's latent grid, so
P = G*G.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import TEACHER_DIMS
from gigatok.errors import UserError
from gigatok.tokenizer.discriminator_dino import (
    create_vit,
    find_local_weights,
    read_state_dict,
)

logger = logging.getLogger(__name__)

PATCH_SIZE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# distill_model -> (timm architecture, torch-hub checkpoint file, Hugging Face repo of timm's weights)
DINOV2_TEACHERS: dict[str, tuple[str, str, str]] = {
    "dinov2-vit-s": ("vit_small_patch14_dinov2", "dinov2_vits14_pretrain.pth", "timm/vit_small_patch14_dinov2.lvd142m"),
    "dinov2-vit-b": ("vit_base_patch14_dinov2", "dinov2_vitb14_pretrain.pth", "timm/vit_base_patch14_dinov2.lvd142m"),
    "dinov2-vit-l": ("vit_large_patch14_dinov2", "dinov2_vitl14_pretrain.pth",
                     "timm/vit_large_patch14_dinov2.lvd142m"),
}


class TeacherWeightsError(UserError, FileNotFoundError):
    """The teacher's weights are not on disk; the message lists every place looked and how to get them."""


def _check_name(name: str) -> None:
    if name in DINOV2_TEACHERS:
        return
    if name in TEACHER_DIMS:
        raise ValueError(f"trainer.distill_model '{name}' (an official paper ablation) is not supported by this "
                         f"re-implementation; supported teachers: {sorted(DINOV2_TEACHERS)}")
    raise ValueError(f"unknown trainer.distill_model '{name}'; supported teachers: {sorted(DINOV2_TEACHERS)}")


def find_teacher_weights(name: str, path: str | os.PathLike | None = None) -> Path:
    """Resolve the weights file of DINOv2 teacher `name`, or raise `TeacherWeightsError` naming every place looked."""
    _check_name(name)
    _, hub_name, hf_repo = DINOV2_TEACHERS[name]
    found, looked = find_local_weights(path, hub_name, hf_repo, TeacherWeightsError, f"teacher '{name}' weights")
    if found is not None:
        return found
    hub_file, hf_note = looked
    arch = hub_name.split("_pretrain")[0]  # e.g. dinov2_vitb14
    url = f"https://dl.fbaipublicfiles.com/dinov2/{arch}/{hub_name}"
    raise TeacherWeightsError(
        f"Semantic regularisation (trainer.distill_loss: True) needs the '{name}' teacher weights. Looked in:\n"
        f"  - {hub_file}\n"
        f"  - {hf_note}\n"
        "Get them on a machine with internet access with either\n"
        f"  python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\"\n"
        f"  huggingface-cli download {hf_repo}\n"
        "and copy the cache to this machine (set TORCH_HOME / HF_HOME to it), or pass the file explicitly. "
        "To train without the teacher set trainer.distill_loss: False."
    )


class DinoV2Teacher(nn.Module):
    """Frozen DINOv2: `teacher(images)` -> (B, G*G, Dt) float32 normalised patch tokens, without gradients.

    Args:
        name: one of "dinov2-vit-s" (384-d), "dinov2-vit-b" (768-d, the official default), "dinov2-vit-l" (1024-d).
        grid_size: G, the token grid side; the input is resized to 14 * G pixels and the positional embedding
            resampled to G x G (official: 16).
        weights_path: explicit weights file (see module docstring for the lookup order).
        random_init: random weights for tests (seeded, loud warning); never for training.
    """

    def __init__(self, name: str = "dinov2-vit-b", grid_size: int = 16, weights_path: str | os.PathLike | None = None,
                 random_init: bool = False) -> None:
        super().__init__()
        _check_name(name)
        if grid_size < 1:
            raise ValueError(f"teacher grid_size must be positive, got {grid_size}")
        self.name, self.grid_size = name, grid_size
        self.img_size = PATCH_SIZE * grid_size
        arch = DINOV2_TEACHERS[name][0]
        self.vit = create_vit(arch, random_init, img_size=self.img_size)
        self.embed_dim = self.vit.embed_dim
        if self.embed_dim != TEACHER_DIMS[name]:
            raise AssertionError(f"timm {arch} width {self.embed_dim} != TEACHER_DIMS[{name!r}]")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if random_init:
            logger.warning("!" * 100 + f"\n!!! semantic teacher '{name}' has RANDOM weights (random_init=True): the "
                           "semantic loss is MEANINGLESS, for tests only !!!\n" + "!" * 100)
        else:
            self._load(find_teacher_weights(name, weights_path))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        from timm.layers import resample_abs_pos_embed

        # mask_token is DINOv2's iBOT masking token (training only); timm has no slot for it.
        state = {k: v for k, v in read_state_dict(path).items() if k != "mask_token" and not k.startswith("head.")}
        if "pos_embed" in state and state["pos_embed"].shape != self.vit.pos_embed.shape:
            # Same call as the official trainer: bicubic (antialiased) resampling of the 37 x 37 table, cls kept.
            state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"].float(), [self.grid_size, self.grid_size],
                                                        num_prefix_tokens=1)
        missing, unexpected = self.vit.load_state_dict(state, strict=False)
        if missing or unexpected:  # strict: create_vit left the weights uninitialised
            raise TeacherWeightsError(f"'{path}' is not a {self.name} state dict: missing keys {missing[:8]}, "
                                      f"unexpected keys {unexpected[:8]}")
        logger.info(f"semantic teacher {self.name}: loaded {path} (positional embedding at {self.grid_size}^2)")

    def train(self, mode: bool = True) -> DinoV2Teacher:
        return super().train(False)  # frozen: never switch to train mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, G*G, Dt) float32 (runs under the caller's autocast, as the official)."""
        with torch.autocast(device_type=images.device.type, enabled=False):
            # Official order: normalise first, then resize (REPA-style preprocessing).
            x = ((images.float() + 1) / 2 - self.mean) / self.std
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic")  # (B, 3, 14G, 14G)
        tokens = self.vit.forward_features(x)  # (B, 1 + G*G, Dt), after the final LayerNorm
        return tokens[:, self.vit.num_prefix_tokens:].float()  # drop cls -> (B, G*G, Dt)
