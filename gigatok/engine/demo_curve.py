"""Held-out PSNR against training step for the CPU demo's tokenizer run: the report's 1D-vs-2D figure.

`write_psnr_curve` decodes the held-out digits with every checkpoint the tokenizer run kept and writes
`curves/tokenizer_<kind>.json`. Each tokenizer kind (1d, 2d) has its own file, so after one demo run with each
`--tokenizer`, the report draws both curves in one figure (`plot_psnr_curves`), whichever ran last.
PSNR follows the reconstruction stage: official uint8 rounding of the decoded images, data_range 1, mean over images.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gigatok.infra.io import write_json_atomic


def heldout_psnr(tokenizer: Any, images_uint8: Any, batch_size: int = 128) -> float:
    """Mean PSNR (dB) of `tokenizer`'s reconstructions of (N, S, S, 3) uint8 images, as the reconstruct stage."""
    import torch

    from gigatok.data.transforms import to_uint8
    from gigatok.eval.recon_metrics import psnr_batch

    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (N, 3, S, S) in [-1, 1]
    with torch.no_grad():
        recon = torch.cat([to_uint8(tokenizer.decode_code(tokenizer.encode_to_codes(b))) for b in x.split(batch_size)])
    return float(psnr_batch(images_uint8 / 255.0, recon.numpy() / 255.0, data_range=1.0).mean())


def write_psnr_curve(path: str | os.PathLike, run_dir: Path, config: str | os.PathLike, heldout: Path,
                     label: Mapping[str, Any]) -> Path:
    """Held-out PSNR at every checkpoint of `run_dir` -> `path` (json: the `label` fields + points [{step, psnr_db}]).

    Args:
        run_dir: a `gigatok.stages.train_vq` run directory (checkpoints/{step:07d}.pt).
        config: the run's tokenizer config (YAML path).
        heldout: ImageFolder tree of held-out images at the tokenizer's image size.
        label: what identifies the run in the figure (tokenizer kind, model class, steps).
    """
    from gigatok.builders import load_tokenizer
    from gigatok.data.demo_data import read_image_folder

    images_uint8, _, _ = read_image_folder(heldout)
    points = []
    for ckpt in sorted((run_dir / "checkpoints").glob("[0-9]*.pt")):
        points.append({"step": int(ckpt.stem), "psnr_db": heldout_psnr(load_tokenizer(ckpt, config), images_uint8)})
    if not points:
        raise FileNotFoundError(f"no checkpoints in {run_dir / 'checkpoints'}")
    return write_json_atomic(path, {**label, "num_heldout": len(images_uint8), "points": points})


def plot_psnr_curves(path: str | os.PathLike, curves: Sequence[Mapping[str, Any]]) -> Path:
    """One panel: held-out PSNR against step, one line per curve file content (`write_psnr_curve`)."""
    from gigatok.infra import report as rep

    lines = {f"{c['tokenizer']} ({c['model_cls']}, {c['num_tokens']} tokens)":
             ([p["step"] for p in c["points"]], [p["psnr_db"] for p in c["points"]]) for c in curves}
    return rep.plot_curves(path, [("tokenizer: held-out PSNR", "PSNR (dB)", lines)])
