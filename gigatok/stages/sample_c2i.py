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

Settings: the official flags (`--help`), each a field of `gigatok.config.GPTSampleConfig` (sections model, tokenizer,
sample, fid); `--config FILE` reads a YAML under them and `--section.key=value` overrides any field. The GPT's shape
is the one its checkpoint records.

Run it with torchrun (scripts/sample_c2i.sh) or as one process (`gigatok sample_c2i ...`).
"""
from __future__ import annotations

import argparse
import dataclasses
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

from gigatok.config import GPTSampleConfig, VQConfig
from gigatok.config.flags import (
    add_config_flags,
    given_flags,
    resolve_config,
    split_overrides,
)
from gigatok.engine.cfg_search import (
    CSV_COLUMNS,
    SEARCH_SCHEDULES,
    SEARCH_STEP,
    append_csv_row,
    csv_path,
    next_search_scale,
    read_csv_rows,
    read_results,
    row_scale,
    search_start_scale,
)
from gigatok.engine.sampling import (
    add_sampler_args,
    cfg_schedule_kwargs,
    check_checkpoint_files,
    check_sampler_config,
    chunk_bounds,
    chunk_path,
    chunk_seed,
    done_chunks,
    generate_images,
    load_chunks,
    load_models,
    load_tokenizer_config,
    resolve_image_sizes,
    sampling_dtype,
    save_chunk,
    uniform_class_labels,
)
from gigatok.errors import UserError
from gigatok.eval.adm import (
    check_evaluator,
    evaluate_npz,
    format_results,
    write_results,
)
from gigatok.eval.metrics import MIN_IMAGES
from gigatok.eval.npz import npz_info, write_image_npz
from gigatok.infra.cli import run_stage
from gigatok.infra.dist import init_distributed, setup_logging
from gigatok.infra.io import write_json_atomic

logger = logging.getLogger("gigatok")
GT_NPZ_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
              "VIRTUAL_imagenet256_labeled.npz")
WAIT_TIMEOUT = timedelta(hours=6)  # ranks wait while rank 0 packs and evaluates 50k images (or TF does)
# Test hook: called with the chunk index after each chunk file is written (tests stop a run part-way with it).
_after_chunk: Callable[[int], None] | None = None


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    """(args, flag table, `--section.key=value` overrides)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    table = add_sampler_args(parser)  # model / tokenizer / sample sections, --config, --device
    table.update(add_config_flags(parser.add_argument_group("fid (config section 'fid')"), GPTSampleConfig, "fid"))
    unused = parser.add_argument_group("accepted for compatibility")
    unused.add_argument("--merge", action="store_true", help="no effect (unused officially too)")
    unused.add_argument("--qualitative", action="store_true", help="no effect (unused officially too)")
    unused.add_argument("--qual-num", type=int, default=100, help="no effect (unused officially too)")
    unused.add_argument("--flash-attn", action="store_true",
                        help="no effect: PyTorch SDPA picks its flash kernel where it applies")
    # Official flags of LlamaGen's sample_c2i_ddp.py that differ.
    unused.add_argument("--vq-model", type=str, default=None, help="ignored: --tok-config decides")
    unused.add_argument("--codebook-size", type=int, default=None, help="checked against --tok-config")
    unused.add_argument("--codebook-embed-dim", type=int, default=None, help="checked against --tok-config")
    args, rest = parser.parse_known_args(argv)
    return args, table, split_overrides(parser, rest)


def check_flags(config: GPTSampleConfig, args: argparse.Namespace, vq_config: VQConfig) -> list[str]:
    """Reject bad settings before any work; returns warnings for accepted flags that do nothing here."""
    fid, s = config.fid, config.sample
    if fid.search and (not fid.evaluate or fid.time_cnt_only):
        raise UserError("--search needs the FID of every scale: drop --no-eval / --time-cnt-only.")
    if fid.search and s.cfg_schedule not in SEARCH_SCHEDULES:
        raise UserError(f"--search supports --cfg-schedule {', '.join(SEARCH_SCHEDULES)} (as officially), "
                        f"got '{s.cfg_schedule}'.")
    init = vq_config.model.init_args
    for flag, given, actual in [("--codebook-size", args.codebook_size, init.codebook_size),
                                ("--codebook-embed-dim", args.codebook_embed_dim, init.codebook_embed_dim)]:
        if given is not None and given != actual:
            raise UserError(f"{flag} {given} differs from the tokenizer config's {actual} "
                            f"('{config.tokenizer.tok_config}'); omit the flag, the config decides.")
    unused = {  # flag -> (given, why it does nothing)
        "--merge": (args.merge, ""),
        "--qualitative": (args.qualitative, "; class grids: scripts/sample_c2i_visualization.sh"),
        "--flash-attn": (args.flash_attn, " (PyTorch SDPA already uses flash attention where it applies)"),
        "--vq-model": (args.vq_model is not None, "; the tokenizer is --tok-config"),
    }
    notes = [f"{flag} is accepted for compatibility but has no effect here{why}"
             for flag, (given, why) in unused.items() if given]
    if fid.search and s.cfg_schedule == "rectangular":
        notes.append("--search with the rectangular schedule searches the scale at the default window (0.05, 1.0) "
                     "only; the official script also grid-searches the window")
    return notes


def eval_python(config: GPTSampleConfig) -> str:
    """The evaluator's interpreter: --eval-python-path, else $EVAL_PYTHON_PATH, else this one ('python')."""
    return config.fid.eval_python_path or os.environ.get("EVAL_PYTHON_PATH") or "python"


def check_evaluation_inputs(config: GPTSampleConfig, image_size_eval: int) -> list[str]:
    """Everything the evaluation needs exists, checked before any sampling; returns warnings."""
    gt = Path(config.fid.gt_npz_path).expanduser()
    if not gt.is_file():
        raise UserError(
            f"reference batch --gt-npz-path '{config.fid.gt_npz_path}' not found. gFID compares against OpenAI's ADM "
            f"reference batch for ImageNet 256x256: download {GT_NPZ_URL} (from guided-diffusion's evaluations/"
            "README) and pass its path, or pass --no-eval to only sample.")
    info = npz_info(gt)  # a malformed file fails here (NpzFormatError), not after the sampling
    for what, count in (("--num-fid-samples", config.fid.num_fid_samples), (f"the reference '{gt}'", info["count"])):
        if count < MIN_IMAGES:
            raise UserError(f"{what} is {count} image(s): the ADM metrics need at least {MIN_IMAGES} per set. Sample "
                            "more, or pass --no-eval to only sample.")
    check_evaluator(eval_python(config), config.fid.inception_weights)  # missing weights / TF graph fail here
    if (info["height"], info["width"]) != (image_size_eval, image_size_eval):
        return [(f"the samples will be {image_size_eval} px but the reference '{gt.name}' holds "
                f"{info['height']}x{info['width']} images: not comparable to published numbers (pass "
                f"--image-size-eval {info['height']} to resize the samples as LlamaGen does)")]
    return []


@dataclass
class Run:
    """What every scale of one invocation shares."""

    config: GPTSampleConfig  # with the GPT's resolved size, vocabulary, length and classes
    tokenizer: torch.nn.Module
    gpt: torch.nn.Module
    device: torch.device
    rank: int
    world_size: int
    image_size: int
    image_size_eval: int
    schedule_kwargs: dict[str, float]
    precision: str
    group: Any  # gloo group with a long timeout (None without a process group)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        logger.info(message)


def annotation(schedule_kwargs: dict[str, float]) -> str:
    """The official CSV 'annotation' column: 'window_start=0.18' for step, '' for constant."""
    return ";".join(f"{key}={value:.2f}" for key, value in schedule_kwargs.items())


def folder_name(config: GPTSampleConfig, image_size: int, image_size_eval: int) -> str:
    """The official folder name; the step schedule's start ratio is added (officially two ratios share a folder)."""
    s = config.sample
    schedule = f"{s.cfg_schedule}-start-{s.step_start_ratio}" if s.cfg_schedule == "step" else s.cfg_schedule
    return (f"{config.model.gpt_model}-size-{image_size}-size-{image_size_eval}-topk-{s.top_k}-topp-{s.top_p}-"
            f"temperature-{s.temperature}-cfg-{round(s.cfg_scale, 4)}-{schedule}-seed-{s.global_seed}")


def _abs(ref: str | None) -> str | None:
    return ref if ref is None or ref.startswith("hf://") else os.path.abspath(os.path.expanduser(ref))


def sampling_plan(run: Run, config: GPTSampleConfig) -> dict[str, Any]:
    """Everything that decides the images (not the device or the number of ranks)."""
    m, s, tok = config.model, config.sample, config.tokenizer
    return {"num_samples": config.fid.num_fid_samples, "num_classes": m.num_classes, "class_plan": "uniform",
            "chunk_size": s.per_proc_batch_size, "global_seed": s.global_seed, "gpt_model": m.gpt_model,
            "gpt_ckpt": _abs(m.gpt_ckpt), "ema": s.ema, "pos_type": run.gpt.config.pos_type,
            "qk_norm": run.gpt.config.use_qk_norm, "cls_token_num": m.cls_token_num, "precision": run.precision,
            "vq_ckpt": _abs(tok.vq_ckpt), "tok_config": _abs(tok.tok_config), "image_size": run.image_size,
            "image_size_eval": run.image_size_eval, "cfg_scale": round(s.cfg_scale, 4),
            "cfg_schedule": s.cfg_schedule, "cfg_schedule_kwargs": run.schedule_kwargs,
            "cfg_interval": s.cfg_interval, "top_k": s.top_k, "top_p": s.top_p, "temperature": s.temperature}


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


def sample_chunks(run: Run, config: GPTSampleConfig, chunk_dir: Path, labels: np.ndarray) -> list[float]:
    """Sample the chunks not on disk yet (all of them with --time-cnt-only), dealt round-robin to the ranks.

    Returns:
        This rank's seconds per chunk.
    """
    s = config.sample
    bounds = chunk_bounds(config.fid.num_fid_samples, s.per_proc_batch_size)
    done = set() if config.fid.time_cnt_only else done_chunks(chunk_dir, len(bounds))
    pending = _from_rank0(run, [i for i in range(len(bounds)) if i not in done])  # one listing for all ranks
    mine = pending[run.rank::run.world_size]
    run.log(f"{len(bounds)} chunks of <= {s.per_proc_batch_size} images: {len(bounds) - len(pending)} already on "
            f"disk, {len(pending)} to sample ({len(mine)} on rank 0)")
    seconds = []
    for i in tqdm(mine, disable=not run.main, desc="sample"):
        start, end = bounds[i]
        tic = time.perf_counter()
        batch = torch.from_numpy(labels[start:end]).to(run.device)  # (B,) int64
        images_uint8 = generate_images(run.gpt, run.tokenizer, batch, chunk_seed(s.global_seed, start), config,
                                       run.schedule_kwargs, run.image_size, run.image_size_eval)  # (B, S, S, 3)
        seconds.append(time.perf_counter() - tic)
        save_chunk(chunk_path(chunk_dir, i), images_uint8, labels[start:end])
        if _after_chunk is not None:
            _after_chunk(i)
    return seconds


def csv_row(config: GPTSampleConfig, run: Run, plan: dict[str, Any], results: dict[str, Any],
            sample_seconds: float | None, eval_seconds: float | None) -> dict[str, Any]:
    def num(key: str) -> float | None:
        return None if results.get(key) is None else float(results[key])
    return {"annotation": annotation(run.schedule_kwargs), "cfg_scale": round(config.sample.cfg_scale, 4),
            "cfg_schedule": config.sample.cfg_schedule, "FID": num("fid"), "Inception Score": num("inception_score"),
            "Precision": num("precision"), "Recall": num("recall"), "sFID": num("sfid"),
            "num_samples": results.get("num_samples", config.fid.num_fid_samples),
            "gpt_ckpt": config.model.gpt_ckpt or "", "setting": setting_id(plan),
            "evaluator": results.get("evaluator", ""),
            "sample_seconds": None if sample_seconds is None else round(sample_seconds, 1),
            "eval_seconds": None if eval_seconds is None else round(eval_seconds, 1),
            "time": datetime.now().isoformat(timespec="seconds")}


def run_scale(run: Run, cfg_scale: float) -> dict[str, Any] | None:
    """Sample, pack and evaluate one CFG scale (reusing what is on disk); returns the results on every rank
    (None with --no-eval / --time-cnt-only)."""
    config = dataclasses.replace(run.config, sample=dataclasses.replace(run.config.sample, cfg_scale=cfg_scale))
    fid = config.fid
    sample_dir = Path(config.sample.sample_dir) / folder_name(config, run.image_size, run.image_size_eval)
    npz_path, plan_file = (sample_dir.with_name(sample_dir.name + suffix) for suffix in (".npz", ".plan.json"))
    plan = sampling_plan(run, config)
    check_plan(plan_file, plan, sample_dir)  # every rank reads it: all fail alike
    evaluating = fid.evaluate and not fid.time_cnt_only
    results = read_results(sample_dir) if evaluating else None
    run.log(f"cfg {cfg_scale} ({config.sample.cfg_schedule}) -> '{sample_dir}'")
    sample_seconds = eval_seconds = None
    if results is not None:
        run.log("results exist; not sampling again")
    else:
        if run.main:
            write_json_atomic(plan_file, plan, indent=2)
        labels = uniform_class_labels(fid.num_fid_samples, config.model.num_classes)  # (N,) int64
        tic = time.perf_counter()
        seconds = sample_chunks(run, config, sample_dir / "chunks", labels)
        all_seconds = [s for part in _gather(run, seconds) for s in part]
        sample_seconds = time.perf_counter() - tic
        if all_seconds:
            run.log(f"sampling: {np.mean(all_seconds):.3f} s per chunk of <= {config.sample.per_proc_batch_size} "
                    f"(generation + decoding, mean over {len(all_seconds)} chunks), {sample_seconds:.1f} s wall on "
                    f"{run.world_size} rank(s)")
        if fid.time_cnt_only:
            if run.main and fid.clear_cache:
                shutil.rmtree(sample_dir, ignore_errors=True)
            _wait(run)
            return None
        if run.main:
            bounds = chunk_bounds(fid.num_fid_samples, config.sample.per_proc_batch_size)
            images_uint8 = load_chunks(sample_dir / "chunks", bounds, labels)
            write_image_npz(npz_path, images_uint8, labels, kind="generation")
            run.log(f"packed {images_uint8.shape} uint8 into '{npz_path}'")
            del images_uint8
            if evaluating:
                tic = time.perf_counter()
                results = evaluate_npz(fid.gt_npz_path, npz_path, inception_weights=fid.inception_weights,
                                       device=run.device, purpose="generation", eval_python=eval_python(config))
                eval_seconds = time.perf_counter() - tic
                write_results(npz_path, results)
        results = _from_rank0(run, results)
    if run.main and results is not None:
        run.log(f"cfg {cfg_scale}:\n{format_results(results, parseable=False)}")
        record(run, config, plan, results, sample_seconds, eval_seconds)
        if fid.clear_cache:
            shutil.rmtree(sample_dir, ignore_errors=True)
            npz_path.unlink(missing_ok=True)
    _wait(run)
    return results


def record(run: Run, config: GPTSampleConfig, plan: dict[str, Any], results: dict[str, Any],
           sample_seconds: float | None, eval_seconds: float | None) -> None:
    """Append the scale's CSV row unless the CSV already has one for this setting and scale."""
    path = csv_path(config.sample.sample_dir)
    row = csv_row(config, run, plan, results, sample_seconds, eval_seconds)
    if any(r.get("setting") == row["setting"] and row_scale(r) == row["cfg_scale"] for r in read_csv_rows(path)):
        return
    append_csv_row(path, row, CSV_COLUMNS)
    run.log(f"appended to '{path}'")


def search(run: Run) -> dict[str, Any]:
    """The official --search loop; returns the best row of the CSV (every rank)."""
    config, schedule = run.config, run.config.sample.cfg_schedule
    start = search_start_scale(config.model.gpt_model, schedule, config.tokenizer.tok_config)
    path = csv_path(config.sample.sample_dir)
    setting = setting_id(sampling_plan(run, config))
    run.log(f"searching the {schedule} CFG scale from {start} in steps of {SEARCH_STEP}; results in '{path}'")
    increase_first = schedule != "rectangular"  # official order of the neighbours
    while True:
        rows = [r for r in read_csv_rows(path) if r.get("setting") == setting] if run.main else []
        scale = _from_rank0(run, next_search_scale(rows, start, increase_first) if run.main else None)
        if scale is None:
            break
        run_scale(run, scale)
    best = _from_rank0(run, min(rows, key=lambda r: float(r["FID"])) if run.main else None)
    run.log(f"best {schedule} scale: cfg {best['cfg_scale']} with FID {best['FID']}, sFID {best['sFID']}, IS "
            f"{best['Inception Score']}, precision {best['Precision']}, recall {best['Recall']} ({len(rows)} scales "
            "evaluated)")
    return best


def body(config: GPTSampleConfig, args: argparse.Namespace, report: list[str] = ()) -> dict[str, Any] | None:
    """The stage; returns the results (with --search: the best CSV row)."""
    # Check settings and files before any expensive work.
    check_sampler_config(config)
    vq_config = load_tokenizer_config(config)  # --tok-config, or --quant-way fsq's official FSQ tokenizer
    notes = check_flags(config, args, vq_config)
    image_size, image_size_eval = resolve_image_sizes(config, vq_config)
    check_checkpoint_files(config)
    schedule_kwargs = cfg_schedule_kwargs(config)
    if config.fid.evaluate and not config.fid.time_cnt_only:
        notes += check_evaluation_inputs(config, image_size_eval)

    # Setup distributed, logging and precision.
    dist_info = init_distributed(args.device)
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    setup_logging()
    for note in notes:
        logger.warning(note)
    group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT) if dist.is_initialized() else None
    precision, dtype = sampling_dtype(config.sample.precision, device)

    # Create the models (the GPT sized by its checkpoint).
    tokenizer, gpt = load_models(config, vq_config, device, dtype)
    run = Run(config, tokenizer, gpt, device, rank, world_size, image_size, image_size_eval, schedule_kwargs,
              precision, group)
    m, s, fid = config.model, config.sample, config.fid
    per_class, rest = divmod(fid.num_fid_samples, m.num_classes)
    logger.info(f"world size {world_size}, device {device}, GPT {m.gpt_model} in {dtype}, tokenizer in fp32")
    logger.info(f"{fid.num_fid_samples} samples, {per_class} per class for {m.num_classes} classes"
                f"{f' (+1 for {rest} classes)' if rest else ''}, {tokenizer.num_tokens} codes each, "
                f"{image_size} px -> {image_size_eval} px")
    logger.info(f"cfg {'search' if fid.search else s.cfg_scale} ({s.cfg_schedule}"
                f"{f', start {s.step_start_ratio}' if schedule_kwargs else ''}, interval {s.cfg_interval}), "
                f"top-k {s.top_k}, top-p {s.top_p}, temperature {s.temperature}, seed {s.global_seed}")
    if fid.search:
        if s.cfg_scale != 2.0:
            logger.warning(f"--search starts from the official heuristic scale; --cfg-scale {s.cfg_scale} is "
                           "ignored")
        return search(run)
    return run_scale(run, s.cfg_scale)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args, table, overrides = parse_args(argv)

    def stage() -> dict[str, Any] | None:
        config, report = resolve_config(GPTSampleConfig, args.config, given_flags(args, table), overrides)
        return body(config, args, report)

    return run_stage(stage)


if __name__ == "__main__":
    main()
