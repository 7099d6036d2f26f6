"""Inputs, weights and cases of the tokenizer-loss parity vectors (`loss_vectors.npz`), shared by the script that
made them (`make_loss_vectors.py`, which ran the official `VQLoss`) and `tests/tokenizer/test_loss_parity.py`.

Everything here is deterministic and implementation-independent: tensors come from seeded CPU generators and the
procedural weight rule of `procedural.py`, keyed by the OFFICIAL state_dict names (our LPIPS names differ and are
mapped with `official_lpips_key`). Nothing is downloaded and no official code is imported.

Randomness inside the losses: LPIPS dropout (official trainer mode, see `losses.py`) draws from the global RNG,
reseeded with `step_seed(case, step)` before every generator call; each DiffAug call of the DINO discriminator draws
from its own generator seeded with `daug_seed(case, k)` (k counts the DiffAug calls of a case), so that the
augmentation does not depend on how many numbers other code drew before it.

Shape letters: B batch; H, W image height and width; G latent grid side (G*G tokens); Dt teacher width.
"""
from __future__ import annotations

import math

import torch
from procedural import procedural_tensor

B, SIZE = 2, 32  # images (B, 3, SIZE, SIZE)
GRID, TEACHER = 16, "dinov2-vit-s"  # the official teacher input is always 224 px -> a 16 x 16 token grid
TEACHER_DIM = 384

_COMMON = dict(disc_weight=0.5, disc_type="patchgan", disc_loss="hinge", gen_adv_loss="hinge", disc_dim=64,
               disc_num_layers=3, kw=4, norm="batch", perceptual_weight=1.0, reconstruction_weight=1.0,
               reconstruction_loss="l2", codebook_weight=1.0, use_direct_rec_loss=True, lecam=False,
               lecam_weight=0.001, proj_weight=0.5, disc_adaptive_weight=False, entropy_loss_end=None)

# name -> (loss.params overrides, 1-indexed steps run in order on one loss object, semantic loss on?)
CASES: dict[str, tuple[dict, list[int], bool]] = {
    # The released recipe (VQ_SS256 ... VQ_BL256): shortcut losses until aux_loss_end, then the hinge GAN.
    "patchgan_hinge": (dict(disc_start=4, aux_loss_end=3), [1, 3, 4, 5], True),
    # LeCam (EMA copies until disc_start + 1000, then decay 0.99) and the end of the entropy loss.
    "patchgan_lecam_entropy": (dict(disc_start=4, aux_loss_end=3, lecam=True, lecam_weight=0.1, entropy_loss_end=5),
                               [2, 4, 5, 1004, 1005], True),
    # GAN on while the shortcut losses are still on: direct GAN terms, and LeCam's EMA updated twice per D step.
    "patchgan_direct_lecam": (dict(disc_start=2, aux_loss_end=4, lecam=True, lecam_weight=0.1), [1, 2, 3, 4], True),
    # Non-saturating generator loss (official argument order); the official D step crashes with it.
    "patchgan_nonsat": (dict(disc_start=4, aux_loss_end=3, gen_adv_loss="non-saturating",
                             disc_loss="non-saturating"), [3, 4], True),
    # VQGAN's adaptive weight at the last layer (official: crashes before disc_start, so steps >= disc_start only).
    "patchgan_adaptive": (dict(disc_start=2, aux_loss_end=4, disc_adaptive_weight=True), [2, 3, 5], True),
    # VQ_BL256_dino_disc, without the semantic loss.
    "dino_hinge": (dict(disc_type="dinodisc", disc_start=4, aux_loss_end=3), [3, 4], False),
    # DINO critic with the shortcut losses on: the official code scores the main reconstruction twice.
    "dino_direct_lecam": (dict(disc_type="dinodisc", disc_start=2, aux_loss_end=4, lecam=True, lecam_weight=0.1),
                          [3], False),
}


def case_params(name: str) -> dict:
    """The full `loss.params` of a case (official `VQLoss` keyword arguments, also our `LossParams` fields)."""
    return {**_COMMON, **CASES[name][0]}


def step_seed(case: str, step: int) -> int:
    return 1000 * list(CASES).index(case) + step


def daug_seed(case: str, k: int) -> int:
    return 10_000 + 100 * list(CASES).index(case) + k


def make_inputs() -> dict[str, torch.Tensor]:
    """Images, the pre-last-layer features of the two reconstructions, their per-step drift and the last layer (the
    distill features are `distill_features` of the teacher's tokens)."""
    g = torch.Generator().manual_seed(1234)
    images = torch.rand(B, 3, SIZE, SIZE, generator=g) * 2 - 1
    base = images + 0.3 * torch.randn(B, 3, SIZE, SIZE, generator=g)
    base_direct = images + 0.5 * torch.randn(B, 3, SIZE, SIZE, generator=g)
    last_layer = 0.1 * torch.randn(3, 3, 3, 3, generator=g)  # a 3x3 conv close to the identity
    last_layer[:, :, 1, 1] += torch.eye(3)
    drift = torch.randn(B, 3, SIZE, SIZE, generator=g)  # per-step change of both reconstructions
    return {"images": images, "base": base, "base_direct": base_direct, "last_layer": last_layer, "drift": drift}


def reconstructions(inputs: dict[str, torch.Tensor], last_layer: torch.Tensor,
                    step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(recon, recon_direct) at `step`, each (B, 3, H, W): both go through `last_layer` (the decoder's last conv).
    They change from step to step, so that LeCam's EMA of the fake logits has something to average."""
    conv, drift = torch.nn.functional.conv2d, 0.3 * (step % 5) * inputs["drift"]
    return (conv(inputs["base"] + drift, last_layer, padding=1),
            conv(inputs["base_direct"] + drift, last_layer, padding=1))


def quantizer_terms(step: int) -> dict[str, torch.Tensor]:
    """Per-step quantizer losses (vq, commit, entropy), codebook usage and feature reconstruction loss."""
    g = torch.Generator().manual_seed(77 + step)
    vq, commit, fea_rec = (0.05 + 0.1 * torch.rand((), generator=g) for _ in range(3))
    entropy = -0.01 * torch.rand((), generator=g)
    return {"vq": vq, "commit": commit, "entropy": entropy, "usage": torch.tensor(0.25 + 0.01 * step),
            "fea_rec": fea_rec}


def gan_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """(logits_real, logits_fake), each (B, 1, 4, 4), for the GAN-loss function vectors."""
    g = torch.Generator().manual_seed(99)
    return 1.5 * torch.randn(B, 1, 4, 4, generator=g), 1.5 * torch.randn(B, 1, 4, 4, generator=g) - 0.5


# -- procedural weights under the official names ------------------------------------------------------------------
_LPIPS_SLICE_ENDS = (4, 9, 16, 23, 30)  # VGG16 `features` indices of slice1 ... slice5 (official LPIPS `vgg16`)


def official_lpips_key(ours: str) -> str:
    """Our LPIPS state key -> the official one: features.{i}.* -> net.slice{n}.{i}.*, lins.{k}.* -> lin{k}.model.1.*"""
    head, index, rest = ours.split(".", 2)
    if head == "lins":
        return f"lin{index}.model.1.{rest}"
    n = next(s for s, end in enumerate(_LPIPS_SLICE_ENDS, start=1) if int(index) < end)
    return f"net.slice{n}.{index}.{rest}"


def lpips_weight(official_key: str, shape: tuple[int, ...]) -> torch.Tensor:
    return procedural_tensor(official_key, shape)


def discriminator_weight(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Procedural, except that norm scales (1-D `.weight`: PatchGAN BatchNorm, DINO-head BatchNormLocal) are
    1 + 0.1 N(0, 1): the plain rule (0.02 N) would shrink the logits to ~0.01 and every hinge loss to ~0.5."""
    t = procedural_tensor(key, shape)
    return 1.0 + 5.0 * t if len(shape) == 1 and key.endswith(".weight") else t


def distill_features(teacher_feats: torch.Tensor) -> torch.Tensor:
    """(B, G*G, Dt) student features: the teacher tokens plus noise of similar norm (cosines around 0.7)."""
    g = torch.Generator().manual_seed(4321)
    noise = torch.randn(teacher_feats.shape, generator=g)
    return teacher_feats + noise * teacher_feats.norm(dim=-1, keepdim=True) / math.sqrt(teacher_feats.shape[-1])


def _vit_shapes(patch: int, tokens: int, depth: int = 12, width: int = TEACHER_DIM,
                layer_scale: bool = False) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a ViT-S (timm / official DINO names); `tokens` counts the cls token."""
    shapes: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, width), "pos_embed": (1, tokens, width),
                                          "patch_embed.proj.weight": (width, 3, patch, patch),
                                          "patch_embed.proj.bias": (width,), "norm.weight": (width,),
                                          "norm.bias": (width,)}
    for i in range(depth):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (width,), p + "norm1.bias": (width,),
                       p + "attn.qkv.weight": (3 * width, width), p + "attn.qkv.bias": (3 * width,),
                       p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,),
                       p + "norm2.weight": (width,), p + "norm2.bias": (width,),
                       p + "mlp.fc1.weight": (4 * width, width), p + "mlp.fc1.bias": (4 * width,),
                       p + "mlp.fc2.weight": (width, 4 * width), p + "mlp.fc2.bias": (width,)})
        if layer_scale:
            shapes.update({p + "ls1.gamma": (width,), p + "ls2.gamma": (width,)})
    return shapes


def dino_backbone_state() -> dict[str, torch.Tensor]:
    """The DINO ViT-S/16 file of the DINO discriminator (`dino_deitsmall16_pretrain.pth` layout, 224 px)."""
    return {k: procedural_tensor("dino/" + k, s) for k, s in _vit_shapes(16, 1 + 14 * 14).items()}


def teacher_state() -> dict[str, torch.Tensor]:
    """The DINOv2 ViT-S/14 hub file of the teacher (`dinov2_vits14_pretrain.pth` layout: 518 px table, mask_token)."""
    shapes = _vit_shapes(14, 1 + 37 * 37, layer_scale=True)
    shapes["mask_token"] = (1, TEACHER_DIM)
    state = {k: procedural_tensor("teacher/" + k, s) for k, s in shapes.items()}
    # Layer scales 0.5 + 0.1 N(0, 1) (the plain rule's 0.02 N would all but switch the residual branches off).
    return {k: 0.5 + 5.0 * v if k.endswith(".gamma") else v for k, v in state.items()}
