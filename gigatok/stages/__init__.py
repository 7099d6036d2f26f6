"""Level 3: the stages. One module per stage, each with a `main(argv)` that reads top to bottom.

Run a stage as `gigatok <stage> [flags]` (the console command), `python -m gigatok <stage> [flags]`, or through
torchrun as `-m gigatok.stages.<stage>` (what `scripts/*.sh` do). Nothing imports a stage: the dispatcher below
finds each one by name, so importing this package costs nothing.
"""
from __future__ import annotations

import importlib
import sys

# name -> what it does (official script in brackets). The module is gigatok.stages.<name>, except `bench`.
STAGES: dict[str, str] = {
    "train_vq": "train a tokenizer [vq_train.py, vq_train_fsdp.py]",
    "reconstruct": "reconstruct images: rFID, PSNR, SSIM, LPIPS, codebook usage, grids [reconstruction.sh]",
    "val_reference": "ImageNet val reference batch for rFID [val.sh]",
    "extract_codes": "tokenize a dataset into codes for AR training [extract_codes_c2i.py]",
    "train_c2i": "train a class-conditional GPT [train_c2i.py, train_c2i_fsdp.py]",
    "sample_c2i": "sample for gFID and evaluate, or search the CFG scale [sample_c2i_cfg_search.py]",
    "sample_c2i_visualization": "per-class sample grids [sample_c2i_ddp_visualization.py]",
    "val_loss_c2i": "validation loss of a GPT [val_loss_cal.py]",
    "lin_probe": "linear probe of a tokenizer [tokenizer/lin_probe/lin_probe.py]",
    "lin_probe_gpt": "linear probe of a GPT [autoregressive/lin_probe/lin_probe.py]",
    "evaluate": "ADM metrics of a sample batch against a reference batch [evaluator.py]",
    "ar_probe_report": "one table of an AR-probing run's numbers",
    "recipe_summary": "one page of a composite recipe's numbers [scripts/composite_cmd/*.sh]",
    "export": "export a checkpoint's weights as safetensors + config",
    "demo": "the CPU demo: every stage end to end on digits, in minutes",
    "bench": "speed and memory benchmarks, side by side with the official code (gigatok.bench)",
}


def module_of(stage: str) -> str:
    """The module whose `main(argv)` runs `stage`."""
    return "gigatok.bench" if stage == "bench" else f"gigatok.stages.{stage}"


def usage() -> str:
    width = max(map(len, STAGES))
    lines = [f"  {name:<{width}}  {what}" for name, what in STAGES.items()]
    return ("usage: gigatok <stage> [flags]   (or: python -m gigatok <stage> [flags])\n\nstages:\n"
            + "\n".join(lines) + "\n\n`gigatok <stage> --help` lists a stage's flags.")


def main(argv: list[str] | None = None) -> int:
    """`gigatok <stage> [flags]`: run one stage's `main` with the remaining arguments; returns its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    stage, rest = argv[0].replace("-", "_"), argv[1:]
    if stage not in STAGES:
        import difflib

        close = difflib.get_close_matches(stage, STAGES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"error: unknown stage '{argv[0]}'.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    saved, sys.argv = sys.argv, [f"gigatok {stage}", *rest]  # argparse names the command in its messages
    try:
        result = importlib.import_module(module_of(stage)).main(rest)
    finally:
        sys.argv = saved
    return result if isinstance(result, int) else 0
