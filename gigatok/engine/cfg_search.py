"""The CFG-scale search of `sample_c2i --search` and its record: one CSV row per evaluated scale.

Official layout: `<parent of sample-dir>/search_results/<name of sample-dir>.csv`. The search walks the scale in steps
of 0.25 from the official empirical starting points until the FID has a local minimum; rows of one setting share a
`setting` hash, so scales already in the CSV are not evaluated again.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from gigatok.eval.adm import read_results_txt
from gigatok.infra.io import write_text_atomic

SEARCH_STEP = 0.25  # official cfg search step
SEARCH_MIN_SCALE = 1.0
SEARCH_SCHEDULES = ("constant", "step", "rectangular")
CSV_COLUMNS = ["annotation", "cfg_scale", "cfg_schedule", "FID", "Inception Score", "Precision", "Recall", "sFID",
               "num_samples", "gpt_ckpt", "setting", "evaluator", "sample_seconds", "eval_seconds", "time"]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header ([] when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_csv_row(path: Path, row: dict[str, Any], columns: list[str]) -> None:
    """Append one row (None -> empty) by an atomic rewrite; columns of an existing file that `columns` lacks are
    kept after them."""
    rows = read_csv_rows(path)
    columns = columns + [c for c in (rows[0].keys() if rows else []) if c not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows([*rows, {k: "" if v is None else v for k, v in row.items()}])
    write_text_atomic(path, text.getvalue())


def csv_path(sample_dir: str) -> Path:
    """Official: <dirname(sample_dir)>/search_results/<basename(sample_dir)>.csv (resolved, so that a bare
    --sample-dir 'samples' gives ./search_results/samples.csv and not /search_results/samples.csv)."""
    folder = Path(sample_dir).expanduser().resolve()
    return folder.parent / "search_results" / f"{folder.name}.csv"


def row_scale(row: dict[str, str]) -> float | None:
    try:
        return round(float(row["cfg_scale"]), 4)
    except (KeyError, TypeError, ValueError):
        return None


def search_start_scale(gpt_model: str, cfg_schedule: str, tok_config: str | None) -> float:
    """The official empirical starting points of `--search`."""
    if cfg_schedule == "step":
        return {"GPT-B": 2.5, "GPT-L": 1.75}.get(gpt_model, 1.25)
    if cfg_schedule == "rectangular":
        return {"GPT-B": 3.0, "GPT-L": 2.5}.get(gpt_model, 1.75)
    if gpt_model == "GPT-B":  # constant
        return 1.75 if "XXL" in (tok_config or "") else 2.0
    return 1.75


def next_search_scale(rows: list[dict[str, str]], start: float, increase_first: bool) -> float | None:
    """The official search step: the first untried neighbour (+-0.25, >= 1.0) of the best scale so far; None when
    both neighbours are tried, i.e. the FID has a local minimum. `rows` are this setting's CSV rows."""
    tried = {s: float(r["FID"]) for r in rows if (s := row_scale(r)) is not None and r.get("FID") not in (None, "")}
    if not tried:
        return start
    best = min(tried, key=lambda s: (tried[s], s))
    steps = (SEARCH_STEP, -SEARCH_STEP) if increase_first else (-SEARCH_STEP, SEARCH_STEP)
    for candidate in (round(best + step, 4) for step in steps):
        if candidate >= SEARCH_MIN_SCALE and candidate not in tried:
            return candidate
    return None


def read_results(stem: Path) -> dict[str, Any] | None:
    """The results of a finished evaluation: `<stem>.json`, else the five ADM lines of `<stem>.txt` (as the
    official script reads them, e.g. written by the TF evaluator), else None."""
    json_file, txt_file = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".txt")
    if json_file.is_file():
        try:
            results = json.loads(json_file.read_text())
            if isinstance(results, dict) and results.get("fid") is not None:
                return results
        except json.JSONDecodeError:
            pass
    values = read_results_txt(txt_file) if txt_file.is_file() else {}
    if len(values) < 5:
        return None
    score = values["Inception Score"]
    return {"inception_score": None if np.isnan(score) else score, "fid": values["FID"], "sfid": values["sFID"],
            "precision": values["Precision"], "recall": values["Recall"], "evaluator": f"from {txt_file.name}"}
