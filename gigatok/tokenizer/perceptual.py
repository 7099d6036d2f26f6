"""LPIPS-VGG16 perceptual distance (Zhang et al. 2018, v0.1), used as training loss and reconstruction metric.

distance(a, b) = sum over the five VGG16 taps l (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) of
    spatial_mean( w_l . (n(f_l(a)) - n(f_l(b)))**2 )
where f_l are the features of the scaled input, n normalises each pixel's channel vector to unit length and w_l
is a learned 1x1 projection to one channel (the "lin" layers).

Weights, both loaded from local files (nothing is downloaded here):
- VGG16 ImageNet backbone: torchvision's `vgg16-397923af.pth` from an explicit path, else the torch-hub cache
  (`$TORCH_HOME/hub/checkpoints/`, default `~/.cache/torch/hub/checkpoints/`).
- lin layers: the `lpips` package's bundled `weights/v0.1/vgg.pth` (keys `lin{k}.model.1.weight`); the official
  GigaTok `cache/vgg.pth` is the same file and can be passed as `lin_path`.

Shape letters: B batch; C channels; H, W height and width of an image or feature map. C_l, H_l, W_l are those of
VGG tap l.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn

from gigatok.errors import UserError

logger = logging.getLogger(__name__)

VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1
RANDOM_BACKBONE_ENV = "GIGATOK_LPIPS_RANDOM_BACKBONE"

# VGG16 `features` up to relu5_3 (indices 0..29, as in torchvision): ints are 3x3 conv widths, "M" a 2x2 max-pool.
_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAP_INDICES = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_TAP_CHANNELS = (64, 128, 256, 512, 512)


class LPIPSWeightsError(UserError, FileNotFoundError):
    """A weights file LPIPS needs is not on disk; the message names it and says how to get it."""


def default_vgg16_path() -> Path:
    """Where torchvision caches the VGG16 ImageNet weights (honours TORCH_HOME and XDG_CACHE_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def random_backbone_requested() -> bool:
    """True when the environment opts into a random VGG backbone (tests and offline smoke runs only)."""
    return os.environ.get(RANDOM_BACKBONE_ENV, "").strip().lower() in ("1", "true", "yes")


def find_vgg16_weights(path: str | os.PathLike | None = None) -> Path:
    """Resolve the VGG16 ImageNet weights file, or raise `LPIPSWeightsError` naming the exact file to provide."""
    resolved = Path(path).expanduser() if path is not None else default_vgg16_path()
    if not resolved.is_file():
        raise LPIPSWeightsError(
            f"LPIPS needs the VGG16 ImageNet weights, but '{resolved}' does not exist. On a machine with internet "
            "access run `python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"`, "
            f"then copy ~/.cache/torch/hub/checkpoints/{VGG16_FILENAME} to '{resolved}' (or set TORCH_HOME to "
            "the folder that holds hub/checkpoints/)."
        )
    return resolved


def find_lin_weights(path: str | os.PathLike | None = None) -> Path:
    """Resolve the LPIPS v0.1 VGG lin-layer weights: an explicit path, else the `lpips` package's bundled file."""
    if path is not None:
        resolved = Path(path).expanduser()
    else:
        spec = importlib.util.find_spec("lpips")
        if spec is None or spec.origin is None:
            raise LPIPSWeightsError(
                "LPIPS needs its lin-layer weights 'weights/v0.1/vgg.pth' from the 'lpips' package, which is not "
                "installed: `pip install lpips`, or pass the file (the official GigaTok cache/vgg.pth) as lin_path."
            )
        resolved = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"  # no import: lpips pulls in torchvision
    if not resolved.is_file():
        raise LPIPSWeightsError(f"LPIPS lin-layer weights not found: '{resolved}'. Reinstall `lpips` or pass lin_path.")
    return resolved


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(item)
    return nn.Sequential(*layers)  # 30 modules; state_dict keys match torchvision's `features.{i}.*`


def _normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(B, C, H, W) -> each pixel's C-vector scaled to unit L2 norm."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG16: `lpips(images_a, images_b)` -> (B,) distances, inputs (B, 3, H, W) in [-1, 1].

    Parameters never receive gradients, but gradients flow to the inputs (so it can serve as a loss). The module
    stays in eval mode even inside a `.train()` model.

    Args:
        vgg_path: VGG16 ImageNet weights (torchvision format); default: the torch-hub cache file.
        lin_path: lin-layer weights (lpips v0.1 `vgg.pth` format); default: the `lpips` package's file.
        random_backbone: use a randomly initialised VGG16 instead (seeded, identical on every rank). Distances are
            then meaningless; only for tests and offline smoke runs.
    """

    def __init__(self, vgg_path: str | os.PathLike | None = None, lin_path: str | os.PathLike | None = None,
                 random_backbone: bool = False) -> None:
        super().__init__()
        # ScalingLayer of LPIPS v0.1: maps [-1, 1] inputs to roughly ImageNet-normalised ones.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the random-backbone mode must be reproducible and leave the global RNG alone
            self.features = _vgg16_features()
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _TAP_CHANNELS)
        lin_state = torch.load(find_lin_weights(lin_path), map_location="cpu", weights_only=True)
        for k, lin in enumerate(self.lins):
            lin.weight.data.copy_(lin_state[f"lin{k}.model.1.weight"])  # model.0 is a parameter-free Dropout
        if random_backbone:
            logger.warning("!" * 100 + "\n!!! LPIPS uses a RANDOM VGG16 backbone (random_backbone=True / "
                           f"{RANDOM_BACKBONE_ENV}=1): the LPIPS values are MEANINGLESS, for tests only !!!\n"
                           + "!" * 100)
        else:
            vgg_state = torch.load(find_vgg16_weights(vgg_path), map_location="cpu", weights_only=True)
            features_state = {k[len("features."):]: v for k, v in vgg_state.items() if k.startswith("features.")}
            features_state = {k: v for k, v in features_state.items() if int(k.split(".")[0]) < len(self.features)}
            self.features.load_state_dict(features_state, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen metric: never switch to train mode

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, 3, H, W) in [-1, 1] -> (B,) LPIPS distances (float32 unless autocast says otherwise)."""
        x = torch.cat([images_a, images_b], dim=0)
        x = (x - self.shift) / self.scale  # (2B, 3, H, W)
        distance = x.new_zeros(images_a.shape[0])
        tap = 0
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == _TAP_INDICES[tap]:
                feats_a, feats_b = _normalize_channels(x).chunk(2, dim=0)  # (B, C_l, H_l, W_l) each
                diff = (feats_a - feats_b).pow(2)
                distance = distance + self.lins[tap](diff).mean(dim=(1, 2, 3))  # (B, 1, H_l, W_l) -> (B,)
                tap += 1
        return distance
