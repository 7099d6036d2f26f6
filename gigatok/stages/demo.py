"""The CPU demo: every pipeline stage, end to end, on built-in real data, in minutes (`bash scripts/demo.sh`).

Data: scikit-learn's 8x8 digits, upsampled to 16x16 and colourised (`gigatok.data.demo_data`), with a fixed
stratified held-out split, plus scikit-image's bundled photos. Each stage runs the entry point users run, as
`python -m <entry point>` in its own process, with the flags they would pass, only with tiny settings (the `debug`
GPT). `--tokenizer` picks the pair: 1d (default) is GigaTok's own, the 1D Q-Former tokenizer `VQVitModelPlus`
(`configs/vq/VQ_demo.yaml`) with the `gpt_1d` GPT (learned absolute positions); 2d is `VQVitModel2DPlus`
(`configs/vq/VQ_demo_2d.yaml`) with LlamaGen's 2D-RoPE GPT (--gpt-2d). The processes are forked from one warm
interpreter that has imported torch and the entry points' modules once (`gigatok.infra.warm_start`;
`--no-warm-start` spawns each afresh):

  stage          runs                                what
  data           (in-process)                        digits -> ImageFolder trees (train / held-out), photos
  eval_subset    (in-process)                        with --eval-limit: a class-balanced held-out subset
  tokenizer      gigatok.stages.train_vq                    the tokenizer (1d or 2d), trained on the training digits
  tokenizer_curve (in-process)                       held-out PSNR at each tokenizer checkpoint (curves/)
  reference      gigatok.stages.val_reference               held-out digits -> FID reference npz (for the samples' FID)
  recon_heldout  gigatok.stages.reconstruct --qualitative   held-out reconstructions (PSNR, SSIM computed here)
  codes_heldout  gigatok.stages.extract_codes               held-out codes (codebook usage)
  recon_photos   gigatok.stages.reconstruct --qualitative   the photos, at 32 px (--interpolate-pos-embed)
  codes          gigatok.stages.extract_codes               codes of the training digits (and of their mirror images)
  gpt            gigatok.stages.train_c2i                   class-conditional GPT on those codes
  grids          gigatok.stages.sample_c2i_visualization    per-class sample grids
  samples        gigatok.stages.sample_c2i                  uniform-class samples + FID against the held-out digits
  classifier     (in-process)                        a CNN trained on the real training digits, the judge of the
                                                     samples' class agreement (gigatok.engine.digit_classifier)
then metrics.json, figures and report.md in --out (default results/demo/). The PSNR-against-step figure shows every
curves/tokenizer_<kind>.json in --out: run the demo once with each --tokenizer to put 1D and 2D side by side.

With --rfid the held-out reconstruction runs in `gigatok.stages.reconstruct`'s quantitative mode instead (PSNR, SSIM,
codebook usage and rFID against `reference`, no `codes_heldout`): one more Inception pass over the held-out digits,
left out by default to keep the demo within minutes. Without Inception weights there is no FID: `reference` is
skipped.

Re-runs: a stage is done when its artifact exists and its record in `stages/<name>.json` holds the same key (its
command, its settings and the identities of the stage outputs it reads); a re-run reuses it. A stage whose key
changed starts over (its outputs are deleted); an interrupted one is simply run again (the entry points resume).
`--fresh` deletes --out first. Each stage's output (progress bars included) goes to the terminal and to
`logs/<name>.log`.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from gigatok.config import load_config, to_dict
from gigatok.engine import digit_classifier
from gigatok.engine.demo_plan import Paths, Plan, inception_available, sample_batch
from gigatok.engine.demo_report import ReportSetup, write_report
from gigatok.errors import UserError
from gigatok.infra.cli import run_stage
from gigatok.infra.stage_runner import (
    Stage,
    StageRunner,
    existing,
    first_match,
    read_json,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# --tokenizer: (tokenizer config, the GPT flags that match its codes, what the report calls the GPT)
TOKENIZERS = {
    "1d": (REPO_ROOT / "configs" / "vq" / "VQ_demo.yaml", [], "GigaTok gpt_1d GPT (learned absolute positions)"),
    "2d": (REPO_ROOT / "configs" / "vq" / "VQ_demo_2d.yaml", ["--gpt-2d"], "LlamaGen GPT (2D RoPE)"),
}
IMAGE_SIZE = load_config(TOKENIZERS["1d"][0]).model.init_args.image_size  # the digits are rendered at this size
PHOTO_SIZE = 32  # photos are reconstructed at 32 px with resized positional tables (--interpolate-pos-embed)
# Default --vq-steps per tokenizer kind: the 1D tokenizer passes 24 dB sooner (25.1 dB at step 1000 of a 1200-step
# run on 2 cores, 24.7 dB for the 2D one at 1200) and its 32-token GPT costs more, so it trains 1000 steps.
VQ_STEPS = {"1d": 1000, "2d": 1200}
CURVE_POINTS = 6  # tokenizer checkpoints (every ceil(--vq-steps / 6) steps and the last): the PSNR curve
GPT_MODEL = "debug"
GPT_END_LR = 1e-4  # cosine decay from --gpt-lr. Class agreement, one run each: 84.2% / 86.0% / 86.8% after 1000 /
# 1200 / 1500 cosine steps; a constant lr needs more (85.8% after 2000 steps, 84.6% after 3000)
NUM_CLASSES = 10
RECORD_VERSION = 1
TARGETS = {"heldout_psnr_db": 24.0, "codebook_usage": 0.80, "class_agreement": 0.80,
           "classifier_heldout_accuracy": 0.95}


def report_setup(kind: str) -> ReportSetup:
    config, _, gpt = TOKENIZERS[kind]
    return ReportSetup(NUM_CLASSES, TARGETS, IMAGE_SIZE, config.relative_to(REPO_ROOT),
                       load_config(config).model.model_cls, GPT_MODEL, gpt, GPT_END_LR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=str, default="results/demo", help="output folder (report.md, metrics.json, ...)")
    p.add_argument("--fresh", action="store_true", help="delete --out first and run every stage again")
    p.add_argument("--until", type=str, default=None, help="stop after this stage (e.g. tokenizer); no report")
    p.add_argument("--tokenizer", choices=sorted(TOKENIZERS), default="1d",
                   help="1d: the 1D Q-Former tokenizer (VQVitModelPlus, configs/vq/VQ_demo.yaml) and the gpt_1d GPT; "
                        "2d: VQVitModel2DPlus (configs/vq/VQ_demo_2d.yaml) and the 2D-RoPE GPT")
    p.add_argument("--vq-steps", type=int, default=None,
                   help=f"tokenizer training steps (default: {VQ_STEPS['1d']} for 1d, {VQ_STEPS['2d']} for 2d)")
    p.add_argument("--vq-batch-size", type=int, default=32, help="tokenizer training batch size")
    p.add_argument("--gpt-steps", type=int, default=1200, help="GPT training steps")
    p.add_argument("--gpt-batch-size", type=int, default=128, help="GPT training batch size")
    p.add_argument("--gpt-lr", type=float, default=3e-3, help="GPT peak learning rate (cosine decay)")
    p.add_argument("--num-samples", type=int, default=300,
                   help="generated images for class agreement and FID (30 per class: about 2 points of standard error)")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance scale of the sampling")
    p.add_argument("--temperature", type=float, default=0.5, help="softmax temperature of the sampling")
    p.add_argument("--classifier-epochs", type=int, default=8,
                   help="training epochs of the digit classifier that scores class agreement")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="use only this many held-out digits (class-balanced) for the reconstruction metrics and as "
                        "the FID reference (default: all; tests pass a few to stay fast)")
    p.add_argument("--no-fid", action="store_true", help="skip FID even when the Inception weights are present")
    p.add_argument("--rfid", action="store_true",
                   help="also the held-out rFID (the quantitative gigatok.stages.reconstruct run: one more "
                        "Inception pass, about 40 s on 2 cores)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the stages (default: torch's)")
    p.add_argument("--no-warm-start", action="store_true",
                   help="run each stage as a plain `python -m` subprocess instead of forking it from a warm "
                        "interpreter (same results; 5-15 s more per stage on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="data colours/split and classifier seed")
    args = p.parse_args(argv)
    if args.vq_steps is None:
        args.vq_steps = VQ_STEPS[args.tokenizer]
    return args


def check_args(args: argparse.Namespace, out: Path) -> None:
    for name in ("vq_steps", "vq_batch_size", "gpt_steps", "gpt_batch_size", "num_samples", "classifier_epochs"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.num_samples < NUM_CLASSES:
        raise UserError(f"--num-samples must be at least {NUM_CLASSES} (one per class), got {args.num_samples}")
    if args.eval_limit is not None and args.eval_limit < NUM_CLASSES:
        raise UserError(f"--eval-limit must be at least {NUM_CLASSES} (one per class), got {args.eval_limit}")
    if out.exists() and any(out.iterdir()) and not (out / "stages").is_dir():
        raise UserError(f"--out '{out}' is not empty and holds no demo run (no stages/ folder): choose another "
                        "folder, or empty it")


CPU = ["--device", "cpu"]
EVAL_FLAGS = ["--eval-python-path", "python"]  # our PyTorch evaluator, whatever EVAL_PYTHON_PATH says


def input_stages(plan: Plan) -> list[Stage]:
    """The data (+ the --eval-limit subset) and the tokenizer."""
    from gigatok.data import demo_data
    from gigatok.engine import demo_curve

    args, paths, data = plan.args, plan.paths, plan.data
    stages = [Stage("data", "colourised digits (train / held-out ImageFolders) and photos",
                    lambda: existing(data.info), [paths.data],
                    func=lambda: demo_data.write_demo_data(paths.data, size=IMAGE_SIZE, seed=args.seed),
                    params={"size": IMAGE_SIZE, "seed": args.seed, "version": demo_data.DATA_VERSION})]
    if args.eval_limit is not None:
        stages.append(Stage("eval_subset", f"{args.eval_limit} class-balanced held-out digits for evaluation",
                            lambda: existing(plan.heldout), [plan.heldout], ["data"],
                            func=lambda: demo_data.write_eval_subset(data.heldout, plan.heldout, args.eval_limit),
                            params={"limit": args.eval_limit}))
    steps = args.vq_steps
    stages.append(Stage(
        "tokenizer", f"train the tokenizer ({steps} steps)", lambda: existing(Path(plan.vq_ckpt)),
        [paths.runs / "tokenizer"], ["data"], [
            "gigatok.stages.train_vq", "--model-config", plan.config, "--data-path", str(data.train), "--save-path",
            str(paths.runs), "--sub-exp-dir", "tokenizer", "--iterations", str(steps), "--global-batch-size",
            str(args.vq_batch_size), "--warmup", str(min(50, steps // 10)), "--log-every", str(max(steps // 50, 1)),
            "--ckpt-every", str(max(steps // CURVE_POINTS, 1)), "--mixed-precision", "none", "--no-wandb",
            "--num-workers", "0", *CPU],
        params={"config": to_dict(load_config(plan.config))}))  # resolved: comment edits do not retrain
    model = load_config(plan.config).model
    label = {"tokenizer": args.tokenizer, "model_cls": model.model_cls, "config": Path(plan.config).name,
             "num_tokens": model.init_args.num_latent_tokens, "vq_steps": steps, "vq_batch_size": args.vq_batch_size}
    stages.append(Stage(
        "tokenizer_curve", "held-out PSNR at each tokenizer checkpoint", lambda: existing(plan.curve), [plan.curve],
        ["tokenizer", *plan.heldout_deps],
        func=lambda: demo_curve.write_psnr_curve(plan.curve, paths.runs / "tokenizer", plan.config, plan.heldout,
                                                 label), params=label))
    return stages


def reconstruction_stages(plan: Plan) -> list[Stage]:
    """Held-out digits (metrics) and photos (qualitative) through `gigatok.stages.reconstruct`."""
    paths, heldout, out = plan.paths, str(plan.heldout), plan.paths.recon / "heldout"
    common = ["--model-config", plan.config, "--vq-ckpt", plan.vq_ckpt, "--num-workers", "0", "--per-proc-batch-size",
              "64", *CPU]
    reference = Stage("reference", "held-out digits -> FID reference npz", lambda: existing(plan.ref_npz),
                      [paths.reference], plan.heldout_deps, [
                          "gigatok.stages.val_reference", "--data-path", heldout, "--image-size", str(IMAGE_SIZE),
                          "--sample-dir", str(paths.reference), "--num-workers", "0"])
    if plan.use_rfid:
        stages = [
            reference,
            Stage("recon_heldout", "reconstruct the held-out digits: PSNR, SSIM, codebook usage, rFID",
                  lambda: first_match(out, "*_results.json"), [out], ["tokenizer", "reference"], [
                      "gigatok.stages.reconstruct", "--data-path", heldout, "--image-size", str(IMAGE_SIZE),
                      "--sample-dir", str(out), "--gt-npz-path", str(plan.ref_npz), "--no-lpips", *EVAL_FLAGS,
                      *common]),
        ]
    else:  # qualitative PNGs (PSNR/SSIM computed here) + held-out codes (usage): no Inception pass
        stages = [
            *([reference] if plan.use_fid else []),  # for the samples' FID
            Stage("recon_heldout", "reconstruct the held-out digits (PSNR, SSIM; rFID with --rfid)",
                  lambda: first_match(out, "*/grid.png"), [out], ["tokenizer", *plan.heldout_deps], [
                      "gigatok.stages.reconstruct", "--qualitative", "--data-path", heldout, "--image-size",
                      str(IMAGE_SIZE), "--sample-dir", str(out), *common]),
            Stage("codes_heldout", "codes of the held-out digits (codebook usage)",
                  lambda: existing(paths.codes / "heldout" / "meta.json"), [paths.codes / "heldout"],
                  ["tokenizer", *plan.heldout_deps], [
                      "gigatok.stages.extract_codes", "--data-path", heldout, "--code-path",
                      str(paths.codes / "heldout"), "--model-config", plan.config, "--vq-ckpt", plan.vq_ckpt,
                      "--batch-size", "64", "--num-workers", "0", "--resume", *CPU]),
        ]
    photos = paths.recon / "photos"
    stages.append(Stage(
        "recon_photos", f"reconstruct the photos at {PHOTO_SIZE} px", lambda: first_match(photos, "*/grid.png"),
        [photos], ["tokenizer"], [
            "gigatok.stages.reconstruct", "--qualitative", "--data-path", str(plan.data.photos), "--image-size",
            str(PHOTO_SIZE), "--interpolate-pos-embed", "--sample-dir", str(photos), *common]))
    return stages


def generation_stages(plan: Plan) -> list[Stage]:
    """Codes, the GPT, samples (grids; uniform classes + FID) and the classifier that judges them."""
    args, paths, data = plan.args, plan.paths, plan.data
    gpt_ckpt, codes = paths.checkpoint("gpt", args.gpt_steps), paths.codes / "train"
    sampler = ["--gpt-model", GPT_MODEL, *plan.gpt_flags, "--gpt-ckpt", str(gpt_ckpt), "--vq-ckpt", plan.vq_ckpt,
               "--tok-config", plan.config, "--num-classes", str(NUM_CLASSES), "--cfg-scale", str(args.cfg_scale),
               "--temperature", str(args.temperature), "--precision", "none", *CPU]
    steps, grids, fid = args.gpt_steps, paths.samples / "grids", paths.samples / "fid"
    return [
        Stage("codes", "extract the codes of the training digits", lambda: existing(codes / "meta.json"), [codes],
              ["tokenizer"], [
                  "gigatok.stages.extract_codes", "--data-path", str(data.train), "--code-path", str(codes),
                  "--model-config", plan.config, "--vq-ckpt", plan.vq_ckpt, "--batch-size", "64", "--num-workers", "0",
                  "--resume", *CPU]),
        Stage("gpt", f"train the class-conditional GPT ({steps} steps)", lambda: existing(gpt_ckpt),
              [paths.runs / "gpt"], ["codes"], [
                  "gigatok.stages.train_c2i", "--code-path", str(codes), "--gpt-model", GPT_MODEL, *plan.gpt_flags,
                  "--save-path", str(paths.runs), "--sub-exp-dir", "gpt", "--iterations", str(steps),
                  "--global-batch-size", str(args.gpt_batch_size), "--lr", str(args.gpt_lr), "--lr-scheduler",
                  "cosine", "--end-lr", str(GPT_END_LR), "--log-every",
                  str(max(steps // 50, 1)), "--ckpt-every", str(max(steps // 4, 1)), "--mixed-precision", "none",
                  "--no-wandb", "--num-workers", "0", "--tok-config", plan.config, "--vq-ckpt", plan.vq_ckpt, *CPU]),
        Stage("grids", "per-class sample grids", lambda: existing(grids / "samples.npz"), [grids], ["gpt"], [
            "gigatok.stages.sample_c2i_visualization", *sampler, "--class-idx", ",".join(map(str, range(NUM_CLASSES))),
            "--qual-num", str(12 * NUM_CLASSES), "--per-proc-batch-size", "12", "--sample-dir", str(grids)]),
        Stage("samples", f"{args.num_samples} uniform-class samples" + (" + FID" if plan.use_fid else ""),
              lambda: sample_batch(fid, plan.use_fid), [fid], ["gpt"] + (["reference"] if plan.use_fid else []), [
                  "gigatok.stages.sample_c2i", *sampler, "--num-fid-samples", str(args.num_samples),
                  "--per-proc-batch-size", "50", "--sample-dir", str(fid),
                  *(["--gt-npz-path", str(plan.ref_npz), *EVAL_FLAGS] if plan.use_fid else ["--no-eval"])]),
        Stage("classifier", "train the digit classifier on the real training digits",
              lambda: existing(paths.classifier / "classifier.json"), [paths.classifier], ["data"],
              func=lambda: digit_classifier.train_and_save(data.train, data.heldout, paths.classifier,
                                                           epochs=args.classifier_epochs, seed=args.seed),
              params={"epochs": args.classifier_epochs, "seed": args.seed}),
    ]


def build_stages(plan: Plan) -> list[Stage]:
    """The demo's stages, in order, with the exact flags each entry point gets."""
    return [*input_stages(plan), *reconstruction_stages(plan), *generation_stages(plan)]


def run_demo(args: argparse.Namespace) -> Path:
    """All stages, then metrics and the report; returns the report path (or --out with --until)."""
    out = Path(args.out).resolve()
    check_args(args, out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    use_fid, fid_note = (False, "--no-fid") if args.no_fid else inception_available()
    config, gpt_flags, _ = TOKENIZERS[args.tokenizer]
    plan = Plan(args, Paths(out), use_fid, str(config), tuple(gpt_flags))
    stages = build_stages(plan)
    names = [s.name for s in stages]
    if args.until is not None and args.until not in names:
        raise UserError(f"--until '{args.until}' is not a stage; choose one of {', '.join(names)}")
    print(f"GigaTok CPU demo -> {out}\n  FID: {'on' if use_fid else 'off'} ({fid_note})", flush=True)
    if args.rfid and not use_fid:
        print("  --rfid ignored: rFID needs the Inception weights (see the FID line above); the held-out "
              "reconstruction runs in the qualitative mode", flush=True)
    modules = list(dict.fromkeys(s.command[0] for s in stages if s.command))
    tic = time.perf_counter()
    with StageRunner(out, args.threads, warm=not args.no_warm_start, modules=modules, root=REPO_ROOT,
                     version=RECORD_VERSION, label="demo") as runner:
        for i, stage in enumerate(stages, start=1):
            try:
                runner.run(stage, i, len(stages))
            except KeyboardInterrupt:
                raise UserError(f"interrupted during stage '{stage.name}'; run the same command again to resume "
                                "(finished stages are reused, interrupted ones continue from their checkpoints)"
                                ) from None
            if stage.name == args.until:
                print(f"stopped after stage '{args.until}' (--until)", flush=True)
                return out
    print("[demo] metrics, figures and report", flush=True)
    wall = time.perf_counter() - tic
    report = write_report(plan, report_setup(args.tokenizer), stages, runner.records, fid_note, wall)
    metrics = read_json(out / "metrics.json")
    for name, t in metrics["targets"].items():
        print(f"  {name}: {t['value']:.4g} (target >= {t['target']}) {'ok' if t['met'] else 'MISSED'}", flush=True)
    print(f"  FID: {metrics['fid']} ({metrics['fid_note']})\nreport: {report}", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)

    run_stage(lambda: run_demo(args))


if __name__ == "__main__":
    main()
