"""Reconstruction with a prefix of the 1D tokens (official `--mul-rec-levels`) and its trend figure (`--plot`).

A "level" is the official `num_en_q_level`: with `causal_settings.causal_type: per-level` the first 2**level tokens
are kept, otherwise (per-token, or no causal mask) the first `level` tokens. Each level is reconstructed into its own
folder, the run's folder name plus `-c-type-<causal_type>-cur-level-<level>` (official names). The trend figure
puts, for each image, its input and then its reconstructions from the fewest tokens to the most, side by side, each
captioned with its token count (and LPIPS when the file names carry it).

Image arrays: (H, W, 3) uint8.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gigatok.infra.io import save_png_atomic

TREND_MAX_IMAGES = 16  # trend figures are made for the first 16 images (one PNG each)
CAPTION_HEIGHT = 14
_RECON_NAME = re.compile(r"^(\d{6})(?:_(\d+\.\d+))?\.png$")  # 000003.png or 000003_0.1234.png (with --lpips)


def parse_levels(text: str | None) -> list[int] | None:
    """`--mul-rec-levels` value: "1,4,8" -> [1, 4, 8]; None or "None" (official) -> None."""
    if text is None or text == "None":
        return None
    try:
        levels = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--mul-rec-levels '{text}': give comma-separated integers, e.g. 2,4,6,8") from None
    if not levels or min(levels) < 0:
        raise ValueError(f"--mul-rec-levels '{text}': give comma-separated non-negative integers, e.g. 2,4,6,8")
    return levels


def prefix_tokens(level: int, causal_type: str | None) -> int:
    """Tokens kept at `level`: 2**level for "per-level", else `level` (official `ViTEncoder` selection)."""
    return 2**level if causal_type == "per-level" else level


def level_folder(out_dir: Path, causal_type: str | None, level: int) -> Path:
    """The per-level output folder (official suffix)."""
    return out_dir.with_name(f"{out_dir.name}-c-type-{causal_type}-cur-level-{level}")


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + CAPTION_HEIGHT), "white")
    canvas.paste(Image.fromarray(image), (0, CAPTION_HEIGHT))
    ImageDraw.Draw(canvas).text((2, 1), text, fill="black")
    return np.asarray(canvas)


def plot_trend(level_dirs: dict[int, Path], tokens: dict[int, int], out_dir: Path,
               max_images: int = TREND_MAX_IMAGES) -> list[Path]:
    """Write `trending_<idx>.png` into `out_dir` for the first `max_images` images found in every level folder.

    Args:
        level_dirs: level -> folder of its reconstructions (`{idx:06d}.png` or `{idx:06d}_{lpips}.png`, and the
            inputs `{idx:06d}_gt.png` when the qualitative mode saved them).
        tokens: level -> tokens kept (the caption).
    Returns:
        The figures written, in image order.
    """
    found: dict[int, dict[str, tuple[Path, str | None]]] = {}
    for level, folder in level_dirs.items():
        for path in sorted(folder.glob("*.png")):
            match = _RECON_NAME.match(path.name)
            if match:
                found.setdefault(level, {})[match.group(1)] = (path, match.group(2))
    common = sorted(set.intersection(*(set(v) for v in found.values()))) if len(found) == len(level_dirs) else []
    written = []
    for idx in common[:max_images]:
        panels = []
        first = level_dirs[min(level_dirs)]
        gt = first / f"{idx}_gt.png"
        if gt.is_file():
            panels.append(_caption(np.asarray(Image.open(gt).convert("RGB")), "input"))
        for level in sorted(level_dirs, key=lambda lv: tokens[lv]):
            path, lpips = found[level][idx]
            text = f"{tokens[level]} tok" + (f" LPIPS {float(lpips):.3f}" if lpips else "")
            panels.append(_caption(np.asarray(Image.open(path).convert("RGB")), text))
        height = max(p.shape[0] for p in panels)
        panels = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels]
        target = out_dir / f"trending_{idx}.png"
        save_png_atomic(target, np.concatenate(panels, axis=1))
        written.append(target)
    return written
