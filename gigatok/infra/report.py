"""Small helpers for run reports: metrics.jsonl reading, matplotlib curves, image grids and Markdown tables.

Used by the CPU demo's report (`gigatok.engine.demo_report`) to turn the stages' outputs into PNGs and
`report.md`. matplotlib is imported lazily with the non-interactive Agg backend (no display needed). Images are
`images_uint8` arrays (n, H, W, 3) uint8 throughout.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a `MetricsLogger` file (`{"step": int, "<name>": float | null, ...}` per line), sorted by
    step; a resumed run may repeat steps, the last record of a step wins. Unparsable lines are skipped."""
    records: dict[int, dict[str, Any]] = {}
    path = Path(path)
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a killed run
            continue
        if isinstance(record, dict) and "step" in record:
            records[int(record["step"])] = record
    return [records[s] for s in sorted(records)]


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, leaving out records where it is missing or null (non-finite)."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def plot_curves(path: str | os.PathLike, panels: Sequence[tuple[str, str, Mapping[str, tuple[list, list]]]],
                log_y: Sequence[bool] | None = None) -> Path:
    """One PNG with one panel per (title, y label, {curve label: (steps, values)}), side by side.

    Args:
        log_y: per panel, whether the y axis is logarithmic (default: linear everywhere).
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for i, (ax, (title, ylabel, curves)) in enumerate(zip(axes[0], panels)):
        for label, (steps, values) in curves.items():
            if steps:
                ax.plot(steps, values, label=label, marker="." if len(steps) < 30 else None)
        if log_y is not None and log_y[i]:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def upscale(images_uint8: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling (n, H, W, 3) -> (n, H * factor, W * factor, 3), so tiny images stay crisp."""
    return images_uint8.repeat(factor, axis=1).repeat(factor, axis=2)


def tile(images_uint8: np.ndarray, columns: int, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """(n, H, W, 3) uint8 -> one (rows * (H + p) + p, columns * (W + p) + p, 3) image, row-major, padded."""
    n, h, w, _ = images_uint8.shape
    rows = math.ceil(n / columns)
    grid = np.full((padding + rows * (h + padding), padding + columns * (w + padding), 3), pad_value, np.uint8)
    for i, image in enumerate(images_uint8):
        top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def pair_grid(gt_uint8: np.ndarray, recon_uint8: np.ndarray, pairs_per_row: int, scale: int = 1) -> np.ndarray:
    """Ground truth next to reconstruction: each cell is [gt | recon] (n, H, 2W, 3), `pairs_per_row` cells per
    row, upscaled by `scale` (nearest). Returns one uint8 image."""
    if gt_uint8.shape != recon_uint8.shape:
        raise ValueError(f"ground truth {gt_uint8.shape} and reconstructions {recon_uint8.shape} differ in shape")
    cells = np.concatenate([gt_uint8, recon_uint8], axis=2)  # (n, H, 2W, 3)
    return tile(upscale(cells, scale), min(pairs_per_row, len(cells)), padding=2 * scale)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats are printed with 4 significant digits, None as '-'."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
