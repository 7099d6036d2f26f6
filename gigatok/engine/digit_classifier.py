"""A small CNN that recognises the demo's colourised digits; the judge of the demo's class-agreement score.

It is trained on the real TRAINING digits only (`gigatok.data.demo_data`), in seconds on a CPU, and labels
images the GPT generated for a given class: the class agreement is the fraction labelled with the class they
were conditioned on. Its accuracy on the real held-out digits says how far that judge can be trusted.

Augmentation: random shifts of up to `MAX_SHIFT` pixels (edge padding) and, by default, horizontal flips with
p = 0.5. The flips are there because the pipeline itself shows the GPT mirrored digits: code extraction encodes
every image and its mirror image (official `extract_codes_c2i.py` views) and the GPT trains on both, so about
half of its samples are mirrored digits, which a flip-sensitive judge would reject for reasons that have nothing
to do with the class. The judge is therefore trained to name a digit whichever way round it is drawn.

A model and its training loop, hence engine/ (eval/ holds metrics only). Imports no tokenizer or GPT: only torch,
numpy, the demo's image folders and the atomic writer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gigatok.data.demo_data import read_image_folder
from gigatok.infra.io import write_json_atomic

MAX_SHIFT = 2  # pixels, at 32 px


class DigitClassifier(nn.Module):
    """Ink maps (B, 1, S, S) float in [0, 1] (see `to_input`) -> logits (B, num_classes), for S = `image_size`
    (divisible by 8).

    Three 3x3 conv stages (32, 64, 64 channels; BatchNorm, ReLU, 2x2 max-pool each), then an MLP on the flattened
    (64, S/8, S/8) map: where the strokes are matters for a digit, so the layout is kept rather than pooled away.
    About 190k parameters at 32 px.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True))

        if image_size % 8:
            raise ValueError(f"image_size must be divisible by 8, got {image_size}")
        self.features = nn.Sequential(stage(1, 32), nn.MaxPool2d(2), stage(32, 64), nn.MaxPool2d(2),
                                      stage(64, 64), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * (image_size // 8) ** 2, 128), nn.ReLU(inplace=True),
                                  nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, 64, S/8, S/8) -> flattened -> (B, num_classes)


def to_input(images_uint8: np.ndarray) -> torch.Tensor:
    """(n, S, S, 3) uint8 -> ink maps (n, 1, S, S) float32 in [0, 1].

    The ink map is each pixel's RGB distance from the image's background colour (the per-channel median of the
    one-pixel border), divided by the image's largest distance. It removes the random colour pair of a demo
    digit (and dark-on-light vs light-on-dark), so the CNN only has to learn shapes.
    """
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"expected (n, S, S, 3) uint8 images, got {images_uint8.shape} {images_uint8.dtype}")
    x = torch.from_numpy(images_uint8).float().div(255.0)  # (n, S, S, 3)
    border = torch.cat([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], dim=1)  # (n, 4S - 4, 3)
    background = border.median(dim=1).values  # (n, 3)
    ink = (x - background[:, None, None, :]).norm(dim=-1)  # (n, S, S)
    ink = ink / ink.amax(dim=(1, 2), keepdim=True).clamp_min(1e-3)
    return ink[:, None]  # (n, 1, S, S)


def augment(images: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random shifts (edge padding) and optional horizontal flips of a batch (B, C, S, S)."""
    b, _, s, _ = images.shape
    padded = F.pad(images, (MAX_SHIFT,) * 4, mode="replicate")  # (B, C, S + 2m, S + 2m)
    dx, dy = torch.randint(0, 2 * MAX_SHIFT + 1, (2, b), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(b)])
    if flip:
        mirror = torch.rand(b, generator=generator) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out


def train_digit_classifier(images_uint8: np.ndarray, labels: np.ndarray, *, epochs: int = 12,
                           batch_size: int = 64, lr: float = 3e-3, seed: int = 0, flip: bool = True,
                           num_classes: int = 10, progress: bool = False) -> DigitClassifier:
    """Train a `DigitClassifier` (AdamW, one-cycle cosine LR), deterministically for a given seed and thread count.

    Args:
        images_uint8: (n, S, S, 3) uint8 training images.
        labels: (n,) int in [0, num_classes).
        epochs: passes over the data.
        flip: also train on mirror images (see the module docstring).
        progress: show a tqdm bar over the optimizer steps.

    Returns:
        The trained model, in eval mode, on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the layers' default init draws from the global generator
    model = DigitClassifier(num_classes, image_size=images_uint8.shape[1])
    x, y = to_input(images_uint8), torch.as_tensor(labels, dtype=torch.long)
    steps = epochs * max(len(x) // batch_size, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    step = 0
    bar = tqdm(total=steps, desc="classifier", unit="step", disable=not progress)
    while step < steps:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - batch_size + 1, batch_size):
            if step == steps:
                break
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(augment(x[idx], generator, flip)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update(1)
    bar.close()
    return model.eval()


@torch.no_grad()
def predict_digits(model: DigitClassifier, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted classes (n,) int64 of (n, S, S, 3) uint8 images."""
    model.eval()
    x = to_input(images_uint8)
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]).numpy()


def accuracy(model: DigitClassifier, images_uint8: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose predicted class equals `labels` (the class agreement, for generated images)."""
    return float(np.mean(predict_digits(model, images_uint8) == np.asarray(labels)))


def per_class_accuracy(model: DigitClassifier, images_uint8: np.ndarray, labels: np.ndarray,
                       num_classes: int = 10) -> list[float | None]:
    """Accuracy within each class (None for a class with no images)."""
    hit = predict_digits(model, images_uint8) == np.asarray(labels)
    return [float(hit[labels == c].mean()) if np.any(labels == c) else None for c in range(num_classes)]


def train_and_save(train_dir: Path, heldout_dir: Path, out: Path, *, epochs: int, seed: int) -> None:
    """Train the class-agreement judge on the real training digits (ImageFolder `train_dir`); save its weights
    (`out/classifier.pt`) and record its accuracy on the held-out digits, as drawn and mirrored
    (`out/classifier.json`)."""
    train_images, train_labels, _ = read_image_folder(train_dir)
    heldout_images, heldout_labels, _ = read_image_folder(heldout_dir)
    model = train_digit_classifier(train_images, train_labels, epochs=epochs, seed=seed, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "classifier.pt")
    write_json_atomic(out / "classifier.json", {
        "heldout_accuracy": accuracy(model, heldout_images, heldout_labels),
        "heldout_accuracy_mirrored": accuracy(model, heldout_images[:, :, ::-1].copy(), heldout_labels),
        "per_class": per_class_accuracy(model, heldout_images, heldout_labels),
        "epochs": epochs, "seed": seed, "image_size": int(train_images.shape[1])})
