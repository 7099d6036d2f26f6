"""Small helpers for run reports: metrics.jsonl reading, matplotlib curves, image grids and Markdown tables.

Used by the CPU demo (`gigatok.stages.demo`) to turn the stages' outputs into PNGs and `report.md`. matplotlib is
imported lazily with the non-interactive Agg backend (no display needed). Images are `images_uint8` arrays
(n, H, W, 3) uint8 throughout.
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


def _value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_demo_report(metrics: Mapping[str, Any], stages: Sequence[Mapping[str, Any]],
                       settings: Mapping[str, Any], links: Mapping[str, str], wall_s: float,
                       limits: Mapping[str, str]) -> str:
    """The CPU demo's `report.md`.

    Args:
        metrics: the demo's metrics.json content (with "targets": {name: {target, value, met}}).
        stages: one dict per stage: name, entry (module or "in-process"), status ("ran"/"reused"), wall_s, cpu_s,
            log (relative link, or None).
        settings: name -> value lines of the configuration section (values may hold Markdown).
        links: relative links of the figures (recon_heldout, recon_photos, samples, curves_tokenizer, curves_gpt),
            of the sampler's grids (class_grid_0 .. class_grid_9) and of metrics.json (metrics).
        wall_s: wall time of this invocation.
        limits: metric name -> what limits it, printed for the targets that were missed.
    """
    targets = metrics["targets"]
    result_rows = [(name, _value(t["value"]), f">= {t['target']}", "yes" if t["met"] else "**NO**")
                   for name, t in targets.items()]
    missed = [name for name, t in targets.items() if not t["met"]]
    stage_rows = [(i, s["name"], f"`{s['entry']}`", s["status"], _value(s["wall_s"], 3), _value(s["cpu_s"], 3),
                   f"[log]({s['log']})" if s.get("log") else "-") for i, s in enumerate(stages, start=1)]
    pipeline_wall = sum(s["wall_s"] for s in stages)
    pipeline_cpu = sum(s["cpu_s"] for s in stages)
    per_class = ", ".join(f"{c}: {a:.2f}" for c, a in enumerate(metrics["class_agreement_per_class"]))
    class_grids = " ".join(f"[{c}]({links[f'class_grid_{c}']})" for c in range(10) if f"class_grid_{c}" in links)
    lines = [
        "# GigaTok CPU demo",
        "",
        ("Every pipeline stage below ran through the entry point users run, with the flags listed in its log: a 2D GigaTok "
        "tokenizer trained on colourised scikit-learn digits, codes, a class-conditional GPT, samples, and their "
        "evaluation. Numbers come from this run; nothing is pretrained."),
        "",
        "## Results",
        "",
        markdown_table(["metric", "value", "target", "met"], result_rows),
        "",
        (f"- Held-out reconstruction ({metrics['num_heldout']} digits): PSNR {_value(metrics['heldout_psnr_db'])} dB, "
        f"SSIM {_value(metrics['heldout_ssim'])} (official data_range=2 convention; standard data_range=1: "
        f"{_value(metrics['heldout_ssim_data_range_1'])}), codebook usage {_value(metrics['codebook_usage'])}, "
        f"rFID {_value(metrics.get('heldout_rfid'))}."),
        (f"- Class agreement of {metrics['num_samples']} generated digits (uniform classes), per class: {per_class}. "
        f"The judge is a small CNN trained on the real training digits: {_value(metrics['classifier_heldout_accuracy'])} "
        f"accuracy on the held-out digits ({_value(metrics['classifier_heldout_accuracy_mirrored'])} on their "
        "mirror images)."),
        (f"- FID against the held-out digits: {_value(metrics['fid'])} ({metrics['fid_note']}). Few images and tiny "
        "upsampled digits: a sanity number, not comparable with ImageNet FIDs."),
    ]
    if missed:
        lines += ["", "Missed targets and what limits them:", ""]
        lines += [f"- `{name}`: {limits.get(name, 'see the curves and logs')}" for name in missed]
    lines += [
        "",
        "## Figures",
        "",
        "Held-out digits, ground truth | reconstruction (4 per class):",
        "",
        f"![held-out reconstructions]({links['recon_heldout']})",
        "",
        "Photos from scikit-image (out of domain: the tokenizer only saw digits), ground truth | reconstruction:",
        "",
        f"![photo reconstructions]({links['recon_photos']})",
        "",
        "Generated digits, one row per class 0..9 (the sampler's own per-class grids: " + class_grids + "):",
        "",
        f"![samples]({links['samples']})",
        "",
        "Training curves:",
        "",
        f"![tokenizer curves]({links['curves_tokenizer']})",
        "",
        f"![GPT curves]({links['curves_gpt']})",
        "",
        "## Configuration",
        "",
    ]
    lines += [f"- {name}: {value}" for name, value in settings.items()]
    lines += [
        "",
        "## Stages and time",
        "",
        markdown_table(["#", "stage", "entry point", "status", "wall s", "CPU s", "log"], stage_rows),
        "",
        (f"Pipeline (all stages as last run): {pipeline_wall:.0f} s wall, {pipeline_cpu:.0f} s CPU. This invocation: "
        f"{wall_s:.0f} s wall (reused stages cost nothing). CPU s = user + system time of the stage's processes."),
        "",
        f"All numbers: [metrics.json]({links['metrics']}).",
        "",
    ]
    return "\n".join(lines)
