"""gpu-check parts of the evaluation and the seed commands: the ADM evaluator's Inception pass, and the two
official seed commands run on procedural official-format checkpoints.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gigatok.bench import (
    _sync,
)
from gigatok.bench.gpu_parts import (  # the shared pieces
    ROOT,
    Check,
    init_weights,
)


def part_adm_inception(check: Check) -> dict:
    from gigatok.eval.inception import extract_features, load_inception

    if check.tiny or check.inception_weights == "random":  # the pass (and its speed) without the weights file
        from gigatok.eval.inception_net import FIDInceptionV3

        torch.manual_seed(0)
        model = FIDInceptionV3(classifier=False).fold_batchnorm().eval().requires_grad_(False)
        model = model.to(device=check.device, memory_format=torch.channels_last)
        weights, num_images, size, batch = "random", *((8, 64, 8) if check.tiny else (1024, 256, 64))
    else:  # missing weights: InceptionWeightsError, whose message names the files looked for
        model = load_inception(check.inception_weights, device=check.device)
        weights, num_images, size, batch = model.weights_kind, 1024, 256, 64
    images = np.random.default_rng(0).integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
    batches = [images[i:i + batch] for i in range(0, num_images, batch)]  # (n, H, W, 3) uint8
    extract_features(model, batches[:1], batch, progress=False)  # warm-up: cuDNN / oneDNN kernel choice
    _sync(check.device)
    start = time.perf_counter()
    pool = extract_features(model, batches, batch, progress=False)["pool"]
    _sync(check.device)
    seconds = time.perf_counter() - start
    if not np.isfinite(pool).all():
        raise RuntimeError("non-finite Inception pool features")
    return {"weights": weights, "num_images": num_images, "image_size": size, "batch_size": batch,
            "images_per_s": round(num_images / seconds, 2), "pool_shape": list(pool.shape)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_seed_checkpoints(folder: Path, check: Check) -> dict:
    """Official-format files ({"model", "args" (Namespace), "steps"}) of a tokenizer and a GPT, procedural
    weights, and the settings the two commands get."""
    from gigatok.builders import build_gpt, build_tokenizer
    from gigatok.config import load_config
    from gigatok.infra.io import torch_save_atomic
    from gigatok.zoo import config_path

    tok_name, gpt_name, classes = ("VQ_debug", "debug", 10) if check.tiny else ("VQ_SS256", "GPT-B", 1000)
    config = load_config(config_path(tok_name))  # the shipped file as is: the commands read it
    args = config.model.init_args
    torch.manual_seed(0)
    tokenizer = build_tokenizer(config)
    init_weights(tokenizer)
    torch_save_atomic({"model": tokenizer.state_dict(), "args": argparse.Namespace(image_size=args.image_size),
                       "steps": 50}, folder / "vq.pt")
    gpt = build_gpt(gpt_name, vocab_size=args.codebook_size, block_size=args.num_latent_tokens, num_classes=classes)
    init_weights(gpt)  # (the fresh head is zero: uniform sampling; procedural weights give it a real one)
    torch_save_atomic({"model": gpt.state_dict(), "steps": 10, "args": argparse.Namespace(gpt_model=gpt_name)},
                      folder / "gpt.pt")
    return {"tok_config": str(config_path(tok_name)), "gpt_model": gpt_name, "num_classes": classes,
            "image_size": args.image_size}


def part_seed_commands(check: Check) -> dict:
    from gigatok.infra.io import save_png_atomic
    from gigatok.tokenizer.perceptual import RANDOM_BACKBONE_ENV

    scripts = {name: ROOT / "scripts" / f"{name}.sh" for name in ("reconstruction", "sample_c2i_visualization")}
    if not all(p.is_file() for p in scripts.values()):
        return {"status": "skipped", "reason": f"scripts/ not found under {ROOT} (installed package without the repo)"}
    tmp = Path(tempfile.mkdtemp(prefix="gigatok_seed_"))
    try:
        settings = _write_seed_checkpoints(tmp, check)
        size = settings["image_size"]
        data = tmp / "tests"  # the README's DATA_PATH=${PROJECT_ROOT}/tests/
        rng = np.random.default_rng(0)
        for i in range(2):  # smooth procedural images: low-frequency noise, upsampled
            low = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
            image = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
            save_png_atomic(data / f"image_{i}.png", (image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        env = {**os.environ, "gpus": "1", RANDOM_BACKBONE_ENV: "1", "GIGATOK_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for name in ("GPUS", "TORCH_RUN_PATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        if not check.cuda:
            env["OMP_NUM_THREADS"] = "1"
        device = ["--device", check.device.type]
        recon_dir, sample_dir = tmp / "results" / "reconstructions", tmp / "results" / "gpt_eval"
        commands = {
            "reconstruction": [
                "--quant-way=vq", f"--data-path={data}/", f"--image-size={size}", f"--sample-dir={recon_dir}",
                f"--vq-ckpt={tmp / 'vq.pt'}", "--model-config", settings["tok_config"], "--qualitative", "--lpips",
                "--num-workers", "0", *device],
            "sample_c2i_visualization": [
                "--quant-way=vq", f"--image-size={size}", f"--sample-dir={sample_dir}", "--vq-ckpt", str(tmp / "vq.pt"),
                "--tok-config", settings["tok_config"], "--gpt-model", settings["gpt_model"], "--cfg-schedule",
                "constant", "--cfg-scale", "4.0", "--gpt-ckpt", str(tmp / "gpt.pt"), "--precision", "fp16",
                "--class-idx", "7,1,3" if check.tiny else "22,388,90,978", "--per-proc-batch-size", "4" if check.tiny
                else "8", "--qual-num", "3" if check.tiny else "40", "--num-classes", str(settings["num_classes"]),
                *device],
        }
        result: dict = {"settings": settings}
        for name, argv in commands.items():
            if check.time_left() < 5:
                result[name] = "skipped: budget"
                continue
            start = time.perf_counter()
            proc = subprocess.run(["bash", str(scripts[name]), *argv], cwd=tmp, capture_output=True, text=True,
                                  env={**env, "PORT": str(_free_port())}, timeout=max(check.time_left(), 30))
            entry = {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - start, 1)}
            if proc.returncode != 0:
                entry["stderr_tail"] = proc.stderr[-1500:]
            result[name] = entry
        recon = result.get("reconstruction")
        if isinstance(recon, dict) and recon["exit_code"] == 0:
            recon["files"] = sorted(p.name for p in recon_dir.rglob("*") if p.name in ("grid.png", "lpips_val.txt"))
            recon["ok"] = recon["files"] == ["grid.png", "lpips_val.txt"]
        sample = result.get("sample_c2i_visualization")
        if isinstance(sample, dict) and sample["exit_code"] == 0:
            with np.load(sample_dir / "samples.npz") as npz:
                images = npz[npz.files[0]]
            sample["images"] = list(images.shape)
            sample["ok"] = (sample_dir / "multi_class_grid.png").is_file() and images.shape[0] == (3 if check.tiny
                                                                                                   else 40)
        result["passed_checks"] = all(isinstance(result.get(n), dict) and result[n].get("ok") for n in commands)
        if not result["passed_checks"]:
            result["error"] = "a seed command failed or left the wrong files"
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
