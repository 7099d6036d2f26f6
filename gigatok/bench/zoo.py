"""`python -m gigatok.bench zoo`: the quantizer zoo on one bench (issue #17, item 3).

One tokenizer per quantizer (`model.init_args.quantizer`: vq | simvq | ibq | lfq | fsq), each with the same backbone,
data, steps and seed, each with an implicit codebook of the same size (`QUANTIZERS` says how), then the same small
GPT on each tokenizer's codes: the AR-probing idea of the paper at demo scale. By default the CPU demo's digits
(`gigatok.data.demo_data`), the demo's 2D tokenizer config (`configs/vq/VQ_demo_2d.yaml`: 16 codes of K = 256) and
the demo's budget (1200 tokenizer steps at batch 32); any ImageFolder pair (`--data-path`, `--heldout-path`) and config
on a GPU. Every step runs the entry point users run, as `python -m <module>`, through
`gigatok.infra.stage_runner` (as the demo does), per quantizer:

  stage               runs                                      what
  <q>_tokenizer       gigatok.stages.train_vq                   the tokenizer, config + the quantizer's overrides
  <q>_recon           gigatok.stages.reconstruct --qualitative  held-out reconstructions (PSNR, SSIM, LPIPS here)
  <q>_codes_heldout   gigatok.stages.extract_codes              held-out codes (usage, perplexity, AR val loss)
  <q>_codes           gigatok.stages.extract_codes              training codes
  <q>_gpt             gigatok.stages.train_c2i                  the debug GPT on the training codes
  <q>_val_loss        gigatok.stages.val_loss_c2i               its cross-entropy on the held-out codes

then `zoo.json`, `zoo.md` and `zoo.png` in --out (default results/zoo). Re-runs reuse every finished stage (records
in `<out>/stages/`); a stage whose command or inputs changed starts over; an interrupted one resumes.

Metrics, per quantizer, on the held-out images (center view):
  bits per image     codes per image x log2 K
  PSNR / SSIM        the official conventions (`gigatok.eval.recon_metrics`; SSIM with data_range 2 as the official
                     scripts; PSNR on [0, 1] images)
  LPIPS              LPIPS-VGG when its VGG16 + linear weights are on disk, else "n/a" and the reason (never
                     downloaded here)
  codebook usage     unique codes / min(K, held-out tokens), so an implicit codebook larger than the held-out set can
                     fill is not penalised
  perplexity         exp(entropy of the held-out code histogram), in codes (at most K)
  AR val loss        nats per code of the GPT on the held-out codes (lower: codes that are easier to model)
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from gigatok.errors import UserError
from gigatok.infra.io import save_png_atomic, write_json_atomic, write_text_atomic
from gigatok.infra.stage_runner import (
    Stage,
    StageRunner,
    existing,
    first_match,
    read_json,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/vq/VQ_demo_2d.yaml"
RECORD_VERSION = 1
USAGE_TARGET = 0.80  # issue #17's acceptance: every quantizer at least 80% usage on the demo data and budget
GPT_MODEL, GPT_END_LR = "debug", 1e-4
# lfq and ibq see unnormalised z, so at the official entropy temperature (0.01) their softmax over z.c saturates
# and the entropy loss has no gradient: on the demo digits both collapsed to 1-2 codes (docs/zoo.md). A 10x higher
# temperature and MAGVIT-v2's weight 0.1 keep lfq at 100% usage.
TUNED_ENTROPY = ["--model.init_args.entropy_temperature=0.1", "--model.init_args.entropy_loss_ratio=0.1"]
# Per quantizer: the overrides of the (vq) config and what they mean. For the demo config (K = 256, 8-dim codes)
# every implicit codebook has 256 entries; `check_codebooks` refuses a config where they would differ.
QUANTIZERS: dict[str, tuple[list[str], str]] = {
    "vq": ([], "l2-normalised codebook, entropy loss, rotation trick (the config as is)"),
    "simvq": (["--model.init_args.quantizer=simvq", "--model.init_args.codebook_transform=linear",
               "--model.init_args.freeze_codebook=true"], "frozen codebook x learned linear map"),
    "ibq": (["--model.init_args.quantizer=ibq", "--model.init_args.codebook_embed_dim=64", *TUNED_ENTROPY],
            "index backpropagation (softmax over all codes), 64-dim codes; entropy loss 0.1 at temperature 0.1"),
    "lfq": (["--model.init_args.quantizer=lfq", "--model.init_args.codebook_embed_dim={bits}", *TUNED_ENTROPY],
            "sign quantization, {bits} bits per code (K = 2**{bits}); entropy loss 0.1 at temperature 0.1"),
    "fsq": (["--model.init_args.quantizer=fsq", "--model.init_args.levels=[{levels}]",
             "--model.init_args.codebook_embed_dim={dims}"], "finite scalar quantization, levels [{levels}]"),
}
# K = 256 as two 16-level channels: [4, 4, 4, 4] and [8, 8, 4] reach 30% and 10% usage on the demo digits, [16, 16]
# about 80% (docs/zoo.md).
FSQ_LEVELS = {256: [16, 16], 1024: [8, 8, 4, 4], 4096: [8, 8, 8, 8], 16384: [8, 8, 8, 8, 4]}
# fsq has no loss term to keep its codes spread, and above this learning rate its bounded latents saturate: at the
# demo's 3e-3 (30x the official 1e-4) it collapsed to 3 codes; 2e-3: 36% usage, 1e-3: 79%, 7e-4: 81%, 5e-4: 77%
# (docs/zoo.md). Configs at or below it (the official ones) are unchanged.
FSQ_MAX_LR = 7e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `zoo` flags to its subparser."""
    parser.add_argument("--out", default="results/zoo", help="output folder (zoo.md, zoo.json, zoo.png, runs)")
    parser.add_argument("--quantizers", default=",".join(QUANTIZERS),
                        help="comma-separated, from " + ", ".join(QUANTIZERS) + " (default: all)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="tokenizer YAML with the vq quantizer "
                        "(default: %(default)s); each quantizer overrides its own settings")
    parser.add_argument("--data-path", default=None, help="training ImageFolder (default: the demo's digits)")
    parser.add_argument("--heldout-path", default=None, help="held-out ImageFolder (required with --data-path)")
    parser.add_argument("--vq-steps", type=int, default=1200, help="tokenizer training steps (the demo's)")
    parser.add_argument("--vq-batch-size", type=int, default=32, help="tokenizer batch size (the demo's)")
    parser.add_argument("--gpt-steps", type=int, default=1200, help="GPT training steps (the demo's)")
    parser.add_argument("--gpt-batch-size", type=int, default=128, help="GPT batch size")
    parser.add_argument("--gpt-lr", type=float, default=3e-3, help="GPT peak learning rate (cosine decay)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the data (the digits: 10)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate only the first N held-out images (tests; default: all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of every stage")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the stages")
    parser.add_argument("--seed", type=int, default=0, help="data split/colours seed (the tokenizers' is the config's)")
    parser.add_argument("--no-warm-start", action="store_true", help="plain subprocesses instead of warm forks")


def quantizer_overrides(name: str, codebook_size: int, lr: float) -> tuple[list[str], str]:
    """(CLI overrides of the vq config, one-line description) giving quantizer `name` an implicit codebook of
    `codebook_size` entries, for a config with learning rate `lr` (fsq caps it at `FSQ_MAX_LR`)."""
    bits = round(math.log2(codebook_size))
    levels = FSQ_LEVELS.get(codebook_size)
    if name == "lfq" and 2 ** bits != codebook_size:
        raise UserError(f"lfq needs a power-of-two codebook_size to match the others, got {codebook_size}")
    if name == "fsq" and levels is None:
        raise UserError(f"no fsq levels for codebook_size {codebook_size}; use one of {sorted(FSQ_LEVELS)}")
    fmt = {"bits": bits, "levels": ",".join(map(str, levels or [])), "dims": len(levels or [])}
    overrides, text = QUANTIZERS[name]
    overrides, text = [o.format(**fmt) for o in overrides], text.format(**fmt)
    if name == "fsq" and lr > FSQ_MAX_LR:
        overrides.append(f"--trainer.lr={FSQ_MAX_LR}")
        text += f"; lr {FSQ_MAX_LR:g} (the config's {lr:g} saturates it)"
    return overrides, text


def check_args(args: argparse.Namespace) -> list[str]:
    """The quantizer names; fails on a bad flag."""
    names = [q.strip() for q in args.quantizers.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUANTIZERS]
    if not names or unknown or len(set(names)) != len(names):
        raise UserError(f"--quantizers '{args.quantizers}': give distinct names from {', '.join(QUANTIZERS)}")
    for flag in ("vq_steps", "vq_batch_size", "gpt_steps", "gpt_batch_size", "num_classes"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if (args.data_path is None) != (args.heldout_path is None):
        raise UserError("pass --data-path and --heldout-path together (or neither: the demo's digits)")
    if not Path(args.config).is_file():
        raise UserError(f"--config '{args.config}' is not a file")
    return names


def lpips_status() -> tuple[bool, str]:
    """Whether LPIPS-VGG weights are on disk (nothing is downloaded), and why not."""
    from gigatok.tokenizer.perceptual import find_lin_weights, find_vgg16_weights

    try:
        find_vgg16_weights()
        find_lin_weights()
    except UserError as err:
        return False, str(err).splitlines()[0]
    return True, "LPIPS-VGG (torchvision VGG16 + LPIPS linear weights)"


def quantizer_stages(q: str, args: argparse.Namespace, out: Path, data: dict[str, Path],
                     use_lpips: bool) -> list[Stage]:
    """The six stages of one quantizer (module docstring), with the exact flags each entry point gets."""
    from gigatok.config import load_config, to_dict

    config = load_config(args.config)
    init_args = config.model.init_args
    overrides, _ = quantizer_overrides(q, init_args.codebook_size, config.trainer.lr)
    size = init_args.image_size
    runs, cpu = out / "runs" / q, ["--device", args.device]
    ckpt = runs / "tokenizer" / "checkpoints" / f"{args.vq_steps:07d}.pt"
    run_config = runs / "tokenizer" / "config.yaml"  # the resolved config (with the quantizer's overrides)
    gpt_ckpt = runs / "gpt" / "checkpoints" / f"{args.gpt_steps:07d}.pt"
    tok = ["--model-config", str(run_config), "--vq-ckpt", str(ckpt)]
    steps, recon, codes, heldout_codes = args.vq_steps, runs / "recon", runs / "codes", runs / "codes_heldout"
    val_json = runs / "val_loss.json"

    def codes_stage(name: str, title: str, src: Path, dst: Path) -> Stage:
        return Stage(name, title, lambda: existing(dst / "meta.json"), [dst], [f"{q}_tokenizer", "data"], [
            "gigatok.stages.extract_codes", "--data-path", str(src), "--code-path", str(dst), *tok,
            "--batch-size", "64", "--num-workers", "0", "--resume", *cpu])

    return [
        Stage(f"{q}_tokenizer", f"train the {q} tokenizer ({steps} steps)", lambda: existing(ckpt),
              [runs / "tokenizer"], ["data"], [
                  "gigatok.stages.train_vq", "--model-config", args.config, *overrides, "--data-path",
                  str(data["train"]), "--save-path", str(runs), "--sub-exp-dir", "tokenizer", "--iterations",
                  str(steps), "--global-batch-size", str(args.vq_batch_size), "--warmup", str(min(50, steps // 10)),
                  "--log-every", str(max(steps // 50, 1)), "--ckpt-every", str(max(steps // 4, 1)),
                  "--mixed-precision", "none", "--no-wandb", "--num-workers", "0", *cpu],
              params={"config": to_dict(load_config(args.config, overrides))}),  # resolved: comments do not retrain
        Stage(f"{q}_recon", f"reconstruct the held-out images ({q})", lambda: first_match(recon, "*/grid.png"),
              [recon], [f"{q}_tokenizer", "data"], [
                  "gigatok.stages.reconstruct", "--qualitative", "--data-path", str(data["heldout"]),
                  "--image-size", str(size), "--sample-dir", str(recon), *tok, "--num-workers", "0",
                  "--per-proc-batch-size", "64",
                  *(["--lpips"] if use_lpips else []), *cpu]),
        codes_stage(f"{q}_codes_heldout", f"held-out codes ({q})", data["heldout"], heldout_codes),
        codes_stage(f"{q}_codes", f"training codes ({q})", data["train"], codes),
        Stage(f"{q}_gpt", f"train the {GPT_MODEL} GPT on the {q} codes ({args.gpt_steps} steps)",
              lambda: existing(gpt_ckpt), [runs / "gpt"], [f"{q}_codes"], [
                  "gigatok.stages.train_c2i", "--code-path", str(codes), "--gpt-model", GPT_MODEL, "--gpt-2d",
                  "--save-path", str(runs), "--sub-exp-dir", "gpt", "--iterations", str(args.gpt_steps),
                  "--global-batch-size", str(args.gpt_batch_size), "--lr", str(args.gpt_lr), "--lr-scheduler",
                  "cosine", "--end-lr", str(GPT_END_LR), "--log-every", str(max(args.gpt_steps // 50, 1)),
                  "--ckpt-every", str(max(args.gpt_steps // 2, 1)), "--mixed-precision", "none", "--no-wandb",
                  "--num-workers", "0", "--tok-config", str(run_config), "--vq-ckpt", str(ckpt), *cpu]),
        Stage(f"{q}_val_loss", f"AR validation loss on the held-out {q} codes", lambda: existing(val_json),
              [val_json], [f"{q}_gpt", f"{q}_codes_heldout"], [
                  "gigatok.stages.val_loss_c2i", "--code-path", str(heldout_codes), "--gpt-model", GPT_MODEL,
                  "--gpt-2d", "--gpt-ckpt", str(gpt_ckpt), "--out", str(val_json), "--num-workers", "0",
                  "--precision", "none", *cpu]),
    ]


def data_stage(args: argparse.Namespace, out: Path) -> tuple[Stage, dict[str, Path]]:
    """The demo's digits at the config's image size (or the given folders, copied as a limited subset with
    --eval-limit)."""
    from gigatok.config import load_config
    from gigatok.data import demo_data

    size = load_config(args.config).model.init_args.image_size
    if args.data_path is None:
        paths = demo_data.demo_data_paths(out / "data")
        train, heldout, info = paths.train, paths.heldout, paths.info
        write = lambda: demo_data.write_demo_data(out / "data", size=size, seed=args.seed)  # noqa: E731
    else:
        train, heldout, info = Path(args.data_path), Path(args.heldout_path), Path(args.heldout_path)
        write = lambda: None  # noqa: E731
    data = {"train": train, "heldout": heldout}
    params: dict[str, Any] = {"size": size, "seed": args.seed, "train": str(train), "heldout": str(heldout)}
    if args.eval_limit is not None:  # a class-balanced subset of the held-out images
        subset = out / "data" / "heldout_eval"
        params["eval_limit"] = args.eval_limit

        def write_subset(inner=write) -> None:
            inner()
            demo_data.write_eval_subset(heldout, subset, args.eval_limit)

        write, info, data["heldout"] = write_subset, subset, subset
    return Stage("data", "the images (training / held-out)", lambda: existing(info),
                 [out / "data"] if args.data_path is None or args.eval_limit is not None else [], func=write,
                 params=params), data


def code_stats(folder: Path) -> dict[str, Any]:
    """Usage and perplexity of the center-view codes in an `extract_codes` folder."""
    meta = read_json(folder / "meta.json")
    codes = np.concatenate([np.load(folder / shard["codes"])[:, 0] for shard in meta["shards"]])  # (N, L)
    k, (n, length) = meta["codebook_size"], codes.shape
    counts = np.bincount(codes.ravel(), minlength=k)
    p = counts[counts > 0] / codes.size
    used = int((counts > 0).sum())
    return {"codebook_size": k, "codes_per_image": length, "bits_per_image": length * math.log2(k),
            "num_heldout_images": n, "num_heldout_tokens": int(codes.size), "unique_codes": used,
            "codebook_usage": used / min(k, codes.size), "perplexity": float(np.exp(-(p * np.log(p)).sum()))}


def recon_stats(folder: Path, use_lpips: bool) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(PSNR / SSIM / LPIPS means, ground truth (N, S, S, 3) uint8, reconstructions) of a qualitative run."""
    from gigatok.eval.recon_metrics import (
        OFFICIAL_SSIM_DATA_RANGE,
        psnr_batch,
        read_png_images,
        ssim_batch,
    )

    run = first_match(folder, "*/grid.png").parent
    gt_files = sorted(run.glob("*_gt.png"))
    gt = read_png_images(gt_files)
    stems = [f.name.replace("_gt.png", "") for f in gt_files]  # {idx:06d}.png, or {idx:06d}_{lpips}.png
    recon = read_png_images([run / f"{s}.png" if (run / f"{s}.png").is_file() else first_match(run, f"{s}_[0-9]*.png")
                             for s in stems])
    gt_f, recon_f = gt.astype(np.float32) / 255.0, recon.astype(np.float32) / 255.0  # [0, 1]
    ssim = ssim_batch(recon_f, gt_f, data_ranges=(OFFICIAL_SSIM_DATA_RANGE,))  # (N, 1)
    lpips = float((run / "lpips_val.txt").read_text()) if use_lpips else None
    return ({"psnr_db": float(psnr_batch(recon_f, gt_f, data_range=1.0).mean()), "ssim": float(ssim[:, 0].mean()),
             "lpips": lpips}, gt, recon)


def draw_figure(rows: list[dict[str, Any]], images: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """One PNG: ground truth then one row of reconstructions per quantizer (the same 10 held-out images), and bars
    of usage, PSNR and AR val loss beside each row. PIL only."""
    from PIL import Image, ImageDraw

    from gigatok.infra import report as rep

    first = next(iter(images.values()))[0]
    pick = np.linspace(0, len(first) - 1, min(10, len(first))).round().astype(int)  # ImageFolder order: ~1 per class
    scale = max(1, 48 // first.shape[1])
    strips = {"truth": rep.tile(rep.upscale(first[pick], scale), len(pick))}
    strips.update({r["quantizer"]: rep.tile(rep.upscale(images[r["quantizer"]][1][pick], scale), len(pick))
                   for r in rows})
    strip_h, strip_w = next(iter(strips.values())).shape[:2]
    label_w, bar_w, gap, head = 60, 110, 8, 16
    bars = [("usage", "codebook_usage", 1.0), ("PSNR dB", "psnr_db", max(r["psnr_db"] for r in rows)),
            ("AR val loss", "ar_val_loss", max(r["ar_val_loss"] for r in rows))]
    width = label_w + strip_w + len(bars) * (bar_w + gap) + gap
    canvas = Image.new("RGB", (width, head + len(strips) * strip_h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (title, _, _) in enumerate(bars):
        draw.text((label_w + strip_w + gap + j * (bar_w + gap), 2), title, fill="black")
    for i, (name, strip) in enumerate(strips.items()):
        top = head + i * strip_h
        canvas.paste(Image.fromarray(strip), (label_w, top))
        draw.text((4, top + strip_h // 2 - 6), name, fill="black")
        row = next((r for r in rows if r["quantizer"] == name), None)
        for j, (_, key, top_value) in enumerate(bars):
            if row is None:
                continue
            left, value = label_w + strip_w + gap + j * (bar_w + gap), row[key]
            length = int((bar_w - 36) * value / top_value) if top_value > 0 else 0
            draw.rectangle([left, top + strip_h // 3, left + max(length, 1), top + 2 * strip_h // 3],
                           fill=(70, 110, 180))
            draw.text((left + length + 3, top + strip_h // 2 - 6), f"{value:.3g}", fill="black")
    return save_png_atomic(path, np.asarray(canvas))


def collect(names: list[str], args: argparse.Namespace, out: Path, records: dict[str, dict[str, Any]],
            lpips: tuple[bool, str]) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """One row of metrics per quantizer, and its (ground truth, reconstructions)."""
    from gigatok.config import load_config

    config = load_config(args.config)
    k, lr = config.model.init_args.codebook_size, config.trainer.lr
    rows, images = [], {}
    for q in names:
        runs = out / "runs" / q
        recon, gt, rec = recon_stats(runs / "recon", lpips[0])
        stages = {name: r for name, r in records.items() if name.startswith(f"{q}_")}
        rows.append({"quantizer": q, "settings": quantizer_overrides(q, k, lr)[1], **code_stats(runs / "codes_heldout"),
                     **recon, "lpips_note": None if lpips[0] else f"n/a: {lpips[1]}",
                     "ar_val_loss": read_json(runs / "val_loss.json")["val_loss"],
                     "usage_target_met": None,
                     "tokenizer_wall_s": stages[f"{q}_tokenizer"]["wall_s"],
                     "gpt_wall_s": stages[f"{q}_gpt"]["wall_s"],
                     "wall_s": sum(r["wall_s"] for r in stages.values()),
                     "reused": all(r.get("reused", False) for r in stages.values())})
        rows[-1]["usage_target_met"] = rows[-1]["codebook_usage"] >= USAGE_TARGET
        images[q] = (gt, rec)
    return rows, images


def render_markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    from gigatok.infra.report import markdown_table

    table = markdown_table(
        ["quantizer", "settings", "K", "bits / image", "PSNR (dB)", "SSIM", "LPIPS", "usage", "perplexity",
         "AR val loss (nats/code)", f"usage >= {USAGE_TARGET:.0%}", "wall (s): tokenizer / GPT / all"],
        [[r["quantizer"], r["settings"], r["codebook_size"], f"{r['bits_per_image']:.0f}", r["psnr_db"], r["ssim"],
          "n/a" if r["lpips"] is None else r["lpips"], f"{r['codebook_usage']:.1%}", r["perplexity"], r["ar_val_loss"],
          "yes" if r["usage_target_met"] else "NO",
          f"{r['tokenizer_wall_s']:.0f} / {r['gpt_wall_s']:.0f} / {r['wall_s']:.0f}"] for r in rows])
    lines = ["# Quantizer zoo bench", "", f"Command: `{setup['command']}`", "",
             f"Tokenizer config `{setup['config']}` ({setup['vq_steps']} steps at batch {setup['vq_batch_size']}); "
             f"GPT `{GPT_MODEL}` ({setup['gpt_steps']} steps at batch {setup['gpt_batch_size']}, lr "
             f"{setup['gpt_lr']}); data: {setup['data']}; {setup['num_heldout']} held-out images.", "", table, "",
             "Usage: unique held-out codes / min(K, held-out tokens); perplexity: exp(entropy) of the held-out code "
             "histogram; AR val loss: the GPT's cross-entropy on the held-out codes. LPIPS: "
             + (setup["lpips_note"]), "", "![zoo](zoo.png)", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Every stage (reusing finished ones), then zoo.json, zoo.md and zoo.png; returns the JSON summary."""
    names = check_args(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lpips = lpips_status()
    data, data_paths = data_stage(args, out)
    stages = [data] + [s for q in names for s in quantizer_stages(q, args, out, data_paths, lpips[0])]
    modules = list(dict.fromkeys(s.command[0] for s in stages if s.command))
    tic = time.perf_counter()
    with StageRunner(out, args.threads, warm=not args.no_warm_start, modules=modules, root=REPO_ROOT,
                     version=RECORD_VERSION, label="zoo") as runner:
        for i, stage in enumerate(stages, start=1):
            runner.run(stage, i, len(stages))
    rows, images = collect(names, args, out, runner.records, lpips)
    setup = {"command": " ".join(["python -m gigatok.bench", *argv]), "config": args.config,
             "vq_steps": args.vq_steps, "vq_batch_size": args.vq_batch_size, "gpt_steps": args.gpt_steps,
             "gpt_batch_size": args.gpt_batch_size, "gpt_lr": args.gpt_lr, "gpt_model": GPT_MODEL,
             "data": "the CPU demo's digits" if args.data_path is None else f"{args.data_path} / {args.heldout_path}",
             "num_heldout": rows[0]["num_heldout_images"],
             "lpips_note": lpips[1] if lpips[0] else f"n/a ({lpips[1].split('. ')[0]})",
             "threads": args.threads, "device": args.device}
    figure = draw_figure(rows, images, out / "zoo.png")
    summary = {"bench": "zoo", "setup": setup, "quantizers": rows, "wall_s": time.perf_counter() - tic,
               "figure": str(figure), "table": str(out / "zoo.md")}
    write_json_atomic(out / "zoo.json", summary)
    write_text_atomic(out / "zoo.md", render_markdown(rows, setup))
    return summary


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """The `zoo` subcommand (`argv`: its command line, recorded in zoo.md); one JSON line on stdout."""
    import json

    summary = run(args, argv)
    print(json.dumps({k: summary[k] for k in ("bench", "wall_s", "figure", "table")}
                     | {"codebook_usage": {r["quantizer"]: r["codebook_usage"] for r in summary["quantizers"]}}))
    return 0
