"""One page of the numbers a composite recipe (`scripts/composite_cmd/*.sh`) produced, as Markdown and JSON.

The recipes chain the stages (train -> reconstruction metrics -> gFID and validation loss -> linear probes) and
call this last, once every stage has succeeded. It reads the result files those stages already wrote (see
`gigatok.infra.results`): the reconstruction results (rFID, PSNR, SSIM, LPIPS, codebook usage), the generation
metrics (gFID, IS, precision, recall; the best scale of a CFG search), the validation loss and the linear-probe
accuracies, plus the checkpoints they came from and the recipe's settings (`--setting NAME=VALUE`). `--include`
merges the page of a nested recipe (train_vq_and_eval.sh runs train_c2i_and_eval.sh for its AR probe).

Every input that is given must exist and hold its number: a missing file means a stage did not write where the
recipe looks, and the summary stops with a message naming the file and the stage that writes it.
Writes `<out>.md` and `<out>.json` (atomically) and prints the page. No torch: the step of a checkpoint is read from its file name (`{step:07d}.pt`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gigatok.errors import UserError
from gigatok.infra.cli import run_stage
from gigatok.infra.io import write_json_atomic, write_text_atomic
from gigatok.infra.results import find_gfid, find_recon_results, read_json

# (JSON key in the summary, row label, format, key in the stage's file) per input; "%" rows are fractions shown x100.
RECON_ROWS = (("rfid", "rFID", ".2f", "rfid"), ("psnr", "PSNR (dB)", ".2f", "psnr"), ("ssim", "SSIM", ".4f", "ssim"),
              ("lpips", "LPIPS", ".4f", "lpips"), ("codebook_usage", "codebook usage (%)", "%", "codebook_usage"),
              ("recon_num_images", "reconstructed images", "d", "num_images"))
GEN_ROWS = (("gfid", "gFID", ".2f", "fid"), ("inception_score", "Inception Score", ".2f", "inception_score"),
            ("gen_precision", "precision", ".3f", "precision"), ("gen_recall", "recall", ".3f", "recall"),
            ("cfg_scale", "CFG scale", "", "cfg_scale"), ("cfg_schedule", "CFG schedule", "", "cfg_schedule"),
            ("num_fid_samples", "generated images", "d", "num_samples"))
VAL_ROWS = (("val_loss", "validation loss", ".4f", "val_loss"),)
TOK_PROBE_ROWS = (("tok_lin_probe_top1", "tokenizer linear probe top-1 (%)", "%", "top1"),
                  ("tok_lin_probe_top5", "tokenizer linear probe top-5 (%)", "%", "top5"))
GPT_PROBE_ROWS = (("gpt_lin_probe_top1", "GPT linear probe top-1 (%)", "%", "top1"),
                  ("gpt_lin_probe_top5", "GPT linear probe top-5 (%)", "%", "top5"))
# input flag -> (rows, the key its file must hold, the stage that writes it)
INPUTS = {
    "recon": (RECON_ROWS, "rfid", "gigatok reconstruct (scripts/reconstruction.sh)"),
    "gfid": (GEN_ROWS, "fid", "gigatok sample_c2i (scripts/sample_c2i_search_cfg.sh)"),
    "val_loss": (VAL_ROWS, "val_loss", "gigatok val_loss_c2i (scripts/val_loss_c2i.sh)"),
    "tok_lin_probe": (TOK_PROBE_ROWS, "top1", "gigatok lin_probe (scripts/train_lin_probe.sh)"),
    "gpt_lin_probe": (GPT_PROBE_ROWS, "top1", "gigatok lin_probe_gpt (scripts/train_lin_probe_gpt.sh)"),
}
LABELS = {key: (label, fmt) for rows, _, _ in INPUTS.values() for key, label, fmt, _ in rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=str, required=True, help="the recipe's name, e.g. train_c2i_and_eval")
    parser.add_argument("--name", type=str, required=True, help="the experiment (title of the page)")
    parser.add_argument("--out", type=str, required=True, help="writes OUT.md and OUT.json")
    parser.add_argument("--tok-ckpt", type=str, default=None, help="the tokenizer checkpoint evaluated")
    parser.add_argument("--gpt-ckpt", type=str, default=None, help="the GPT checkpoint evaluated")
    parser.add_argument("--recon", type=str, default=None,
                        help="reconstruction results JSON, or the reconstruction --sample-dir holding it")
    parser.add_argument("--gfid", type=str, default=None,
                        help="generation metrics JSON, or the sampling --sample-dir (best scale of a search)")
    parser.add_argument("--val-loss", type=str, default=None, help="validation loss JSON")
    parser.add_argument("--tok-lin-probe", type=str, default=None, help="tokenizer lin_probe_acc.json")
    parser.add_argument("--gpt-lin-probe", type=str, default=None, help="GPT lin_probe_acc.json")
    parser.add_argument("--include", type=str, action="append", default=[],
                        help="the JSON page of a nested recipe, merged into this one (repeatable)")
    parser.add_argument("--setting", type=str, action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the recipe, listed on the page (repeatable)")
    return parser.parse_args(argv)


def checkpoint_entry(path: str | None) -> dict[str, Any] | None:
    """Path and step (from an official `{step:07d}.pt` name, else None) of a checkpoint."""
    if not path:
        return None
    stem = Path(path).stem
    return {"path": path, "step": int(stem) if stem.isdigit() else None}


def read_input(flag: str, path: str) -> tuple[dict[str, Any], str]:
    """(data, file) of one input; a UserError naming the file and its stage when it is missing or lacks its number."""
    _, needed, stage = INPUTS[flag]
    finder = {"recon": find_recon_results, "gfid": find_gfid}.get(flag)
    data, file = finder(path) if finder else (read_json(path), path)
    if data is None:
        raise UserError(f"--{flag.replace('_', '-')} '{path}': no results there. {stage} writes them; check that "
                        "it ran and where it wrote (its log names the file).")
    if needed not in data:
        raise UserError(f"'{file}' has no '{needed}' entry (keys: {sorted(data)[:12]}); it is not the output of "
                        f"{stage}.")
    if flag == "gfid":  # the sampling settings (CFG scale and schedule) are in the sample plan beside the results
        plan = read_json(Path(file).with_suffix(".plan.json"))
        data = {**{k: plan[k] for k in ("cfg_scale", "cfg_schedule") if plan and k in plan}, **data}
    return data, str(file)


def parse_settings(items: list[str]) -> dict[str, str]:
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--setting '{item}' is not NAME=VALUE.")
        settings[name] = value
    return settings


def build_summary(args: argparse.Namespace) -> dict[str, Any]:
    """Collect the inputs into the page's dict: metrics (JSON key -> value), their source files, checkpoints,
    settings, and the nested pages it includes."""
    metrics: dict[str, Any] = {}
    sources: dict[str, str] = {}
    checkpoints = {k: v for k, v in (("tokenizer", checkpoint_entry(args.tok_ckpt)),
                                      ("gpt", checkpoint_entry(args.gpt_ckpt))) if v is not None}
    included = []
    for path in args.include:  # nested recipes first: this recipe's own numbers win
        part = read_json(path)
        if part is None or "metrics" not in part:
            raise UserError(f"--include '{path}' is not a recipe summary (gigatok recipe_summary writes them).")
        metrics.update(part["metrics"])
        sources.update(part.get("sources", {}))
        checkpoints = {**part.get("checkpoints", {}), **checkpoints}
        included.append({"recipe": part.get("recipe"), "name": part.get("name"), "json": path,
                         "markdown": str(Path(path).with_suffix(".md"))})
    for flag in INPUTS:
        path = getattr(args, flag)
        if not path:
            continue
        data, file = read_input(flag, path)
        for key, _, _, source_key in INPUTS[flag][0]:
            if source_key in data:
                metrics[key] = data[source_key]
                sources[key] = file
    order = list(LABELS)  # reconstruction, generation, validation loss, probes, whatever the inputs' order
    metrics = dict(sorted(metrics.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    return {"recipe": args.recipe, "name": args.name, "metrics": metrics, "sources": sources,
            "checkpoints": checkpoints, "settings": parse_settings(args.setting), "includes": included}


def format_value(value: Any, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if fmt == "%":
            return f"{100 * value:.2f}"
        if fmt == "d":
            return str(int(value))
        return format(value, fmt)
    return str(value)


def render_markdown(summary: dict[str, Any]) -> str:
    """The page: one table of the numbers (with the number of the file each came from), the result files, the
    checkpoints and the settings."""
    lines = [f"# {summary['recipe']}: {summary['name']}", "", "| metric | value | from |", "|---|---|---|"]
    # Each result file once, numbered in the order of the table.
    files = list(dict.fromkeys(summary["sources"][k] for k in summary["metrics"] if k in summary["sources"]))
    for key, value in summary["metrics"].items():
        label, fmt = LABELS.get(key, (key, ""))
        source = summary["sources"].get(key)
        lines.append(f"| {label} | {format_value(value, fmt)} | {'' if source is None else files.index(source) + 1} |")
    if not summary["metrics"]:
        lines.append("| (no results) | | |")
    if files:
        lines += ["", "Result files:", ""] + [f"{i}. `{file}`" for i, file in enumerate(files, 1)]
    if summary["checkpoints"]:
        lines += ["", "## Checkpoints", ""]
        for role, entry in summary["checkpoints"].items():
            step = "" if entry.get("step") is None else f" (step {entry['step']})"
            lines.append(f"- {'GPT' if role == 'gpt' else role}: `{entry['path']}`{step}")
    if summary["settings"]:
        lines += ["", "## Settings", "", "| variable | value |", "|---|---|"]
        lines += [f"| {name} | `{value}` |" for name, value in summary["settings"].items()]
    for part in summary["includes"]:
        lines += ["", f"Includes {part['recipe']} ({part['name']}): `{part['markdown']}`"]
    return "\n".join(lines) + "\n"


def summary_stage(args: argparse.Namespace) -> dict[str, Any]:
    summary = build_summary(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(summary)
    write_json_atomic(out.with_name(out.name + ".json"), summary)
    write_text_atomic(out.with_name(out.name + ".md"), markdown)
    print(markdown, end="")
    print(f"summary: {out}.md (and .json)")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: summary_stage(args))


if __name__ == "__main__":
    main()
