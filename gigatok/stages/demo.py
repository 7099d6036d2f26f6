"""The CPU demo: every pipeline stage, end to end, on built-in real data, in minutes (`bash scripts/demo.sh`).

Data: scikit-learn's 8x8 digits, upsampled to 16x16 and colourised (`gigatok.data.demo_data`), with a fixed
stratified held-out split, plus scikit-image's bundled photos. Each stage runs the entry point users run, as
`python -m <entry point>` in its own process, with the flags they would pass, only with tiny settings
(`configs/vq/VQ_demo.yaml`, the `debug` GPT). The processes are forked from one warm interpreter that has imported
torch and the entry points' modules once (`gigatok.infra.warm_start`; `--no-warm-start` spawns each afresh):

  stage          runs                                what
  data           (in-process)                        digits -> ImageFolder trees (train / held-out), photos
  eval_subset    (in-process)                        with --eval-limit: a class-balanced held-out subset
  tokenizer      gigatok.stages.train_vq                    the 2D tokenizer, trained on the training digits
  reference      gigatok.stages.val_reference               held-out digits -> FID reference npz (for the samples' FID)
  recon_heldout  gigatok.stages.reconstruct --qualitative   held-out reconstructions (PSNR, SSIM computed here)
  codes_heldout  gigatok.stages.extract_codes               held-out codes (codebook usage)
  recon_photos   gigatok.stages.reconstruct --qualitative   the photos, at 32 px (--interpolate-pos-embed)
  codes          gigatok.stages.extract_codes               codes of the training digits (and of their mirror images)
  gpt            gigatok.stages.train_c2i                   class-conditional GPT on those codes
  grids          gigatok.stages.sample_c2i_visualization    per-class sample grids
  samples        gigatok.stages.sample_c2i                  uniform-class samples + FID against the held-out digits
  classifier     (in-process)                        a CNN trained on the real training digits, the judge of the
                                                     samples' class agreement (gigatok.eval.digit_classifier)
then metrics.json, figures and report.md in --out (default results/demo/).

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
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gigatok.config import load_config, to_dict
from gigatok.errors import UserError
from gigatok.infra import warm_start
from gigatok.infra.cli import run_stage
from gigatok.infra.io import save_png_atomic, write_json_atomic, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_CONFIG = REPO_ROOT / "configs" / "vq" / "VQ_demo.yaml"
IMAGE_SIZE = load_config(TOKENIZER_CONFIG).model.init_args.image_size  # the digits are rendered at this size
PHOTO_SIZE = 32  # photos are reconstructed at 32 px with resized positional tables (--interpolate-pos-embed)
GPT_MODEL = "debug"
GPT_END_LR = 1e-4  # cosine decay from --gpt-lr. Class agreement, one run each: 84.2% / 86.0% / 86.8% after 1000 /
# 1200 / 1500 cosine steps; a constant lr needs more (85.8% after 2000 steps, 84.6% after 3000)
NUM_CLASSES = 10
RECORD_VERSION = 1
TARGETS = {"heldout_psnr_db": 24.0, "codebook_usage": 0.80, "class_agreement": 0.80,
           "classifier_heldout_accuracy": 0.95}



@dataclasses.dataclass
class Stage:
    """One step of the demo.

    Attributes:
        name: record / log name.
        title: one line for the terminal.
        artifact: returns the file that proves the stage finished, or None.
        outputs: deleted when the stage must start over.
        deps: stages whose outputs this one reads (their identities are part of the key).
        command: entry point module + arguments (run as `python -m ...`), or None for `func`.
        func: in-process body, for the stages that are not entry points.
        params: settings of an in-process stage (part of the key).
    """

    name: str
    title: str
    artifact: Callable[[], Path | None]
    outputs: list[Path]
    deps: list[str] = dataclasses.field(default_factory=list)
    command: list[str] | None = None
    func: Callable[[], None] | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def first_match(folder: Path, pattern: str) -> Path | None:
    """The first file under `folder` matching the glob `pattern` (sorted), or None."""
    matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return matches[0] if matches else None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class StageRunner:
    """Runs stages in order, reusing finished ones, streaming each stage's output to the terminal and a log.

    Entry-point stages run as `python -m <command>`: in children of one warm interpreter that has imported torch
    and the stages' modules once (`gigatok.infra.warm_start`; saves 5-15 s per stage on 2 cores), or as plain
    subprocesses with `warm=False`, off Linux, or if the warm-start helper fails. Use as a context manager.
    """

    def __init__(self, out: Path, threads: int | None, warm: bool = True, modules: list[str] = ()) -> None:
        self.out, self.records_dir, self.logs_dir = out, out / "stages", out / "logs"
        self.records: dict[str, dict[str, Any]] = {}
        self.threads = threads
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                               os.environ.get("PYTHONPATH")]))}
        if threads:
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.launcher = (warm_start.WarmLauncher(modules, env=self.env, cwd=str(REPO_ROOT))
                         if warm and warm_start.available() else None)

    def __enter__(self) -> StageRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.launcher is not None:
            self.launcher.close()

    def key(self, stage: Stage) -> str:
        deps = {d: self.records[d]["stamp"] for d in stage.deps}
        text = json.dumps({"v": RECORD_VERSION, "command": stage.command, "params": stage.params, "deps": deps},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run(self, stage: Stage, index: int, total: int) -> dict[str, Any]:
        """Run (or reuse) one stage; returns its record."""
        record_path = self.records_dir / f"{stage.name}.json"
        key, old = self.key(stage), read_json(record_path)
        header = f"[demo {index}/{total}] {stage.name}: {stage.title}"
        artifact = stage.artifact()
        if old and old.get("key") == key and old.get("status") == "done" and artifact is not None:
            print(f"{header} -- reused (done in an earlier run, {old['wall_s']:.1f} s)", flush=True)
            self.records[stage.name] = {**old, "reused": True}
            return self.records[stage.name]
        if old and old.get("key") != key:  # other settings or inputs: start this stage over
            for path in stage.outputs:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        record = {"key": key, "status": "running", "command": stage.command, "params": stage.params}
        write_json_atomic(record_path, record)
        print(f"{header}\n  " + (" ".join(["python", "-m", *stage.command]) if stage.command else "(in-process)"),
              flush=True)
        wall, self_cpu, child_cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
        log_path = self.logs_dir / f"{stage.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        warm_cpu = 0.0
        if stage.command is not None:
            warm_cpu = self._command(stage, log_path)
        else:
            stage.func()
        wall = time.perf_counter() - wall
        cpu = _cpu(resource.RUSAGE_SELF) - self_cpu + _cpu(resource.RUSAGE_CHILDREN) - child_cpu + warm_cpu
        if stage.artifact() is None:
            raise UserError(f"stage '{stage.name}' finished without producing its output; see {log_path}")
        record.update(status="done", stamp=time.time_ns(), wall_s=wall, cpu_s=cpu, reused=False)
        write_json_atomic(record_path, record)
        print(f"  done in {wall:.1f} s (CPU {cpu:.1f} s)", flush=True)
        self.records[stage.name] = record
        return record

    def _command(self, stage: Stage, log_path: Path) -> float:
        """`python -m <command>`; its merged stdout/stderr (tqdm bars included) is copied to ours and the log.
        Returns the CPU seconds of a warm-started child (a subprocess's are in RUSAGE_CHILDREN)."""
        with open(log_path, "wb") as log:
            log.write(("$ python -m " + " ".join(stage.command) + "\n").encode())

            def sink(chunk: bytes) -> None:
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                log.write(chunk)

            code, cpu = None, 0.0
            if self.launcher is not None:
                try:
                    code, cpu = self.launcher.run(stage.command[0], stage.command[1:], self.env, str(REPO_ROOT),
                                                  sink, self.threads)
                except warm_start.WarmStartError as err:  # rerun as a subprocess (the entry points resume)
                    print(f"  [demo] {err}; running the stage as a plain subprocess", file=sys.stderr, flush=True)
                    self.launcher.close()
                    self.launcher = None
            if code is None:
                code = self._subprocess(stage, sink)
        if code in (130, -signal.SIGINT):  # Ctrl-C reached the stage first: report it as the interruption it is
            raise KeyboardInterrupt
        if code != 0:
            raise UserError(f"stage '{stage.name}' failed (exit code {code}); its output is in {log_path}")
        return cpu

    def _subprocess(self, stage: Stage, sink: Callable[[bytes], None]) -> int:
        process = subprocess.Popen([sys.executable, "-m", *stage.command], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=self.env, cwd=REPO_ROOT)
        try:
            while chunk := os.read(process.stdout.fileno(), 4096):
                sink(chunk)
            return process.wait()
        except BaseException:  # Ctrl-C: stop the child too; its checkpoints let a re-run resume
            process.kill()
            process.wait()
            raise


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def inception_available() -> tuple[bool, str]:
    """Whether FID can be computed here (Inception weights found), and why not."""
    from gigatok.eval.inception import InceptionWeightsError, find_inception_weights

    try:
        _path, kind = find_inception_weights()
    except InceptionWeightsError as err:
        return False, str(err).splitlines()[0]
    return True, f"Inception: {kind} weights"


class Paths:
    """Where everything goes under --out."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data, self.runs, self.reference, self.recon, self.codes, self.samples, self.classifier = (
            out / name for name in ("data", "runs", "reference", "recon", "codes", "samples", "classifier"))

    def checkpoint(self, run: str, steps: int) -> Path:
        return self.runs / run / "checkpoints" / f"{steps:07d}.pt"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the stages share: the flags, the paths and the files they pass to each other."""

    args: argparse.Namespace
    paths: Paths
    use_fid: bool

    @property
    def use_rfid(self) -> bool:
        """The held-out reconstruction in the quantitative mode (rFID; --rfid): one more Inception pass."""
        return self.use_fid and self.args.rfid

    @property
    def data(self) -> Any:
        from gigatok.data.demo_data import demo_data_paths

        return demo_data_paths(self.paths.data)

    @property
    def heldout(self) -> Path:
        """The evaluated held-out digits: all of them, or the --eval-limit subset."""
        return self.data.heldout if self.args.eval_limit is None else self.paths.data / "digits_heldout_eval"

    @property
    def vq_ckpt(self) -> str:
        return str(self.paths.checkpoint("tokenizer", self.args.vq_steps))

    @property
    def ref_npz(self) -> Path:
        return self.paths.reference / "val_imagenet.npz"

    @property
    def heldout_deps(self) -> list[str]:
        return ["eval_subset"] if self.args.eval_limit is not None else ["data"]


CONFIG = str(TOKENIZER_CONFIG)
CPU = ["--device", "cpu"]
EVAL_FLAGS = ["--eval-python-path", "python"]  # our PyTorch evaluator, whatever EVAL_PYTHON_PATH says


def input_stages(plan: Plan) -> list[Stage]:
    """The data (+ the --eval-limit subset) and the tokenizer."""
    from gigatok.data import demo_data

    args, paths, data = plan.args, plan.paths, plan.data
    stages = [Stage("data", "colourised digits (train / held-out ImageFolders) and photos",
                    lambda: _exists(data.info), [paths.data],
                    func=lambda: demo_data.write_demo_data(paths.data, size=IMAGE_SIZE, seed=args.seed),
                    params={"size": IMAGE_SIZE, "seed": args.seed, "version": demo_data.DATA_VERSION})]
    if args.eval_limit is not None:
        stages.append(Stage("eval_subset", f"{args.eval_limit} class-balanced held-out digits for evaluation",
                            lambda: _exists(plan.heldout), [plan.heldout], ["data"],
                            func=lambda: demo_data.write_eval_subset(data.heldout, plan.heldout, args.eval_limit),
                            params={"limit": args.eval_limit}))
    steps = args.vq_steps
    stages.append(Stage(
        "tokenizer", f"train the tokenizer ({steps} steps)", lambda: _exists(Path(plan.vq_ckpt)),
        [paths.runs / "tokenizer"], ["data"], [
            "gigatok.stages.train_vq", "--model-config", CONFIG, "--data-path", str(data.train), "--save-path",
            str(paths.runs), "--sub-exp-dir", "tokenizer", "--iterations", str(steps), "--global-batch-size",
            str(args.vq_batch_size), "--warmup", str(min(50, steps // 10)), "--log-every", str(max(steps // 50, 1)),
            "--ckpt-every", str(max(steps // 4, 1)), "--mixed-precision", "none", "--no-wandb", "--num-workers", "0",
            *CPU],
        params={"config": to_dict(load_config(TOKENIZER_CONFIG))}))  # resolved: comment edits do not retrain
    return stages


def reconstruction_stages(plan: Plan) -> list[Stage]:
    """Held-out digits (metrics) and photos (qualitative) through `gigatok.stages.reconstruct`."""
    paths, heldout, out = plan.paths, str(plan.heldout), plan.paths.recon / "heldout"
    common = ["--model-config", CONFIG, "--vq-ckpt", plan.vq_ckpt, "--num-workers", "0", "--per-proc-batch-size",
              "64", *CPU]
    reference = Stage("reference", "held-out digits -> FID reference npz", lambda: _exists(plan.ref_npz),
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
                  lambda: _exists(paths.codes / "heldout" / "meta.json"), [paths.codes / "heldout"],
                  ["tokenizer", *plan.heldout_deps], [
                      "gigatok.stages.extract_codes", "--data-path", heldout, "--code-path", str(paths.codes / "heldout"),
                      "--model-config", CONFIG, "--vq-ckpt", plan.vq_ckpt, "--batch-size", "64", "--num-workers",
                      "0", "--resume", *CPU]),
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
    sampler = ["--gpt-model", GPT_MODEL, "--gpt-2d", "--gpt-ckpt", str(gpt_ckpt), "--vq-ckpt", plan.vq_ckpt,
               "--tok-config", CONFIG, "--num-classes", str(NUM_CLASSES), "--cfg-scale", str(args.cfg_scale),
               "--temperature", str(args.temperature), "--precision", "none", *CPU]
    steps, grids, fid = args.gpt_steps, paths.samples / "grids", paths.samples / "fid"
    return [
        Stage("codes", "extract the codes of the training digits", lambda: _exists(codes / "meta.json"), [codes],
              ["tokenizer"], [
                  "gigatok.stages.extract_codes", "--data-path", str(data.train), "--code-path", str(codes),
                  "--model-config", CONFIG, "--vq-ckpt", plan.vq_ckpt, "--batch-size", "64", "--num-workers", "0",
                  "--resume", *CPU]),
        Stage("gpt", f"train the class-conditional GPT ({steps} steps)", lambda: _exists(gpt_ckpt),
              [paths.runs / "gpt"], ["codes"], [
                  "gigatok.stages.train_c2i", "--code-path", str(codes), "--gpt-model", GPT_MODEL, "--gpt-2d",
                  "--save-path", str(paths.runs), "--sub-exp-dir", "gpt", "--iterations", str(steps),
                  "--global-batch-size", str(args.gpt_batch_size), "--lr", str(args.gpt_lr), "--lr-scheduler",
                  "cosine", "--end-lr", str(GPT_END_LR), "--log-every",
                  str(max(steps // 50, 1)), "--ckpt-every", str(max(steps // 4, 1)), "--mixed-precision", "none",
                  "--no-wandb", "--num-workers", "0", "--tok-config", CONFIG, "--vq-ckpt", plan.vq_ckpt, *CPU]),
        Stage("grids", "per-class sample grids", lambda: _exists(grids / "samples.npz"), [grids], ["gpt"], [
            "gigatok.stages.sample_c2i_visualization", *sampler, "--class-idx", ",".join(map(str, range(NUM_CLASSES))),
            "--qual-num", str(12 * NUM_CLASSES), "--per-proc-batch-size", "12", "--sample-dir", str(grids)]),
        Stage("samples", f"{args.num_samples} uniform-class samples" + (" + FID" if plan.use_fid else ""),
              lambda: sample_batch(fid, plan.use_fid), [fid], ["gpt"] + (["reference"] if plan.use_fid else []), [
                  "gigatok.stages.sample_c2i", *sampler, "--num-fid-samples", str(args.num_samples),
                  "--per-proc-batch-size", "50", "--sample-dir", str(fid),
                  *(["--gt-npz-path", str(plan.ref_npz), *EVAL_FLAGS] if plan.use_fid else ["--no-eval"])]),
        Stage("classifier", "train the digit classifier on the real training digits",
              lambda: _exists(paths.classifier / "classifier.json"), [paths.classifier], ["data"],
              func=lambda: train_classifier(data.train, data.heldout, paths.classifier, args),
              params={"epochs": args.classifier_epochs, "seed": args.seed}),
    ]


def build_stages(plan: Plan) -> list[Stage]:
    """The demo's stages, in order, with the exact flags each entry point gets."""
    return [*input_stages(plan), *reconstruction_stages(plan), *generation_stages(plan)]


def _exists(path: Path) -> Path | None:
    return path if path.exists() else None


def sample_batch(folder: Path, with_results: bool) -> Path | None:
    """The sample npz of the `samples` stage (with its FID results `.json` when asked), or None."""
    npz = first_match(folder, "*.npz")
    if npz is None or (with_results and not npz.with_suffix(".json").is_file()):
        return None
    return npz


def train_classifier(train_dir: Path, heldout_dir: Path, out: Path, args: argparse.Namespace) -> None:
    """Train the class-agreement judge on the real training digits; record its held-out accuracy."""
    import torch

    from gigatok.data.demo_data import read_image_folder
    from gigatok.eval import digit_classifier as dc

    train_images, train_labels, _ = read_image_folder(train_dir)
    heldout_images, heldout_labels, _ = read_image_folder(heldout_dir)
    model = dc.train_digit_classifier(train_images, train_labels, epochs=args.classifier_epochs, seed=args.seed,
                                      progress=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "classifier.pt")
    write_json_atomic(out / "classifier.json", {
        "heldout_accuracy": dc.accuracy(model, heldout_images, heldout_labels),
        "heldout_accuracy_mirrored": dc.accuracy(model, heldout_images[:, :, ::-1].copy(), heldout_labels),
        "per_class": dc.per_class_accuracy(model, heldout_images, heldout_labels),
        "epochs": args.classifier_epochs, "seed": args.seed, "image_size": int(train_images.shape[1])})


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


def compute_metrics(paths: Paths, use_fid: bool, use_rfid: bool, fid_note: str) -> dict[str, Any]:
    """Every number of the report: reconstruction, classifier, class agreement, FID."""
    import numpy as np
    import torch

    from gigatok.eval import digit_classifier as dc

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
        "class_agreement_per_class": [float(hits[labels == c].mean()) for c in range(NUM_CLASSES)],
        "num_samples": len(labels),
        "fid": read_json(npz.with_suffix(".json"))["fid"] if use_fid else None,
        "fid_note": (f"{len(labels)} samples vs {metrics['num_heldout']} held-out digits ({fid_note})" if use_fid
                     else f"not computed: {fid_note}"),
    })
    metrics["targets"] = {name: {"target": target, "value": metrics[name], "met": metrics[name] >= target}
                          for name, target in TARGETS.items()}
    return metrics


def make_figures(plan: Plan, figures: Path) -> dict[str, Path]:
    """Reconstruction grids (ground truth | reconstruction), sample grid, training curves; returns name -> PNG."""
    import numpy as np

    from gigatok.data.demo_data import read_image_folder
    from gigatok.eval.recon_metrics import read_png_images
    from gigatok.infra import report as rep

    paths, made = plan.paths, {}
    # Held-out digits: the first 4 of every class (the reconstruct stage numbers images in ImageFolder order).
    recon_dir = first_match(paths.recon / "heldout", "*/000000.png").parent
    gt, labels, _ = read_image_folder(plan.heldout)
    pick = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(NUM_CLASSES)])
    recon = read_png_images([recon_dir / f"{i:06d}.png" for i in pick])
    made["recon_heldout"] = save_png_atomic(figures / "recon_heldout.png", rep.pair_grid(gt[pick], recon, 8, scale=4))
    photo_dir = first_match(paths.recon / "photos", "*/grid.png").parent
    gt_files = sorted(photo_dir.glob("*_gt.png"))
    made["recon_photos"] = save_png_atomic(figures / "recon_photos.png", rep.pair_grid(
        read_png_images(gt_files), read_png_images([f.with_name(f.name.replace("_gt", "")) for f in gt_files]),
        4, scale=3))
    with np.load(paths.samples / "grids" / "samples.npz") as batch:
        images_uint8, sample_labels = batch["arr_0"], batch["labels"]
    rows = [images_uint8[sample_labels == c][:12] for c in range(NUM_CLASSES)]  # one row per class
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
    return made


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=str, default="results/demo", help="output folder (report.md, metrics.json, ...)")
    p.add_argument("--fresh", action="store_true", help="delete --out first and run every stage again")
    p.add_argument("--until", type=str, default=None, help="stop after this stage (e.g. tokenizer); no report")
    p.add_argument("--vq-steps", type=int, default=1200, help="tokenizer training steps")
    p.add_argument("--vq-batch-size", type=int, default=32)
    p.add_argument("--gpt-steps", type=int, default=1200, help="GPT training steps")
    p.add_argument("--gpt-batch-size", type=int, default=128)
    p.add_argument("--gpt-lr", type=float, default=3e-3)
    p.add_argument("--num-samples", type=int, default=300,
                   help="generated images for class agreement and FID (30 per class: about 2 points of standard error)")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--classifier-epochs", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=None,
                   help="use only this many held-out digits (class-balanced) for the reconstruction metrics and as "
                        "the FID reference (default: all; tests pass a few to stay fast)")
    p.add_argument("--no-fid", action="store_true", help="skip FID even when the Inception weights are present")
    p.add_argument("--rfid", action="store_true",
                   help="also the held-out rFID (the quantitative gigatok.stages.reconstruct run: one more Inception pass, "
                        "about 40 s on 2 cores)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the stages (default: torch's)")
    p.add_argument("--no-warm-start", action="store_true",
                   help="run each stage as a plain `python -m` subprocess instead of forking it from a warm "
                        "interpreter (same results; 5-15 s more per stage on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="data colours/split and classifier seed")
    return p.parse_args(argv)


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


LIMITS = {
    "heldout_psnr_db": "tokenizer training length (--vq-steps; the loss curve is still falling: 1000 steps gave "
                       "24.4 dB, 1200 steps 24.6-25.2 dB, 1400 steps 25.0 dB; configs/vq/VQ_demo.yaml lists the runs "
                       "behind its choices)",
    "codebook_usage": "few held-out tokens per code (held-out images x 16 tokens over 256 codes); the entropy loss "
                      "weight of VQ_demo.yaml",
    "class_agreement": "the debug GPT (2 layers, width 64) and its training length (--gpt-steps); sampling "
                       "(--cfg-scale, --temperature)",
    "classifier_heldout_accuracy": "classifier training length (--classifier-epochs)",
}


def write_report(plan: Plan, stages: list[Stage], records: dict[str, dict[str, Any]], fid_note: str,
                 wall_s: float) -> Path:
    """metrics.json, the figures and report.md (all links relative to --out)."""
    from gigatok.infra import report as rep

    args, paths = plan.args, plan.paths
    metrics = compute_metrics(paths, plan.use_fid, plan.use_rfid, fid_note)
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
               for name, path in make_figures(plan, paths.out / "figures").items()}
    grids = {f"class_grid_{c}": f"samples/grids/class_{c}_grid.png" for c in range(NUM_CLASSES)}
    settings = {
        "data": f"scikit-learn digits at {IMAGE_SIZE} px, colourised (gigatok/data/demo_data.py), "
                f"{read_json(paths.data / 'data.json')['num_train']} training / {metrics['num_heldout']} evaluated "
                "held-out images; photos reconstructed at 32 px",
        "tokenizer": f"`{TOKENIZER_CONFIG.relative_to(REPO_ROOT)}` (resolved: [config.yaml]"
                     f"(runs/tokenizer/config.yaml)), {args.vq_steps} steps at batch {args.vq_batch_size}",
        "GPT": f"`{GPT_MODEL}` with 2D RoPE ([config.yaml](runs/gpt/config.yaml)), {args.gpt_steps} steps at batch "
               f"{args.gpt_batch_size}, lr {args.gpt_lr:g} with cosine decay to {GPT_END_LR:g}",
        "sampling": f"cfg scale {args.cfg_scale}, temperature {args.temperature}, {args.num_samples} samples",
        "classifier": f"{args.classifier_epochs} epoch(s) on the training digits (horizontal flips included: the GPT "
                      "learns from the codes of every digit and of its mirror image, as officially)",
        "command": "`python -m gigatok.stages.demo " + " ".join(a for a in sys.argv[1:]) + "`",
    }
    text = rep.render_demo_report(metrics, stage_rows, settings, {**figures, **grids, "metrics": "metrics.json"},
                                  wall_s, LIMITS)
    return write_text_atomic(paths.out / "report.md", text)


def run_demo(args: argparse.Namespace) -> Path:
    """All stages, then metrics and the report; returns the report path (or --out with --until)."""
    out = Path(args.out).resolve()
    check_args(args, out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    use_fid, fid_note = (False, "--no-fid") if args.no_fid else inception_available()
    plan = Plan(args, Paths(out), use_fid)
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
    with StageRunner(out, args.threads, warm=not args.no_warm_start, modules=modules) as runner:
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
    report = write_report(plan, stages, runner.records, fid_note, time.perf_counter() - tic)
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
