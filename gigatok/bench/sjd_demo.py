"""Speculative Jacobi decoding against plain decoding on the CPU demo's trained GPT (`results/demo`).

    python -m gigatok.bench sjd [--demo-dir results/demo] [--images 50] [--rounds 3] [--seeds 0,1,2]
        [--window 16] [--skip-quality] [--out PATH]

Speed: `--images` images at batch 1 (classes 0, 1, ..., cycling), sampled with the demo's settings (its recorded
`samples` command: CFG scale, temperature, top-k/p), plain and SJD alternating for `--rounds` rounds in this process;
median seconds per image, forward passes per image, acceptance rate. Greedy (top-k 1) codes of both samplers are
compared for the same images, at batch 1 and as one batch.
Quality: the demo's `samples` command is run again per seed and sampler (`--global-seed`, `--sampler`): class
agreement by the demo's digit classifier and FID against the held-out digits (when the demo computed FID), so
SJD's figures can be set against the run-to-run spread of plain sampling.
Ends with one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gigatok.errors import UserError
from gigatok.infra.io import write_json_atomic
from gigatok.infra.stage_runner import first_match, read_json


def _flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    """The value after `name` in a recorded command (last occurrence), or `default`."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values[-1] if values else default


def recorded_samples_command(demo_dir: Path) -> list[str]:
    """The demo's `samples` stage command: ["gigatok.stages.sample_c2i", *flags]."""
    record = demo_dir / "stages" / "samples.json"
    if not record.is_file():
        raise UserError(f"'{record}' not found: run the demo first (bash scripts/demo.sh --out {demo_dir}).")
    command = read_json(record).get("command")
    if not command or command[0] != "gigatok.stages.sample_c2i":
        raise UserError(f"'{record}' holds no sample_c2i command: re-run the demo (bash scripts/demo.sh).")
    return list(command)


def time_samplers(gpt: torch.nn.Module, settings: dict[str, Any], images: int, rounds: int,
                  window: int) -> dict[str, Any]:
    """Per-image wall time (median over rounds), forwards per image and acceptance, both samplers at batch 1."""
    from gigatok.gpt.generate import generate

    labels = [torch.tensor([i % gpt.config.num_classes]) for i in range(images)]
    runs: dict[str, dict[str, list[float]]] = {s: {"seconds": [], "forwards": [], "acceptance": []}
                                               for s in ("plain", "sjd")}
    for _ in range(rounds):
        for sampler in ("plain", "sjd"):
            stats: dict[str, Any] = {}
            start = time.perf_counter()
            for i, label in enumerate(labels):
                generate(gpt, label, gpt.config.block_size, generator=torch.Generator().manual_seed(i),
                         sampler=sampler, sjd_window=window, stats=stats, **settings)
                runs[sampler]["forwards"].append(stats["forwards"])
                runs[sampler]["acceptance"].append(stats.get("acceptance_rate", 0.0))
            runs[sampler]["seconds"].append((time.perf_counter() - start) / images)
    out = {}
    for sampler, r in runs.items():
        out[sampler] = {"s_per_image": statistics.median(r["seconds"]), "s_per_image_rounds": r["seconds"],
                        "forwards_per_image": statistics.fmean(r["forwards"])}
    out["sjd"]["acceptance_rate"] = statistics.fmean(runs["sjd"]["acceptance"])
    out["wall_speedup"] = out["plain"]["s_per_image"] / out["sjd"]["s_per_image"]
    out["forward_reduction"] = out["plain"]["forwards_per_image"] / out["sjd"]["forwards_per_image"]
    return out


def greedy_identical(gpt: torch.nn.Module, settings: dict[str, Any], images: int, window: int) -> bool:
    from gigatok.gpt.generate import generate

    greedy = {**settings, "top_k": 1}
    labels = torch.arange(images) % gpt.config.num_classes
    n = gpt.config.block_size
    plain = generate(gpt, labels, n, **greedy)
    batched = generate(gpt, labels, n, sampler="sjd", sjd_window=window, **greedy)
    single = torch.cat([generate(gpt, labels[i:i + 1], n, sampler="sjd", sjd_window=window, **greedy)
                        for i in range(images)])
    return bool(torch.equal(plain, batched) and torch.equal(plain, single))


def sample_quality(command: list[str], demo_dir: Path, seeds: list[int], window: int) -> dict[str, Any]:
    """Re-run the demo's samples command per seed and sampler; class agreement and FID of each run."""
    import numpy as np

    from gigatok.engine import digit_classifier as dc

    judge_dir = demo_dir / "classifier"
    judge = read_json(judge_dir / "classifier.json")
    model = dc.DigitClassifier(image_size=judge["image_size"])
    model.load_state_dict(torch.load(judge_dir / "classifier.pt", weights_only=True))
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "sjd": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for sampler in ("plain", "sjd"):
                out = Path(tmp) / f"{sampler}_{seed}"
                argv = [sys.executable, "-m", *command, "--sample-dir", str(out), "--global-seed", str(seed),
                        "--sampler", sampler, "--sjd-window", str(window)]
                start = time.perf_counter()
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
                npz = first_match(out, "*.npz")
                with np.load(npz) as batch:
                    images_uint8, labels = batch["arr_0"], batch["arr_1"]
                results = npz.with_suffix(".json")
                runs[sampler].append({
                    "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                    "class_agreement": float((dc.predict_digits(model, images_uint8) == labels).mean()),
                    "fid": read_json(results)["fid"] if results.is_file() else None})
    summary: dict[str, Any] = {"runs": runs}
    for metric in ("class_agreement", "fid"):
        values = {s: [r[metric] for r in rs if r[metric] is not None] for s, rs in runs.items()}
        if not all(values.values()):
            continue
        summary[metric] = {s: {"mean": statistics.fmean(v), "min": min(v), "max": max(v),
                               "std": statistics.stdev(v) if len(v) > 1 else 0.0} for s, v in values.items()}
        spread = max(summary[metric]["plain"]["std"], summary[metric]["sjd"]["std"])
        delta = summary[metric]["sjd"]["mean"] - summary[metric]["plain"]["mean"]
        summary[metric].update(delta=delta, within_spread=abs(delta) <= 2 * spread)
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gigatok.api import load_gpt

    if args.threads:
        torch.set_num_threads(args.threads)
    demo_dir = Path(args.demo_dir)
    command = recorded_samples_command(demo_dir)
    argv = command[1:]
    gpt_ckpt = _flag(argv, "--gpt-ckpt")
    if gpt_ckpt is None or not Path(gpt_ckpt).is_file():
        raise UserError(f"the demo's GPT checkpoint '{gpt_ckpt}' is missing: re-run the demo (bash scripts/demo.sh).")
    gpt = load_gpt(gpt_ckpt)
    settings = {"cfg_scale": float(_flag(argv, "--cfg-scale", "1.0")),
                "cfg_schedule": _flag(argv, "--cfg-schedule", "constant"),
                "temperature": float(_flag(argv, "--temperature", "1.0")),
                "top_k": int(_flag(argv, "--top-k", "0")), "top_p": float(_flag(argv, "--top-p", "1.0"))}
    result: dict[str, Any] = {"bench": "sjd", "demo_dir": str(demo_dir), "gpt_ckpt": gpt_ckpt, "window": args.window,
                              "codes_per_image": gpt.config.block_size, "settings": settings,
                              "threads": torch.get_num_threads()}
    result["greedy_identical"] = greedy_identical(gpt, settings, args.images, args.window)
    result["batch1"] = time_samplers(gpt, settings, args.images, args.rounds, args.window)
    if not args.skip_quality:
        result["quality"] = sample_quality(command, demo_dir, args.seeds, args.window)
    if args.out:
        write_json_atomic(args.out, result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--demo-dir", default="results/demo",
                        help="the CPU demo's output folder (default: %(default)s)")
    parser.add_argument("--images", type=int, default=50, help="images timed at batch 1 per sampler and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (the median is reported)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2],
                        help="quality: sampling seeds per sampler, comma-separated (default: 0,1,2)")
    parser.add_argument("--window", type=int, default=16, help="SJD drafts verified per forward pass")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the timing (default: torch's choice; the tiny demo GPT decodes "
                             "fastest with 1)")
    parser.add_argument("--skip-quality", action="store_true", help="only the speed and greedy figures")
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")


def main(args: argparse.Namespace) -> int:
    print(json.dumps(run(args)))
    return 0
