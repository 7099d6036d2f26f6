"""The CPU demo's report: metrics.json, the figures and report.md, from the outputs of its stages.

`write_report` reads what `gigatok.stages.demo`'s stages wrote under --out (reconstructions, held-out codes, samples,
the classifier, training logs), computes every number (held-out PSNR / SSIM / codebook usage, class agreement of the
samples as judged by `gigatok.engine.digit_classifier`, FID), draws the figures with `gigatok.infra.report`'s helpers
and renders the Markdown report. The demo's fixed settings come in as a `ReportSetup`; nothing here imports a stage.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gigatok.engine.demo_curve import plot_psnr_curves
from gigatok.engine.demo_plan import Paths, Plan, sample_batch
from gigatok.infra import report as rep
from gigatok.infra.io import save_png_atomic, write_text_atomic
from gigatok.infra.stage_runner import Stage, first_match, read_json


@dataclasses.dataclass(frozen=True)
class ReportSetup:
    """The demo's fixed settings (constants of `gigatok.stages.demo`) that its metrics and report use.

    Attributes:
        num_classes: digit classes (0 .. num_classes - 1).
        targets: metric name -> the value it should reach (at least).
        image_size: pixels of the digits.
        tokenizer_config: the tokenizer config, relative to the repository root (as the report prints it).
        tokenizer_cls: its model class (VQVitModelPlus: 1D tokens; VQVitModel2DPlus: 2D).
        gpt_model: the GPT size name.
        gpt_kind: what the report calls the GPT variant (its position encoding).
        gpt_end_lr: the GPT's learning rate at the end of its cosine decay.
    """

    num_classes: int
    targets: Mapping[str, float]
    image_size: int
    tokenizer_config: Path
    tokenizer_cls: str
    gpt_model: str
    gpt_kind: str
    gpt_end_lr: float


LIMITS = {
    "heldout_psnr_db": "tokenizer training length (--vq-steps; the loss curve is still falling; see the PSNR-against-"
                       "step figure) and, for the 1D tokenizer, its number of latent tokens; configs/vq/VQ_demo.yaml "
                       "(1D) and VQ_demo_2d.yaml (2D) list the runs behind their choices",
    "codebook_usage": "few held-out tokens per code (held-out images x tokens per image over 256 codes); the entropy "
                      "loss weight of the tokenizer config",
    "class_agreement": "the debug GPT (2 layers, width 64) and its training length (--gpt-steps); sampling "
                       "(--cfg-scale, --temperature)",
    "classifier_heldout_accuracy": "classifier training length (--classifier-epochs)",
}


def reconstruction_metrics(paths: Paths, use_rfid: bool) -> dict[str, Any]:
    """Held-out PSNR, SSIM and codebook usage (+ rFID): from the quantitative reconstruction's results (--rfid), or
    from the qualitative run's PNGs and the held-out codes (the same official conventions)."""
    import numpy as np

    from gigatok.eval.recon_metrics import (
        OFFICIAL_SSIM_DATA_RANGE,
        psnr_batch,
        read_png_images,
        ssim_batch,
    )

    if use_rfid:
        r = read_json(first_match(paths.recon / "heldout", "*_results.json"))
        return {"heldout_psnr_db": r["psnr"], "heldout_ssim": r["ssim"],
                "heldout_ssim_data_range_1": r["ssim_data_range_1"], "codebook_usage": r["codebook_usage"],
                "heldout_rfid": r["rfid"], "num_heldout": r["num_images"]}
    folder = first_match(paths.recon / "heldout", "*/grid.png").parent
    gt_files = sorted(folder.glob("*_gt.png"))
    gt = read_png_images(gt_files).astype(np.float32) / 255.0  # (N, S, S, 3) in [0, 1]
    recon = read_png_images([f.with_name(f.name.replace("_gt", "")) for f in gt_files]).astype(np.float32) / 255.0
    ssim = ssim_batch(recon, gt, data_ranges=(OFFICIAL_SSIM_DATA_RANGE, 1.0))  # (N, 2)
    meta = read_json(paths.codes / "heldout" / "meta.json")
    codes = np.concatenate([np.load(paths.codes / "heldout" / shard["codes"])[:, 0] for shard in meta["shards"]])
    return {"heldout_psnr_db": float(psnr_batch(recon, gt, data_range=1.0).mean()),
            "heldout_ssim": float(ssim[:, 0].mean()), "heldout_ssim_data_range_1": float(ssim[:, 1].mean()),
            "codebook_usage": len(np.unique(codes)) / meta["codebook_size"],  # center views (A index 0)
            "heldout_rfid": None, "num_heldout": len(gt_files)}


def compute_metrics(paths: Paths, use_fid: bool, use_rfid: bool, fid_note: str,
                    setup: ReportSetup) -> dict[str, Any]:
    """Every number of the report: reconstruction, classifier, class agreement, FID."""
    import numpy as np
    import torch

    from gigatok.engine import digit_classifier as dc

    metrics = reconstruction_metrics(paths, use_rfid)
    judge = read_json(paths.classifier / "classifier.json")
    model = dc.DigitClassifier(image_size=judge["image_size"])
    model.load_state_dict(torch.load(paths.classifier / "classifier.pt", weights_only=True))
    npz = sample_batch(paths.samples / "fid", use_fid)
    with np.load(npz) as batch:
        images_uint8, labels = batch["arr_0"], batch["arr_1"]
    hits = dc.predict_digits(model, images_uint8) == labels
    metrics.update({
        "classifier_heldout_accuracy": judge["heldout_accuracy"],
        "classifier_heldout_accuracy_mirrored": judge["heldout_accuracy_mirrored"],
        "class_agreement": float(hits.mean()),
        "class_agreement_per_class": [float(hits[labels == c].mean()) for c in range(setup.num_classes)],
        "num_samples": len(labels),
        "fid": read_json(npz.with_suffix(".json"))["fid"] if use_fid else None,
        "fid_note": (f"{len(labels)} samples vs {metrics['num_heldout']} held-out digits ({fid_note})" if use_fid
                     else f"not computed: {fid_note}"),
    })
    metrics["targets"] = {name: {"target": target, "value": metrics[name], "met": metrics[name] >= target}
                          for name, target in setup.targets.items()}
    return metrics


def make_figures(plan: Plan, figures: Path, num_classes: int) -> dict[str, Path]:
    """Reconstruction grids (ground truth | reconstruction), sample grid, training curves; returns name -> PNG."""
    import numpy as np

    from gigatok.data.demo_data import read_image_folder
    from gigatok.eval.recon_metrics import read_png_images

    paths, made = plan.paths, {}
    # Held-out digits: the first 4 of every class (the reconstruct stage numbers images in ImageFolder order).
    recon_dir = first_match(paths.recon / "heldout", "*/000000.png").parent
    gt, labels, _ = read_image_folder(plan.heldout)
    pick = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(num_classes)])
    recon = read_png_images([recon_dir / f"{i:06d}.png" for i in pick])
    made["recon_heldout"] = save_png_atomic(figures / "recon_heldout.png", rep.pair_grid(gt[pick], recon, 8, scale=4))
    photo_dir = first_match(paths.recon / "photos", "*/grid.png").parent
    gt_files = sorted(photo_dir.glob("*_gt.png"))
    made["recon_photos"] = save_png_atomic(figures / "recon_photos.png", rep.pair_grid(
        read_png_images(gt_files), read_png_images([f.with_name(f.name.replace("_gt", "")) for f in gt_files]),
        4, scale=3))
    with np.load(paths.samples / "grids" / "samples.npz") as batch:
        images_uint8, sample_labels = batch["arr_0"], batch["labels"]
    rows = [images_uint8[sample_labels == c][:12] for c in range(num_classes)]  # one row per class
    made["samples"] = save_png_atomic(figures / "samples_by_class.png",
                                   rep.tile(rep.upscale(np.concatenate(rows), 4), len(rows[0])))
    tok = rep.read_metrics_jsonl(paths.runs / "tokenizer" / "metrics.jsonl")
    gpt = rep.read_metrics_jsonl(paths.runs / "gpt" / "metrics.jsonl")
    made["curves_tokenizer"] = rep.plot_curves(figures / "curves_tokenizer.png", [
        ("tokenizer: reconstruction loss (L2, [-1, 1] pixels)", "loss", {"train/rec": rep.series(tok, "train/rec")}),
        ("tokenizer: codebook usage", "fraction of codes used", {
            "last 100 steps": rep.series(tok, "train/codebook/usage"),
            "since the start": rep.series(tok, "train/codebook/usage_cumulative")}),
    ], log_y=[True, False])
    made["curves_gpt"] = rep.plot_curves(figures / "curves_gpt.png", [
        ("GPT: training loss", "cross-entropy (nats/token)", {"train/loss": rep.series(gpt, "train/loss")})])
    made["psnr_vs_step"] = plot_psnr_curves(figures / "psnr_vs_step.png", list(read_psnr_curves(paths).values()))
    return made


def read_psnr_curves(paths: Paths) -> dict[str, dict[str, Any]]:
    """Tokenizer kind -> its held-out PSNR curve (`gigatok.engine.demo_curve`): this run's kind and any other that
    ran with the same --out."""
    curves = {f.stem.removeprefix("tokenizer_"): read_json(f) for f in sorted(paths.curves.glob("tokenizer_*.json"))}
    return {kind: curve for kind, curve in curves.items() if curve}


def write_report(plan: Plan, setup: ReportSetup, stages: list[Stage], records: dict[str, dict[str, Any]],
                 fid_note: str, wall_s: float) -> Path:
    """metrics.json, the figures and report.md (all links relative to --out)."""
    args, paths = plan.args, plan.paths
    metrics = compute_metrics(paths, plan.use_fid, plan.use_rfid, fid_note, setup)
    metrics["psnr_curves"] = read_psnr_curves(paths)
    stage_rows = [{"name": s.name, "entry": s.command[0] if s.command else "in-process",
                   "status": "reused" if records[s.name].get("reused") else "ran", "wall_s": records[s.name]["wall_s"],
                   "cpu_s": records[s.name]["cpu_s"], "log": f"logs/{s.name}.log" if s.command else None}
                  for s in stages]
    metrics["time"] = {"stages": {r["name"]: {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "status": r["status"]}
                                  for r in stage_rows},
                       "pipeline_wall_s": sum(r["wall_s"] for r in stage_rows),
                       "pipeline_cpu_s": sum(r["cpu_s"] for r in stage_rows), "invocation_wall_s": wall_s}
    metrics["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "fresh", "until")}
    write_text_atomic(paths.out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    figures = {name: path.relative_to(paths.out).as_posix()
               for name, path in make_figures(plan, paths.out / "figures", setup.num_classes).items()}
    grids = {f"class_grid_{c}": f"samples/grids/class_{c}_grid.png" for c in range(setup.num_classes)}
    settings = {
        "data": f"scikit-learn digits at {setup.image_size} px, colourised (gigatok/data/demo_data.py), "
                f"{read_json(paths.data / 'data.json')['num_train']} training / {metrics['num_heldout']} evaluated "
                "held-out images; photos reconstructed at 32 px",
        "tokenizer": f"`{setup.tokenizer_cls}` (--tokenizer {args.tokenizer}), `{setup.tokenizer_config}` (resolved: "
                     f"[config.yaml](runs/tokenizer/config.yaml)), {args.vq_steps} steps at batch {args.vq_batch_size}",
        "GPT": f"`{setup.gpt_model}`, {setup.gpt_kind} ([config.yaml](runs/gpt/config.yaml)), {args.gpt_steps} steps "
               f"at batch {args.gpt_batch_size}, lr {args.gpt_lr:g} with cosine decay to {setup.gpt_end_lr:g}",
        "sampling": f"cfg scale {args.cfg_scale}, temperature {args.temperature}, {args.num_samples} samples",
        "classifier": f"{args.classifier_epochs} epoch(s) on the training digits (horizontal flips included: the GPT "
                      "learns from the codes of every digit and of its mirror image, as officially)",
        "command": "`python -m gigatok.stages.demo " + " ".join(a for a in sys.argv[1:]) + "`",
    }
    pair = f"the {setup.tokenizer_cls} tokenizer (--tokenizer {args.tokenizer}) and the {setup.gpt_kind}"
    text = render_demo_report(metrics, stage_rows, settings, {**figures, **grids, "metrics": "metrics.json"},
                              wall_s, LIMITS, pair)
    return write_text_atomic(paths.out / "report.md", text)


def _value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_demo_report(metrics: Mapping[str, Any], stages: Sequence[Mapping[str, Any]],
                       settings: Mapping[str, Any], links: Mapping[str, str], wall_s: float,
                       limits: Mapping[str, str], pair: str = "a GigaTok tokenizer and a class-conditional GPT") -> str:
    """The CPU demo's `report.md`.

    Args:
        metrics: the demo's metrics.json content (with "targets": {name: {target, value, met}}).
        stages: one dict per stage: name, entry (module or "in-process"), status ("ran"/"reused"), wall_s, cpu_s,
            log (relative link, or None).
        settings: name -> value lines of the configuration section (values may hold Markdown).
        links: relative links of the figures (recon_heldout, recon_photos, samples, curves_tokenizer, curves_gpt,
            psnr_vs_step),
            of the sampler's grids (class_grid_0 .. class_grid_9) and of metrics.json (metrics).
        wall_s: wall time of this invocation.
        limits: metric name -> what limits it, printed for the targets that were missed.
        pair: the tokenizer and GPT that ran, in words.
    """
    targets = metrics["targets"]
    result_rows = [(name, _value(t["value"]), f">= {t['target']}", "yes" if t["met"] else "**NO**")
                   for name, t in targets.items()]
    missed = [name for name, t in targets.items() if not t["met"]]
    stage_rows = [(i, s["name"], f"`{s['entry']}`", s["status"], _value(s["wall_s"], 3), _value(s["cpu_s"], 3),
                   f"[log]({s['log']})" if s.get("log") else "-") for i, s in enumerate(stages, start=1)]
    pipeline_wall = sum(s["wall_s"] for s in stages)
    pipeline_cpu = sum(s["cpu_s"] for s in stages)
    per_class = ", ".join(f"{c}: {a:.2f}" for c, a in enumerate(metrics["class_agreement_per_class"]))
    class_grids = " ".join(f"[{c}]({links[f'class_grid_{c}']})" for c in range(10) if f"class_grid_{c}" in links)
    lines = [
        "# GigaTok CPU demo",
        "",
        (f"Pair: {pair}. Every pipeline stage below ran through the entry point users run, with the flags listed in "
         "its log: the tokenizer trained on colourised scikit-learn digits, codes, the class-conditional GPT, "
         "samples, and their evaluation. Numbers come from this run; nothing is pretrained."),
        "",
        "## Results",
        "",
        rep.markdown_table(["metric", "value", "target", "met"], result_rows),
        "",
        (f"- Held-out reconstruction ({metrics['num_heldout']} digits): PSNR {_value(metrics['heldout_psnr_db'])} dB, "
        f"SSIM {_value(metrics['heldout_ssim'])} (official data_range=2 convention; standard data_range=1: "
        f"{_value(metrics['heldout_ssim_data_range_1'])}), codebook usage {_value(metrics['codebook_usage'])}, "
        f"rFID {_value(metrics.get('heldout_rfid'))}."),
        (f"- Class agreement of {metrics['num_samples']} generated digits (uniform classes), per class: {per_class}. "
        "The judge is a small CNN trained on the real training digits: "
        f"{_value(metrics['classifier_heldout_accuracy'])} accuracy on the held-out digits "
        f"({_value(metrics['classifier_heldout_accuracy_mirrored'])} on their mirror images)."),
        (f"- FID against the held-out digits: {_value(metrics['fid'])} ({metrics['fid_note']}). Few images and tiny "
        "upsampled digits: a sanity number, not comparable with ImageNet FIDs."),
    ]
    if missed:
        lines += ["", "Missed targets and what limits them:", ""]
        lines += [f"- `{name}`: {limits.get(name, 'see the curves and logs')}" for name in missed]
    lines += [
        "",
        "## Figures",
        "",
        "Held-out digits, ground truth | reconstruction (4 per class):",
        "",
        f"![held-out reconstructions]({links['recon_heldout']})",
        "",
        "Photos from scikit-image (out of domain: the tokenizer only saw digits), ground truth | reconstruction:",
        "",
        f"![photo reconstructions]({links['recon_photos']})",
        "",
        "Generated digits, one row per class 0..9 (the sampler's own per-class grids: " + class_grids + "):",
        "",
        f"![samples]({links['samples']})",
        "",
        "Training curves:",
        "",
        f"![tokenizer curves]({links['curves_tokenizer']})",
        "",
        ("Held-out PSNR against tokenizer training step, for each tokenizer kind run with this --out (run the demo "
         "with `--tokenizer 2d`, or `1d`, to add the other; the paper's headline is that 1D tokenizers scale better "
         "than 2D ones):"),
        "",
        f"![held-out PSNR against step]({links['psnr_vs_step']})",
        "",
        "Last checkpoint: " + "; ".join(
            f"{kind} ({c['model_cls']}, {c['num_tokens']} tokens, {c['points'][-1]['step']} steps) "
            f"{c['points'][-1]['psnr_db']:.2f} dB" for kind, c in metrics.get("psnr_curves", {}).items()) + ".",
        "",
        f"![GPT curves]({links['curves_gpt']})",
        "",
        "## Configuration",
        "",
    ]
    lines += [f"- {name}: {value}" for name, value in settings.items()]
    lines += [
        "",
        "## Stages and time",
        "",
        rep.markdown_table(["#", "stage", "entry point", "status", "wall s", "CPU s", "log"], stage_rows),
        "",
        (f"Pipeline (all stages as last run): {pipeline_wall:.0f} s wall, {pipeline_cpu:.0f} s CPU. This invocation: "
        f"{wall_s:.0f} s wall (reused stages cost nothing). CPU s = user + system time of the stage's processes."),
        "",
        f"All numbers: [metrics.json]({links['metrics']}).",
        "",
    ]
    return "\n".join(lines)
