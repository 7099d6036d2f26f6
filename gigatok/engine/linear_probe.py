"""Linear probing of frozen features: the MAE `main_linprobe` recipe used by GigaTok's two probes.

The frozen trunk (tokenizer, or tokenizer + GPT) stays outside this module: the loops take a
`features_fn(images) -> (B, D) float` callable, so nothing here imports a model (SPEC_evaluation §5).

Recipe (GigaTok `autoregressive/lin_probe/lin_probe.py`, `tokenizer/lin_probe/lin_probe.py`, MAE/MoCo v3):
- head: `BatchNorm1d(D, affine=False, eps=1e-6)` then `Linear(D, C)`, weight trunc-normal std 0.01, bias 0
  (MoCo v3; GigaTok leaves PyTorch's default bias init, a negligible difference);
- LARS, momentum 0.9, trust coefficient 0.001, parameters with ndim <= 1 get neither weight decay nor the trust
  ratio; weight decay 0;
- lr = blr * global_batch / 256 (blr 0.1), set every step: linear warm-up over `warmup_epochs`, then a
  half-cosine to `min_lr` at `epochs` (MAE `adjust_learning_rate`, fractional epoch = step / steps_per_epoch);
- cross-entropy, fp16 GradScaler, no gradient clipping; train data: ADM `random_crop_arr` + horizontal flip,
  val: `center_crop_arr`; metric: top-1 (and top-5) over the whole val set, summed over ranks.

Run directory `{save_path}/{sub_exp_dir}/`: `checkpoints/{epoch:04d}.pt` (official names and entries: "model",
"optimizer", "steps", "epoch", plus ours), `log.txt`, `metrics.jsonl`, `lin_probe_acc.json` / `.txt` (results).
Checkpoints are written at epoch ends (every `ckpt_epoch` epochs and the last one, as official), atomically; a
rerun resumes after the newest one and reproduces the uninterrupted run (augmentation is keyed by
(seed, epoch, image), the shuffle by seed + epoch).

The probe stage both entry points share (flags, opening, train-then-evaluate runner) is
`gigatok.engine.probe_run`.

Shape letters: B batch, D feature width, C classes, S image size.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from gigatok.data.codes import LabeledImageFolder
from gigatok.data.images import ImageDataError
from gigatok.data.train_images import TrainImageDataset
from gigatok.data.transforms import CenterCropTransform
from gigatok.errors import UserError
from gigatok.infra.checkpoint import (
    CheckpointError,
    extract_state_dict,
    read_checkpoint,
)
from gigatok.infra.io import torch_save_atomic, write_json_atomic, write_text_atomic
from gigatok.infra.parallel import unwrap
from gigatok.infra.runtime import autocast

logger = logging.getLogger(__name__)

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]
RESULTS_NAME = "lin_probe_acc"
_CKPT_NAME = re.compile(r"^(\d+)\.pt$")



# -- Optimizer, head, schedule -----------------------------------------------------------------------------------

class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (MAE / MoCo v3 `LARS`).

    For every parameter p with ndim > 1: `g = grad + weight_decay * p`, then
    `g *= trust_coefficient * |p| / |g|` (1 when either norm is 0). Parameters with ndim <= 1 (biases, norms) use
    the raw gradient. Then `mu = momentum * mu + g; p -= lr * mu`.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 0.0,
                 weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "trust_coefficient": trust_coefficient}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(p)
                    update_norm = torch.linalg.vector_norm(update)
                    ratio = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["trust_coefficient"] * param_norm / update_norm,
                                        torch.ones_like(param_norm))
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                state["mu"].mul_(group["momentum"]).add_(update)
                p.add_(state["mu"], alpha=-group["lr"])
        return loss


class LinearProbe(nn.Module):
    """`BatchNorm1d(D, affine=False, eps=1e-6)` -> `Linear(D, C)`; official `LinProb` keys `bn.*`, `head.*`."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)  # MoCo v3 head init
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, D) -> logits (B, C)."""
        return self.head(self.bn(features))


@dataclass(frozen=True)
class ProbeSchedule:
    """Per-step learning rate (MAE `adjust_learning_rate`), a function of the fractional epoch."""

    lr: float
    epochs: int
    warmup_epochs: float = 10
    min_lr: float = 0.0

    def lr_at(self, epoch: float) -> float:
        """Linear warm-up from 0 over `warmup_epochs`, then half-cosine from `lr` to `min_lr` at `epochs`."""
        if epoch < self.warmup_epochs:
            return self.lr * epoch / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)  # warmup_epochs == epochs: no cosine phase
        progress = min((epoch - self.warmup_epochs) / span, 1.0)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def probe_lr(blr: float, lr: float | None, global_batch_size: int) -> float:
    """The absolute lr: `lr` if given, else the MAE scaling rule `blr * global_batch_size / 256`."""
    return lr if lr is not None else blr * global_batch_size / 256


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k (k is capped at C).

    Args:
        logits: (B, C). labels: (B,) int64 in [0, C).
    """
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, kmax)
    hits = top == labels[:, None]  # (B, kmax) bool, at most one True per row
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


# -- Data --------------------------------------------------------------------------------------------------------

def resolve_data_paths(data_root: str | None, train_path: str | None, val_path: str | None,
                       need_train: bool) -> tuple[Path | None, Path]:
    """Train / val folders: `--train-path` / `--val-path`, else `<data-root>/ILSVRC2012_img_{train,val}`."""
    paths = {}
    for split, given in (("train", train_path), ("val", val_path)):
        if split == "train" and not need_train:
            continue
        path = Path(given) if given else Path(data_root) / f"ILSVRC2012_img_{split}" if data_root else None
        if path is None:
            raise UserError(f"no {split} images: pass --data-root (with ILSVRC2012_img_train/ and ILSVRC2012_img_val/ "
                             "in ImageFolder layout) or --train-path / --val-path.")
        if not path.is_dir():
            raise UserError(f"image folder not found: '{path}'. Expected an ImageFolder tree "
                             "(<folder>/<class name>/<images>).")
        paths[split] = path
    return paths.get("train"), paths["val"]


def build_probe_datasets(train_path: Path | None, val_path: Path, image_size: int, seed: int,
                         classes: list[str] | None = None) -> tuple[Dataset | None, Dataset, list[str]]:
    """Labelled train (random crop + flip) and val (center crop) sets sharing one class-index mapping.

    Items are `(images (3, S, S) float32 in [-1, 1], label, _)`. Classes are the train folder's sorted class
    sub-folders (or `classes`, e.g. from a probe checkpoint); val labels are mapped onto them by name, so a val
    folder holding a subset of the classes still scores correctly.
    """
    train = None
    try:
        if train_path is not None:
            train = TrainImageDataset(train_path, image_size, seed=seed)
            if not train.classes:
                raise UserError(f"'{train_path}' has no class sub-folders: linear probing needs labels "
                                 "(ImageFolder layout <folder>/<class name>/<images>).")
            classes = list(train.classes)
        val = LabeledImageFolder(val_path, CenterCropTransform(image_size))
    except ImageDataError as err:
        raise UserError(str(err)) from None
    classes = list(val.classes) if classes is None else classes
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(val.classes) - set(index))
    if unknown:
        raise UserError(f"val folder '{val_path}' has classes the probe does not know: {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''} (train classes: {len(classes)}). Use matching "
                         "train and val folders.")
    val.labels = [index[val.classes[label]] for label in val.labels]
    return train, val, classes


# -- Loops -------------------------------------------------------------------------------------------------------

def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, features_fn: FeaturesFn,
                    *, schedule: ProbeSchedule, step: int, steps_per_epoch: int, device: torch.device,
                    amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler,
                    log_fn: Callable[[int, float, float], None] | None = None) -> int:
    """One epoch of probe training on frozen features.

    Args:
        model: the probe (possibly DDP-wrapped), in train mode.
        loader: yields `(images (B, 3, S, S), labels (B,), ...)`; exactly `steps_per_epoch` batches are used.
        features_fn: frozen trunk, images -> (B, D); called under no_grad and autocast.
        step: global steps done before this epoch; the lr of a step is `schedule.lr_at(step / steps_per_epoch)`.
        log_fn: called after every step with (step, loss, lr).

    Returns:
        The global step after the epoch.

    Raises:
        UserError: a non-finite loss (as MAE, the run stops).
    """
    model.train()
    for i, batch in enumerate(loader):
        if i == steps_per_epoch:
            break
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        lr = schedule.lr_at(step / steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, amp_dtype):
            with torch.no_grad():
                features = features_fn(images)  # (B, D)
            loss = F.cross_entropy(model(features), labels)
        if not torch.isfinite(loss):
            raise UserError(f"the probe loss is {float(loss)} at step {step}: lower --blr / --lr, or use "
                             "--mixed-precision none.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        if log_fn is not None:
            log_fn(step, loss.detach(), lr)
    return step


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, features_fn: FeaturesFn, device: torch.device,
             amp_dtype: torch.dtype | None) -> dict[str, float | int]:
    """Top-1 / top-5 accuracy of the probe on this rank's batches, summed over all ranks.

    Returns:
        {"top1": fraction, "top5": fraction, "num_images": images scored over all ranks}.
    """
    probe = unwrap(model).eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # [top-1 hits, top-5 hits, images]
    for batch in loader:
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = probe(features_fn(images))  # (B, C)
        top1, top5 = topk_correct(logits.float(), labels)
        counts += torch.tensor([top1, top5, len(labels)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(counts)
    top1, top5, total = counts.tolist()
    return {"top1": top1 / max(total, 1), "top5": top5 / max(total, 1), "num_images": int(total)}


# -- Checkpoints and results -------------------------------------------------------------------------------------

def probe_checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{epoch:04d}.pt"


def find_probe_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest readable `checkpoints/{epoch:04d}.pt` of a run (unreadable ones are skipped with a warning)."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in folder.glob("*.pt") if (m := _CKPT_NAME.match(p.name))) \
        if folder.is_dir() else []
    for _, path in reversed(found):
        try:
            read_checkpoint(path)
            return path
        except CheckpointError as err:
            logger.warning(f"skipping unreadable probe checkpoint {path} ({err})")
    return None


def save_probe_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                          scaler: torch.amp.GradScaler, epoch: int, steps: int, classes: list[str],
                          config: dict[str, Any]) -> None:
    """Atomic write of the official entries ("model", "optimizer", "steps", "epoch") plus ours (rank 0 only)."""
    ckpt = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "steps": steps,
            "epoch": epoch, "classes": list(classes), "config": config}
    if scaler.is_enabled():
        ckpt["scaler"] = scaler.state_dict()
    torch_save_atomic(ckpt, path)
    logger.info(f"saved probe checkpoint {path}")


def load_probe_weights(path: str | os.PathLike, dim: int) -> tuple[dict[str, Any], LinearProbe]:
    """Read a probe checkpoint (ours or official) and build its head; checks the feature width D."""
    ckpt = read_checkpoint(path)
    state = extract_state_dict(ckpt, prefer=("model",), source=f"probe checkpoint '{path}'")
    if "head.weight" not in state:
        raise CheckpointError(f"'{path}' is not a linear-probe checkpoint (no 'head.weight' in its weights)")
    num_classes, ckpt_dim = state["head.weight"].shape
    if ckpt_dim != dim:
        raise CheckpointError(f"probe checkpoint '{path}' expects {ckpt_dim}-d features but the trunk gives "
                              f"{dim}-d ones: the flags (--n-layer, --fix-dim, --from-decoder, model) differ from "
                              "the run that trained it.")
    probe = LinearProbe(dim, num_classes)
    probe.load_state_dict(state)
    return ckpt, probe


def write_results(run_dir: str | os.PathLike, results: dict[str, Any], trunk_label: str,
                  out: str | os.PathLike | None = None) -> Path:
    """`lin_probe_acc.json` (or `out`) plus the official one-line `lin_probe_acc.txt`, atomically (rank 0)."""
    path = Path(out) if out else Path(run_dir) / f"{RESULTS_NAME}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = f"{trunk_label}: Accuracy of the network on the {results['num_images']} test images: {results['top1']:.4f}\n"
    write_json_atomic(path, results)
    write_text_atomic(path.with_suffix(".txt"), line)
    return path
