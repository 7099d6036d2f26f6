"""One table for an AR-probing run (GigaTok paper Sec. 3): rFID, gFID, validation loss and linear-probe accuracy.

Reads what the stages of scripts/ar_probe.sh wrote: the tokenizer and GPT checkpoints (steps and configs, read
memory-mapped), the val-loss JSON (stage val_loss_c2i), the linear-probe JSON (stage lin_probe_gpt), the
generation metrics JSON (stage sample_c2i: a file, or under a folder the `*.json` with the lowest "fid", i.e. the
best scale of a CFG search) and optionally an rFID (a number, or a JSON with "fid"/"rfid"). A missing or skipped
stage shows as "n/a".
Writes `<exp-dir>/ar_probe.md` and `<exp-dir>/ar_probe.json` (atomically) and prints the table.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gigatok.infra.checkpoint import read_checkpoint
from gigatok.infra.cli import run_stage
from gigatok.infra.io import write_json_atomic, write_text_atomic
from gigatok.infra.results import find_gfid, read_json, read_rfid

# GPT run settings worth a line in the report (official train_c2i flag names).
GPT_KEYS = ("gpt_model", "global_batch_size", "lr", "lr_scheduler", "warmup", "fract_decay", "iterations",
            "early_stop_iter", "mixed_precision", "code_path")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exp-dir", type=str, required=True, help="writes ar_probe.md / ar_probe.json here")
    parser.add_argument("--name", type=str, default=None, help="row name (default: the exp-dir name)")
    parser.add_argument("--tok-ckpt", type=str, default=None, help="tokenizer checkpoint (its step is reported)")
    parser.add_argument("--tok-config", type=str, default=None, help="tokenizer YAML (recorded)")
    parser.add_argument("--gpt-ckpt", type=str, default=None, help="GPT checkpoint (its step is reported)")
    parser.add_argument("--val-loss", type=str, default=None, help="val_loss JSON")
    parser.add_argument("--lin-probe", type=str, default=None, help="lin_probe_acc.json")
    parser.add_argument("--gfid", type=str, default=None, help="generation metrics JSON, or a folder holding it")
    parser.add_argument("--rfid", type=str, default=None, help="a number, or a JSON with 'fid' / 'rfid'")
    return parser.parse_args(argv)


def checkpoint_summary(path: str | None) -> dict[str, Any] | None:
    """Step and run config of a training checkpoint (memory-mapped: the weights are not read)."""
    if not path or not Path(path).is_file():
        return None
    ckpt = read_checkpoint(path)
    step = ckpt.get("step", ckpt.get("steps"))
    return {"path": str(path), "step": None if step is None else int(step), "config": ckpt.get("config") or {}}


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run config's fields by name: the sections of a GPT config.yaml merged (older runs saved a flat dict)."""
    sections = [value for value in config.values() if isinstance(value, dict)]
    return {k: v for section in sections for k, v in section.items()} if sections else dict(config)


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    """Collect every stage's output into one dict (missing stages are None)."""
    tok, gpt = checkpoint_summary(args.tok_ckpt), checkpoint_summary(args.gpt_ckpt)
    val_loss, probe = read_json(args.val_loss), read_json(args.lin_probe)
    gen, gen_file = find_gfid(args.gfid)
    gpt_config = flat_config((gpt or {}).get("config", {}))
    return {
        "name": args.name or Path(args.exp_dir).name,
        "tokenizer": {"checkpoint": args.tok_ckpt, "config": args.tok_config, "steps": (tok or {}).get("step")},
        "gpt": {"checkpoint": args.gpt_ckpt, "steps": (gpt or {}).get("step"),
                **{k: gpt_config.get(k) for k in GPT_KEYS if k in gpt_config}},
        "rfid": read_rfid(args.rfid),
        "gfid": None if gen is None else gen.get("fid"),
        "generation": None if gen is None else {"file": gen_file, **{k: gen.get(k) for k in (
            "fid", "sfid", "inception_score", "precision", "recall", "num_samples", "cfg_scale", "cfg_schedule")
            if k in gen}},
        "val_loss": None if val_loss is None else val_loss.get("val_loss"),
        "lin_probe_top1": None if probe is None else probe.get("top1"),
        "lin_probe": None if probe is None else {k: probe.get(k) for k in (
            "top1", "top5", "num_images", "epoch", "checkpoint") if k in probe},
    }


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_markdown(report: dict[str, Any]) -> str:
    """The one-row results table plus the settings it came from."""
    top1 = report["lin_probe_top1"]
    row = [report["name"], _cell(report["tokenizer"]["steps"], "d"), _cell(report["rfid"], ".2f"),
           str(report["gpt"].get("gpt_model", "n/a")), _cell(report["gpt"]["steps"], "d"),
           _cell(report["gfid"], ".2f"), _cell(report["val_loss"], ".4f"),
           _cell(None if top1 is None else 100 * top1, ".2f")]
    lines = [f"# AR probing: {report['name']}", "",
             "| run | tokenizer steps | rFID | GPT | GPT steps | gFID | val loss | lin-probe top-1 (%) |",
             "|---|---|---|---|---|---|---|---|", "| " + " | ".join(row) + " |", "", "## Settings", ""]
    lines.append(f"- tokenizer: `{report['tokenizer']['checkpoint']}` (config `{report['tokenizer']['config']}`)")
    gpt = {k: v for k, v in report["gpt"].items() if k not in ("checkpoint", "steps")}
    lines.append(f"- GPT: `{report['gpt']['checkpoint']}`; " + ", ".join(f"{k} {v}" for k, v in gpt.items()))
    if report["generation"]:
        lines.append("- generation: " + ", ".join(f"{k} {v}" for k, v in report["generation"].items()))
    if report["lin_probe"]:
        lines.append("- linear probe: " + ", ".join(f"{k} {v}" for k, v in report["lin_probe"].items()))
    return "\n".join(lines) + "\n"


def report_stage(args: argparse.Namespace) -> dict[str, Any]:
    report = build_report(args)
    out_dir = Path(args.exp_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    write_json_atomic(out_dir / "ar_probe.json", report)
    write_text_atomic(out_dir / "ar_probe.md", markdown)
    print(markdown, end="")
    return report


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: report_stage(args))


if __name__ == "__main__":
    main()
