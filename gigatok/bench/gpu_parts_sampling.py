"""gpu-check part that samples: GPT-B and GPT-XL generation eager, compiled and with CUDA graphs, SJD, and the
official sampler side by side.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
from collections.abc import Callable

import torch

from gigatok.bench import (
    _official_gpt,
    time_fn,
)
from gigatok.bench.gpu_parts import (  # the shared pieces
    OFFICIAL_SPEEDUP_GOAL,
    Check,
    _free_cuda,
)


def _generate_kwargs() -> set[str]:
    from gigatok.gpt.generate import generate

    return set(inspect.signature(generate).parameters)


def _time_generation(fn: Callable[[], object], check: Check) -> float:
    """Seconds per call: one warm-up (compile / graph capture), then the median of 1 (tiny) or 2 timed calls."""
    return statistics.median(time_fn(fn, 1 if check.tiny else 2, check.device))


def _official_sampler(check: Check, gpt: torch.nn.Module, name: str, tokens: int, vocab: int, classes: int,
                      batches: list[int], dtype: torch.dtype) -> dict[int, float | None]:
    """images/s of the official generate() with the same weights, at `batches` (None: skipped for the budget)."""
    args = argparse.Namespace(vocab_size=vocab, num_tokens=tokens, num_classes=classes)
    model, official_generate = _official_gpt(check.official_root, name, args)
    model.load_state_dict(gpt.state_dict(), strict=True)
    model = model.to(device=check.device, dtype=dtype).eval()
    rates: dict[int, float | None] = {}
    for batch in batches:
        if check.time_left() < 10:
            rates[batch] = None  # skipped: budget
            continue
        labels = torch.randint(0, classes, (batch,), device=check.device)

        def run() -> None:
            with torch.inference_mode():
                official_generate(model, labels, tokens, cfg_scale=4.0, cfg_interval=-1, cfg_schedule="constant",
                                  cfg_schedule_kwargs={}, temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)

        rates[batch] = batch / _time_generation(run, check)
    return rates


def part_generation(check: Check) -> dict:
    from gigatok.builders import build_gpt
    from gigatok.gpt.generate import generate

    models = ["debug"] if check.tiny else ["GPT-B", "GPT-XL"]
    batches = [1, 2] if check.tiny else [8, 64, 1]  # the goals are at 8 and 64: measured first
    tokens, vocab, classes = (16, 1024, 10) if check.tiny else (256, 16384, 1000)
    # Seconds a mode needs at least: the compiled decode step compiles once per batch shape (~30-60 s on a GPU).
    min_left = {"eager": 5, "compiled": 5 if check.tiny else 45, "cuda_graphs": 5 if check.tiny else 10}
    dtype = torch.bfloat16 if check.cuda else torch.float32
    known = _generate_kwargs()
    missing = sorted({"sampler", "cuda_graphs", "stats"} - known)
    modes = {"eager": {}, "compiled": {"compile": True}, "cuda_graphs": {"cuda_graphs": True}}
    result: dict = {"tokens": tokens, "cfg_scale": 4.0, "dtype": str(dtype).removeprefix("torch."),
                    "missing_generate_kwargs": missing, "skipped_for_budget": []}
    failures: list[str] = []
    for name in models:
        torch.manual_seed(0)
        with torch.device(check.device):
            gpt = build_gpt(name, vocab_size=vocab, block_size=tokens, num_classes=classes).to(check.device)
        gpt.output.weight.data.normal_(0, 0.02)  # a fresh head is zero (uniform logits): greedy would be all ties
        gpt = gpt.to(dtype).eval()
        entry: dict = {}
        for batch in batches:
            labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(batch))
            labels = labels.to(check.device)
            row: dict = {}
            greedy: dict[str, torch.Tensor] = {}
            for mode, kwargs in modes.items():
                if mode == "cuda_graphs" and not check.cuda:
                    row[mode] = "n/a on cpu"
                    continue
                if check.time_left() < min_left[mode]:
                    result["skipped_for_budget"].append(f"{name} b{batch} {mode}")
                    continue
                try:
                    # --tiny times the greedy runs themselves (one compile per shape instead of two on the CPU);
                    # else the exact sampling (top_k 0) is timed and one greedy run follows.
                    timed, sink = ({"top_k": 1}, greedy) if check.tiny else ({}, {})
                    seconds = _time_generation(
                        lambda: sink.__setitem__(mode, generate(gpt, labels, tokens, cfg_scale=4.0, **timed,
                                                                **kwargs)), check)
                    if not check.tiny and batch == batches[0]:  # one greedy run per model (and compile)
                        greedy[mode] = generate(gpt, labels, tokens, cfg_scale=4.0, top_k=1, **kwargs)
                    row[mode] = {"images_per_s": round(batch / seconds, 3), "seconds": round(seconds, 4)}
                except Exception as err:  # one mode failing (e.g. a missing keyword) leaves the others measured
                    row[mode] = f"fail: {type(err).__name__}: {err}"[:300]
                    failures.append(f"{name} b{batch} {mode}")
            codes = list(greedy.values())
            row["greedy_identical"] = all(torch.equal(c, codes[0]) for c in codes[1:]) if len(codes) > 1 else None
            row["greedy_modes"] = sorted(greedy)
            if row["greedy_identical"] is False:
                failures.append(f"{name} b{batch} greedy codes differ")
            if batch in (1, 2, 8):  # speculative Jacobi decoding at the small batches, where it pays
                row["sjd"] = _sjd_figures(gpt, labels, tokens, check, failures, f"{name} b{batch}")
            entry[f"batch_{batch}"] = row
        if check.official_root and check.tiny:
            entry["official"] = "n/a with --tiny (the official registry has no debug GPT)"
        elif check.official_root and name == "GPT-B":
            official_batches = [8, 64]
            try:
                rates = _official_sampler(check, gpt, name, tokens, vocab, classes, official_batches, dtype)
                entry["official"] = {}
                for batch, rate in rates.items():  # exact (plain) decoding only: SJD is reported beside it
                    row = entry[f"batch_{batch}"]
                    ours = [row[m]["images_per_s"] for m in modes if isinstance(row.get(m), dict)]
                    best = max(ours) if ours else None
                    entry["official"][f"batch_{batch}"] = "skipped: budget" if rate is None else {
                        "images_per_s": round(rate, 3), "ours_best_images_per_s": best,
                        "ratio": round(best / rate, 3) if best else None,
                        "goal_met": bool(best and best / rate >= OFFICIAL_SPEEDUP_GOAL)}
            except Exception as err:
                entry["official"] = f"fail: {type(err).__name__}: {err}"[:300]
                failures.append(f"{name} official")
        result[name] = entry
        gpt = None
        _free_cuda()
    result["greedy_identical"] = all(r.get("greedy_identical") is not False for e in result.values()
                                     if isinstance(e, dict) for r in e.values() if isinstance(r, dict))
    result["failures"] = failures
    if failures:
        result.update(passed_checks=False, error=f"{len(failures)} sub-measurement(s) failed: "
                                                 f"{', '.join(failures)}")
    return result


def _sjd_figures(gpt: torch.nn.Module, labels: torch.Tensor, tokens: int, check: Check, failures: list[str],
                 where: str) -> dict | str:
    """Speculative Jacobi decoding against plain sampling: images/s, forward passes per image, acceptance."""
    from gigatok.gpt.generate import generate

    if check.time_left() < 5:
        return "skipped: budget"
    try:
        stats: dict[str, dict] = {"plain": {}, "sjd": {}}
        rates = {}
        for sampler in ("plain", "sjd"):
            seconds = _time_generation(lambda: generate(gpt, labels, tokens, cfg_scale=4.0, sampler=sampler), check)
            generate(gpt, labels, tokens, cfg_scale=4.0, sampler=sampler, stats=stats[sampler])
            rates[sampler] = len(labels) / seconds
        plain_fwd, sjd_fwd = stats["plain"]["forwards"], stats["sjd"]["forwards"]
        return {"images_per_s": round(rates["sjd"], 3), "plain_images_per_s": round(rates["plain"], 3),
                "forwards": sjd_fwd, "plain_forwards": plain_fwd, "forward_reduction": round(plain_fwd / sjd_fwd, 3),
                **{k: v for k, v in stats["sjd"].items() if k != "forwards" and isinstance(v, (int, float))}}
    except Exception as err:
        failures.append(f"{where} sjd")
        return f"fail: {type(err).__name__}: {err}"[:300]
