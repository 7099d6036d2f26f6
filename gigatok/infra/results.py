"""Reading the result files the stages write, for the reports (`gigatok ar_probe_report`, `gigatok recipe_summary`).

Each stage leaves its numbers as one JSON object:
  reconstruct      `<sample-dir>/<run folder>_results.json`  psnr, ssim, lpips, codebook_usage, rfid, sfid, ...
  sample_c2i       `<sample-dir>/<setting>.json`             fid, sfid, inception_score, precision, recall, cfg_scale
                   (a CFG search writes one per scale; the best one is the lowest fid)
  val_loss_c2i     `--out` or `val_loss_<checkpoint>.json`  val_loss
  lin_probe(_gpt)  `<run dir>/lin_probe_acc.json`           top1, top5, num_images
No torch here: a report starts in a fraction of a second.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gigatok.errors import UserError


def read_json(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """A JSON object, or None when the path is not given or does not exist (the stage did not run)."""
    if not path or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"'{path}' is not valid JSON ({err}); re-run the stage that writes it.") from None
    if not isinstance(data, dict):
        raise UserError(f"'{path}' holds a JSON {type(data).__name__}, expected an object.")
    return data


def find_gfid(path: str | os.PathLike | None) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics, file) of the generation evaluation: the file itself, or under a folder the JSON with the lowest
    "fid" (a CFG search writes one per scale and reports the best)."""
    if not path:
        return None, None
    if not Path(path).is_dir():
        data = read_json(path)
        return data, (str(path) if data is not None else None)
    found = [(data, str(p)) for p in sorted(Path(path).rglob("*.json"))
             if (data := read_json(p)) is not None and isinstance(data.get("fid"), (int, float))]
    return min(found, key=lambda item: item[0]["fid"]) if found else (None, None)


def find_recon_results(path: str | os.PathLike | None) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics, file) of a reconstruction evaluation: the file itself, or the newest `*_results.json` directly
    under a folder (the `--sample-dir` of `gigatok reconstruct`)."""
    if not path:
        return None, None
    if not Path(path).is_dir():
        data = read_json(path)
        return data, (str(path) if data is not None else None)
    files = sorted(Path(path).glob("*_results.json"), key=lambda p: p.stat().st_mtime)
    return (read_json(files[-1]), str(files[-1])) if files else (None, None)


def read_rfid(value: str | None) -> float | None:
    """An rFID given as a number, or as a JSON file with "rfid" / "fid" (a reconstruction results file)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    data = read_json(value)
    if data is None:
        raise UserError(f"--rfid '{value}' is neither a number nor an existing JSON file.")
    for key in ("rfid", "fid", "rFID"):
        if key in data:
            return float(data[key])
    raise UserError(f"--rfid JSON '{value}' has no 'rfid' / 'fid' entry (keys: {sorted(data)[:10]}).")
