"""Frozen pretrained networks' weights, fetched before the modules that need them are built.

The tokenizer floor only looks for weight files (`find_vgg16_weights`, `find_teacher_weights`, `find_dino_weights`:
explicit path, torch-hub cache, local Hugging Face cache) and never downloads. The stages call the `ensure_*`
functions here first: when the lookup finds nothing, the official file is downloaded into the torch-hub cache
(`gigatok.infra.download.fetch_weights`: lock, checksum, atomic move; `GIGATOK_OFFLINE=1` disables it,
`GIGATOK_WEIGHTS_BASE_URL` names a mirror), and the module's own lookup then finds it. If the download is not
possible, the lookup's error (where it looked, how to get the file) is raised with the download's failure appended.

An explicit path or a random-init (test) mode never downloads: an explicit path is only checked, as before.

Files, as the official code gets them (torchvision / torch.hub):
- LPIPS backbone: torchvision's `vgg16-397923af.pth` (sha256 prefix in the name, checked);
- semantic teacher: `dinov2_vit{s,b,l}14_pretrain.pth` from dl.fbaipublicfiles.com/dinov2;
- DINO discriminator: `dino_deitsmall16_pretrain.pth` from dl.fbaipublicfiles.com/dino.
The LPIPS lin layers come from the `lpips` package (no download).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gigatok.config import VQConfig
from gigatok.errors import UserError
from gigatok.infra.download import (
    WeightsDownloadError,
    fetch_weights,
    hub_checkpoint_path,
    sha256_prefix_from_name,
)
from gigatok.tokenizer.discriminator_dino import (
    DINO_FILENAME,
    DINO_URL,
    find_dino_weights,
)
from gigatok.tokenizer.perceptual import (
    VGG16_FILENAME,
    find_vgg16_weights,
    random_backbone_requested,
)
from gigatok.tokenizer.teacher import DINOV2_TEACHERS, find_teacher_weights

VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"  # torchvision VGG16_Weights.IMAGENET1K_V1
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{filename}"  # arch: dinov2_vitb14, ...


def _find_or_fetch(find: Callable[[], Path], url: str, filename: str, sha256_prefix: str | None, what: str) -> Path:
    """`find()`; if it reports a missing file, download `url` to the hub cache as `filename` and `find()` again."""
    try:
        return find()
    except FileNotFoundError as err:  # the lookups' *WeightsError (UserError + FileNotFoundError)
        if not isinstance(err, UserError):
            raise
        missing = err
    try:
        fetch_weights(url, hub_checkpoint_path(filename), sha256_prefix, what=what)
    except WeightsDownloadError as failure:
        raise type(missing)(f"{missing}\n{failure}") from None
    return find()


def ensure_lpips_weights(vgg_path: str | os.PathLike | None = None, random_backbone: bool = False) -> Path | None:
    """The VGG16 backbone file LPIPS will load (downloaded if needed); None for a random backbone.

    Raises:
        LPIPSWeightsError: an explicit `vgg_path` is missing, or the file is nowhere and cannot be downloaded.
    """
    if random_backbone or random_backbone_requested():
        return None
    if vgg_path is not None:
        return find_vgg16_weights(vgg_path)
    return _find_or_fetch(find_vgg16_weights, VGG16_URL, VGG16_FILENAME, sha256_prefix_from_name(VGG16_FILENAME),
                          "VGG16 ImageNet weights (LPIPS)")


def ensure_teacher_weights(name: str, weights_path: str | os.PathLike | None = None,
                           random_init: bool = False) -> Path | None:
    """The DINOv2 teacher file `DinoV2Teacher(name)` will load (downloaded if needed); None for a random teacher.

    Raises:
        ValueError: `name` is not a supported teacher.
        TeacherWeightsError: an explicit path is missing, or the file is nowhere and cannot be downloaded.
    """
    if random_init:
        return None
    if weights_path is not None:
        return find_teacher_weights(name, weights_path)
    if name not in DINOV2_TEACHERS:
        return find_teacher_weights(name)  # raises the ValueError that names the supported teachers
    filename = DINOV2_TEACHERS[name][1]
    url = DINOV2_URL.format(arch=filename.split("_pretrain")[0], filename=filename)
    return _find_or_fetch(lambda: find_teacher_weights(name), url, filename, None, f"DINOv2 teacher {name}")


def ensure_dino_disc_weights(weights_path: str | os.PathLike | None = None, random_init: bool = False) -> Path | None:
    """The DINO ViT-S/16 file of the DINO discriminator (downloaded if needed); None for a random backbone.

    Raises:
        DinoWeightsError: an explicit path is missing, or the file is nowhere and cannot be downloaded.
    """
    if random_init:
        return None
    if weights_path is not None:
        return find_dino_weights(weights_path)
    return _find_or_fetch(find_dino_weights, DINO_URL, DINO_FILENAME, None, "DINO ViT-S/16 weights (discriminator)")


def ensure_loss_weights(config: VQConfig) -> None:
    """Fetch every pretrained file the tokenizer loss of `config` will load, with the same conditions as
    `TokenizerLoss`: LPIPS unless `perceptual_weight: 0`, the teacher with `distill_loss`, DINO for `dinodisc`."""
    t, p = config.trainer, config.loss.params
    if p.perceptual_weight != 0:
        ensure_lpips_weights(random_backbone=t.lpips_random_backbone)
    if t.distill_loss:
        ensure_teacher_weights(t.distill_model, t.teacher_weights, t.teacher_random_init)
    if p.disc_type == "dinodisc":
        ensure_dino_disc_weights(t.dino_disc_weights, t.dino_disc_random_init)
