"""LPIPS-VGG16 perceptual distance (Zhang et al. 2018, v0.1), used as training loss and reconstruction metric.

distance(a, b) = sum over the five VGG16 taps l (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) of
    spatial_mean( w_l . (n(f_l(a)) - n(f_l(b)))**2 )
where f_l are the features of the scaled input, n normalises each pixel's channel vector to unit length and w_l
is a learned 1x1 projection to one channel (the "lin" layers).

Built from the `lpips` package's parts: its input scaling (`ScalingLayer`), per-pixel normalisation
(`normalize_tensor`), 1x1 lin layers (`NetLinLayer`) and spatial mean, on torchvision's VGG16 layer table
(`make_layers(cfgs["D"])`, the layers `lpips.pretrained_networks.vgg16` slices). The result is
`lpips.LPIPS(net='vgg', version='0.1')` in eval mode, up to float rounding (the two images go through VGG as one
batch). Not `lpips.LPIPS` itself: it downloads VGG16, or with `pnet_rand=True` builds the whole torchvision VGG16,
120M classifier parameters included (a second per build on CPU), and its keys differ. Ours are `features.{i}.*`
(torchvision's numbering) and `lins.{k}.weight`, which the official_compat dropout hooks and the parity tests use.
`lpips` and torchvision are imported when a module is built, not with this file.

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

_NUM_FEATURES = 30  # VGG16 `features` up to relu5_3 (indices 0..29); the last max-pool is not used
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
        import lpips  # imports torchvision: seconds on a small CPU, so only when LPIPS is really built
        from torchvision.models.vgg import cfgs, make_layers

        # LPIPS v0.1 input scaling, (x - shift) / scale: maps [-1, 1] inputs to roughly ImageNet-normalised ones.
        # Its constants are not checkpoint state (the released lpips weights do not hold them either).
        self.scaling_layer = lpips.ScalingLayer()
        for name in ("shift", "scale"):
            self.scaling_layer.register_buffer(name, getattr(self.scaling_layer, name), persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the random-backbone mode must be reproducible and leave the global RNG alone
            self.features = make_layers(cfgs["D"])[:_NUM_FEATURES]  # keys `{i}.*` as torchvision's `features`
            # The package's lin layers without their Dropout (inactive in eval mode; official_compat puts it back as
            # a hook), unwrapped so that the keys are `lins.{k}.weight`.
            self.lins = nn.ModuleList(lpips.NetLinLayer(c, use_dropout=False).model[0] for c in _TAP_CHANNELS)
        self._normalize, self._spatial_average = lpips.normalize_tensor, lpips.spatial_average
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
        x = self.scaling_layer(torch.cat([images_a, images_b], dim=0))  # (2B, 3, H, W): one VGG pass for both
        distance = x.new_zeros(images_a.shape[0])
        tap = 0
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == _TAP_INDICES[tap]:
                feats_a, feats_b = self._normalize(x).chunk(2, dim=0)  # unit channel vectors, (B, C_l, H_l, W_l) each
                diff = (feats_a - feats_b).pow(2)
                distance = distance + self._spatial_average(self.lins[tap](diff), keepdim=False)[:, 0]  # -> (B,)
                tap += 1
        return distance
