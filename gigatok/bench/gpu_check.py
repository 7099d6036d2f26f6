"""`python -m gigatok.bench gpu-check`: one prepared command that exercises every GPU path of the project.

    python -m gigatok.bench gpu-check [--device cuda|cpu] [--tiny] [--budget-s 480] [--out PATH]
        [--official-root PATH] [--inception-weights PATH|random] [--parts a,b,...]

A GPU is lent only now and then, for minutes, so the whole check runs as one command in a fixed order of parts,
each with its own share of the time budget (default 480 s on CUDA). A part raising an exception is reported as
"fail" (error and traceback tail) and the check goes on; a part whose share of the budget is already spent when its
turn comes is "skipped" (reason "budget"). Each part prints one progress line to stderr as it ends; the run ends
by printing ONE JSON object on stdout (also written atomically to `--out`):

    {"device": name, "torch": version, "cuda": version | null, "cudnn": version | null, "tiny": bool,
     "budget_s": s, "total_s": s, "parts": {name: {"status": "pass" | "fail" | "skipped", "seconds": s, ...}},
     "passed": bool}

Exit code 0 when every part passed, 1 otherwise. `--tiny` swaps every model for its debug size (debug tokenizer
configs at 16 px, the debug GPT, 16 tokens, batches 1 and 2) so that `--device cpu --tiny` runs every part in CI;
CUDA-only figures (CUDA graphs) then read "n/a on cpu".

Parts, in order (the JSON keys):
    tokenizer_precision     S-S and B-L tokenizer forward + backward in fp32 (TF32 off), bf16 autocast and fp16
                            autocast + GradScaler on the device, against fp32 on the CPU: relative L2 error of the
                            reconstruction and of named parameters' gradients, within TOLERANCES.
    tokenizer_xl_xxl_train  XL-XXL training step with activation checkpointing at the largest batch that fits
                            (doubling from 1 until CUDA OOM, 64 or the budget); step time and peak memory.
    fsdp_world1             FSDP2 at world size 1 (NCCL / gloo) through gigatok.infra.parallel.parallelize for the
                            tokenizer and the GPT, against the unwrapped model: losses and parameters after 3 steps.
    gpt_train               GPT-B (32x256) and GPT-XL (16x256) train steps, eager and compiled: tokens/s and MFU
                            over the card's bf16 dense peak (BF16_PEAK_FLOPS).
    generation              GPT-B and GPT-XL sampling at batch 1, 8, 64, cfg 4.0, 256 tokens: images/s eager,
                            compiled and with CUDA graphs, greedy codes identical; SJD forwards and acceptance; with
                            --official-root the official sampler side by side (GPT-B, batch 8 and 64).
    adm_inception           the ADM evaluator's Inception feature pass, images/s.
    seed_commands           the official README's two seed commands (scripts/reconstruction.sh,
                            scripts/sample_c2i_visualization.sh) as subprocesses with official-format checkpoints.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable

import torch

from gigatok.bench.gpu_parts import (  # noqa: F401 - re-exported: the report's constants
    FSDP_TOLERANCE,
    PART_BUDGET_S,
    PARTS,
    TOLERANCES,
    Check,
    _free_cuda,
)
from gigatok.bench.gpu_parts_eval import part_adm_inception, part_seed_commands
from gigatok.bench.gpu_parts_sampling import part_generation
from gigatok.bench.gpu_parts_train import (
    part_fsdp_world1,
    part_gpt_train,
    part_tokenizer_precision,
    part_tokenizer_xl_xxl_train,
)

PART_FUNCTIONS: dict[str, Callable[[Check], dict]] = {
    "tokenizer_precision": part_tokenizer_precision, "tokenizer_xl_xxl_train": part_tokenizer_xl_xxl_train,
    "fsdp_world1": part_fsdp_world1, "gpt_train": part_gpt_train, "generation": part_generation,
    "adm_inception": part_adm_inception, "seed_commands": part_seed_commands,
}

# ---------------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------------

def _run_part(name: str, check: Check) -> dict:
    start = time.perf_counter()
    try:
        figures = PART_FUNCTIONS[name](check)
        status = figures.pop("status", None) or ("fail" if figures.get("passed_checks") is False else "pass")
        if status == "fail":
            figures.setdefault("error", "a check of this part failed (see its figures)")
        entry = {"status": status, **figures}
    except Exception as err:  # noqa: BLE001 - any error is this part's failure; the check goes on
        entry = {"status": "fail", "error": f"{type(err).__name__}: {err}"[:2000],
                 "traceback": traceback.format_exc()[-2000:]}
    finally:
        _free_cuda()
    entry["seconds"] = round(time.perf_counter() - start, 2)
    return entry


def _environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                             platform.machine() or "cpu")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn}


def run_check(device: torch.device, tiny: bool, budget_s: float, parts: list[str],
              official_root: str | None = None, inception_weights: str | None = None) -> dict:
    """Run `parts` in the fixed order of PARTS; each gets its scaled share of `budget_s`, and a part whose share
    has already run out when its turn comes is skipped. Returns the report (see the module docstring)."""
    start = time.perf_counter()
    scale = budget_s / sum(PART_BUDGET_S[p] for p in parts)
    report = {**_environment(device), "tiny": tiny, "budget_s": budget_s, "parts": {}}
    slot_end = start
    for name in [p for p in PARTS if p in parts]:
        slot_end += PART_BUDGET_S[name] * scale
        now = time.perf_counter()
        if now >= slot_end or now - start >= budget_s:
            entry = {"status": "skipped", "reason": "budget", "seconds": 0.0}
        else:
            check = Check(device, tiny, deadline=min(slot_end, start + budget_s), official_root=official_root,
                          inception_weights=inception_weights)
            entry = _run_part(name, check)
        report["parts"][name] = entry
        print(f"[gpu-check] {name}: {entry['status']} in {entry['seconds']:.1f}s"
              + (f" ({entry.get('error') or entry.get('reason')})" if entry["status"] != "pass" else ""),
              file=sys.stderr, flush=True)
    report["total_s"] = round(time.perf_counter() - start, 2)
    report["passed"] = all(e["status"] == "pass" for e in report["parts"].values())
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--tiny", action="store_true",
                        help="debug-size models, few tokens and small batches (the CI form: under a minute on CPU)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="total time budget in seconds, shared by the parts (default: 480 on CUDA, 600 on CPU)")
    parser.add_argument("--out", default=None, help="also write the JSON report to this file (atomically)")
    parser.add_argument("--official-root", default=None,
                        help="checkout of SilentView/GigaTok (with autoregressive/): time the official sampler too")
    parser.add_argument("--inception-weights", default=None,
                        help="adm_inception: the Inception weights file, or 'random' to time the pass without one "
                             "(default: the evaluator's usual lookup; --tiny always uses random weights)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, in the fixed order (default: all: {','.join(PARTS)})")


def run_from_args(args: argparse.Namespace) -> int:
    """Entry point of `python -m gigatok.bench gpu-check`; prints the report and returns the exit code."""
    from gigatok.errors import UserError
    from gigatok.infra.io import write_json_atomic

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise UserError(f"--parts: unknown part(s) {unknown}; choose from {','.join(PARTS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch; pass --device cpu")
    budget = args.budget_s if args.budget_s is not None else (480.0 if device.type == "cuda" else 600.0)
    report = run_check(device, args.tiny, budget, parts, args.official_root, args.inception_weights)
    text = json.dumps(report)
    if args.out:
        write_json_atomic(args.out, report)
    print(text)
    return 0 if report["passed"] else 1
