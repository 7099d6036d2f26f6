"""DINO discriminator (`disc_type: dinodisc`): a frozen self-supervised DINO ViT-S/16 with five trainable heads.

Architecture (official `DinoDisc(norm_type="bn")`, from VAR/ImageFolder):
- backbone: DINO ViT-S/16 (384 wide, 12 blocks, 6 heads, LayerNorm eps 1e-6, tanh-approximated GELU as the
  official re-implementation), built with timm and frozen. Like the official code it is held outside the module
  tree, so it is not in `state_dict()`, `parameters()` or DDP; only `heads.*` are saved and trained.
- input: images in [-1, 1] -> ImageNet-normalised; 224 x 224 input is used as is; larger images are randomly
  cropped to 224 with probability 0.5, else area-resized; smaller ones are bicubically resized.
- taps: the tokens after patch embedding + positional embedding, and after blocks 2, 5, 8 and 11; each tap is
  read out as patch tokens + cls token, (B, 384, 196) = (B, D, P).
- heads, one per tap: [SN-Conv1d k1 + BatchNormLocal + LeakyReLU(0.2)] -> residual [SN-Conv1d k9 circular +
  BatchNormLocal + LeakyReLU(0.2)] scaled by 1/sqrt(2) -> SN-Conv1d 384 -> 1. SN = spectral norm (one power
  iteration). Output: the five (B, 196) logit maps concatenated, (B, 980).

Backbone weights (nothing is downloaded here), first found wins:
1. an explicit `weights_path` (the official `dino_deitsmall16_pretrain.pth` or a timm `.safetensors`);
2. the torch-hub cache: `$TORCH_HOME/hub/checkpoints/dino_deitsmall16_pretrain.pth`;
3. the Hugging Face cache: timm's `timm/vit_small_patch16_224.dino` (`model.safetensors`), offline lookup only.
`random_init=True` builds a randomly initialised backbone instead (tests only; logged loudly).

Shape letters: B batch; H, W height and width of an image or feature map; D width; P patch tokens of a ViT. Here
D = 384 (the backbone width) and P = 196 (14 x 14 patches of the 224 px input).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.errors import UserError

logger = logging.getLogger(__name__)

DINO_FILENAME = "dino_deitsmall16_pretrain.pth"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
DINO_HF_REPO = "timm/vit_small_patch16_224.dino"
KEY_DEPTHS = (2, 5, 8, 11)  # blocks whose outputs feed a head (plus the pre-block tokens)
IMG_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoWeightsError(UserError, FileNotFoundError):
    """The DINO ViT-S/16 weights are not on disk; the message lists every place looked and how to get them."""


def hf_cached_file(repo_id: str, filenames: tuple[str, ...]) -> tuple[Path | None, str]:
    """First of `filenames` present in the local Hugging Face cache for `repo_id`, and a description of the lookup."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None, f"Hugging Face cache: skipped, huggingface_hub is not installed ({repo_id})"
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=True)), ""
        except Exception:  # not cached (LocalEntryNotFoundError and friends): try the next file
            continue
    return None, f"Hugging Face cache: {repo_id} ({' or '.join(filenames)}), not cached"


def find_local_weights(path: str | os.PathLike | None, hub_filename: str, hf_repo: str,
                       error: type[Exception], what: str) -> tuple[Path | None, list[str]]:
    """The shared lookup order of pretrained weights: an explicit path (missing: `error`), else the torch-hub cache
    file `hub_filename`, else the local Hugging Face cache of `hf_repo`. Returns (file or None, places looked)."""
    if path is not None:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise error(f"{what} not found at the given path '{resolved}'.")
        return resolved, []
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / hub_filename
    if hub_file.is_file():
        return hub_file, []
    hf_file, hf_note = hf_cached_file(hf_repo, ("model.safetensors", "pytorch_model.bin"))
    return hf_file, [f"torch-hub cache: {hub_file} (missing)", hf_note]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch pickle of a plain state dict (loaded with weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "teacher"):  # tolerate a wrapped state dict
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def find_dino_weights(path: str | os.PathLike | None = None) -> Path:
    """Resolve the DINO ViT-S/16 weights, or raise `DinoWeightsError` naming every place looked."""
    found, looked = find_local_weights(path, DINO_FILENAME, DINO_HF_REPO, DinoWeightsError,
                                       "DINO discriminator weights")
    if found is not None:
        return found
    hub_file, hf_note = looked
    raise DinoWeightsError(
        "The DINO discriminator (disc_type: dinodisc) needs the DINO ViT-S/16 weights. Looked in:\n"
        f"  - {hub_file}\n"
        f"  - {hf_note}\n"
        "Get them on a machine with internet access with either\n"
        f"  python -c \"import torch; torch.hub.load_state_dict_from_url('{DINO_URL}')\"\n"
        f"  huggingface-cli download {DINO_HF_REPO}\n"
        "and copy the cache to this machine (or pass the file explicitly as the DINO weights path)."
    )


def create_vit(arch: str, random_init: bool, **kwargs) -> nn.Module:
    """A timm ViT without timm's slow random init (seconds for ViT-B on CPU): built on the meta device, then
    materialised; weights must then be loaded (strictly), or with `random_init` filled with a seeded cheap init
    (N(0, 0.02) matrices and tables, unit norms, zero biases, LayerScale 1e-5), identical on every rank."""
    import timm

    with torch.device("meta"):
        vit = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    vit.to_empty(device="cpu")
    if random_init:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in vit.named_parameters():
                if name.endswith(".gamma"):
                    param.fill_(1e-5)
                elif param.ndim >= 2 or name in ("cls_token", "pos_embed"):
                    param.normal_(0.0, 0.02, generator=generator)
                elif "norm" in name and name.endswith(".weight"):
                    param.fill_(1.0)
                else:
                    param.zero_()
    return vit


class FrozenDinoBackbone(nn.Module):
    """Frozen DINO ViT-S/16 returning the five tapped activations, each (B, D, P) float32.

    Args:
        weights_path: explicit weights file (see module docstring for the lookup order).
        random_init: skip loading and use a seeded random init (see `create_vit`); for tests only.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, random_init: bool = False) -> None:
        super().__init__()
        # gelu_tanh: the official frozen DINO re-implementation uses the tanh approximation of GELU.
        self.vit = create_vit("vit_small_patch16_224", random_init, act_layer="gelu_tanh")
        # x in [-1, 1] -> ((x + 1) / 2 - mean) / std == x * (0.5 / std) + (0.5 - mean) / std
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("x_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        if random_init:
            logger.warning("!" * 100 + "\n!!! DINO discriminator uses a RANDOM ViT-S/16 backbone (random_init=True): "
                           "adversarial training is MEANINGLESS, for tests only !!!\n" + "!" * 100)
        else:
            self._load(find_dino_weights(weights_path))
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(("head.", "fc_norm."))}
        for key, value in state.items():
            if key.endswith(".attn.qkv.bias"):
                # Zero the key bias, as the official code (softmax is invariant to it; kept for identical numerics).
                width = value.numel() // 3
                state[key] = value.clone()
                state[key][width:2 * width] = 0
        missing, unexpected = self.vit.load_state_dict(state, strict=False)
        if missing or unexpected:  # strict: create_vit left the weights uninitialised
            raise DinoWeightsError(f"'{path}' is not a DINO ViT-S/16 state dict: missing keys {missing[:8]}, "
                                   f"unexpected keys {unexpected[:8]}")

    def train(self, mode: bool = True) -> FrozenDinoBackbone:
        return super().train(False)  # frozen: never switch to train mode

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, 224, 224): random crop (p = 0.5, one offset per batch) when larger, else resize."""
        h, w = x.shape[-2:]
        if h > IMG_SIZE and w > IMG_SIZE and torch.rand(()).item() <= 0.5:
            top = int(torch.randint(0, h - IMG_SIZE + 1, ()).item())
            left = int(torch.randint(0, w - IMG_SIZE + 1, ()).item())
            return x[..., top:top + IMG_SIZE, left:left + IMG_SIZE]
        return F.interpolate(x, size=(IMG_SIZE, IMG_SIZE), mode="area" if h > IMG_SIZE else "bicubic")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> five (B, D, P) float32 activations (cls token added to every patch token)."""
        device_type = images.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            x = self._resize(images.float() * self.x_scale + self.x_shift)  # (B, 3, 224, 224)
        x = self.vit.patch_embed(x)  # (B, P, D), under the caller's autocast
        with torch.autocast(device_type=device_type, enabled=False):
            x = torch.cat([self.vit.cls_token.expand(x.shape[0], -1, -1), x.float()], dim=1) + self.vit.pos_embed
            activations = [(x[:, 1:] + x[:, :1]).transpose(1, 2)]  # (B, 1+P, D) -> (B, D, P)
        for i, block in enumerate(self.vit.blocks):
            x = block(x)
            if i in KEY_DEPTHS:
                activations.append((x[:, 1:].float() + x[:, :1].float()).transpose(1, 2))  # (B, D, P)
            if i >= KEY_DEPTHS[-1]:
                break  # later blocks (none for ViT-S) and the final norm are unused
        return activations


class BatchNormLocal(nn.Module):
    """Batch norm over "virtual batches": statistics per group of about `virtual_bs` images (no running stats).

    Input (B, D, P) is split into ceil(B / virtual_bs) groups along the batch; each group is normalised with its
    own per-channel mean and (biased) variance over images and tokens, in float32.
    """

    def __init__(self, num_features: int, affine: bool = True, virtual_bs: int = 8, eps: float = 1e-6) -> None:
        super().__init__()
        self.virtual_bs, self.eps, self.affine = virtual_bs, eps, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, P) any float dtype -> (B, D, P) float32."""
        groups = math.ceil(x.shape[0] / self.virtual_bs)
        # tensor_split equals the official view(groups, -1, D, P) when B % groups == 0 and handles other batch sizes.
        out = []
        for chunk in torch.tensor_split(x.float(), groups, dim=0):  # each (about B / groups, D, P)
            mean = chunk.mean(dim=(0, 2), keepdim=True)  # (1, D, 1)
            var = chunk.var(dim=(0, 2), keepdim=True, unbiased=False)
            out.append((chunk - mean) / torch.sqrt(var + self.eps))
        x = torch.cat(out, dim=0)
        if self.affine:
            x = x * self.weight[None, :, None] + self.bias[None, :, None]
        return x


class ResidualBlock(nn.Module):
    """(fn(x) + x) / sqrt(2): keeps the activation scale of the residual sum."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.ratio = 1 / math.sqrt(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) * self.ratio


def spectral_conv1d(in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                    padding_mode: str = "zeros") -> nn.Conv1d:
    """Conv1d with spectral normalisation (one power iteration; keys weight_orig / weight_u / weight_v / bias)."""
    conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding, padding_mode=padding_mode)
    return nn.utils.spectral_norm(conv, n_power_iterations=1, dim=0, eps=1e-12)


def _head_block(channels: int, kernel_size: int, eps: float) -> nn.Sequential:
    """SN-Conv1d (circular padding keeps P) + BatchNormLocal + LeakyReLU(0.2); keys `0.*`, `1.*`."""
    return nn.Sequential(
        spectral_conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular"),
        BatchNormLocal(channels, eps=eps),
        nn.LeakyReLU(0.2, inplace=True),
    )


class DinoDisc(nn.Module):
    """Frozen-DINO critic: (B, 3, H, W) in [-1, 1] -> (B, 5 * 196) float32 logits.

    Args:
        weights_path: DINO ViT-S/16 weights file (default: look in the torch-hub and Hugging Face caches).
        random_init: random backbone for tests (loud warning); never for training.
        ks: kernel size of the residual head conv.
        norm_eps: epsilon of BatchNormLocal.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, random_init: bool = False, ks: int = 9,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        backbone = FrozenDinoBackbone(weights_path, random_init)
        # A tuple hides the frozen backbone from state_dict / parameters / DDP / .to(); see `backbone`.
        self._backbone = (backbone,)
        width = backbone.vit.embed_dim
        self.heads = nn.ModuleList(
            nn.Sequential(
                _head_block(width, 1, norm_eps),
                ResidualBlock(_head_block(width, ks, norm_eps)),
                spectral_conv1d(width, 1, 1),  # one logit per token
            )
            for _ in range(len(KEY_DEPTHS) + 1)  # +1: the tap before the first block
        )

    def backbone(self, device: torch.device) -> FrozenDinoBackbone:
        """The frozen backbone, moved to `device` on first use there (it does not follow `.to()` of this module)."""
        module = self._backbone[0]
        if module.x_scale.device != device:
            module.to(device)
        return module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 980) logits; gradients flow to `images` and the heads."""
        activations = self.backbone(images.device)(images)
        b = images.shape[0]
        return torch.cat([head(act).view(b, -1) for head, act in zip(self.heads, activations)], dim=1)  # 5 x (B, P)
