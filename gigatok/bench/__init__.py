"""Speed and memory benchmarks. Each run ends by printing one JSON line with the figures.

    python -m gigatok.bench tokenizer --model-config configs/vq/VQ_SS256.yaml --batch-size 2 \
        --mode encode_decode|train [--precision fp32|bf16] [--threads N] [--repeat N] [--device cpu|cuda]
        [--official-root PATH]

    python -m gigatok.bench gpt --gpt-model GPT-B --mode generate|train --batch-size 8 [--cfg-scale 4.0]
        [--compile] [--optimizer-step] [--precision fp32|bf16] [--threads N] [--repeat N] [--device cpu|cuda]
        [--sampler plain|sjd] [--sjd-window 16] [--cuda-graphs] [--temperature T] [--top-k K] [--gpt-ckpt PATH]

    python -m gigatok.bench gpu-check [--device cuda|cpu] [--tiny] [--budget-s 480] [--out PATH]
        [--official-root PATH] [--inception-weights PATH|random] [--parts a,b,...]   (see gigatok.bench.gpu_check)

    python -m gigatok.bench sjd [--demo-dir results/demo] [--images 50] [--rounds 3] [--seeds 0,1,2]
        [--window 16] [--threads N] [--skip-quality]  (see gigatok.bench.sjd_demo)

    python -m gigatok.bench eval [--num-images 128] [--image-size 256] [--batch-size 64] [--threads N]
        [--weights PATH] [--rounds 2]

Tokenizer: `encode_decode` times `decode(encode(x))` under inference mode; `train` times one forward + backward
of the training forward (shortcut outputs and distill features on, as in the official trainer's first steps),
in the CNN layout our trainer picks for the device (`cnn_layout`: NCHW on x86 CPUs without AVX-512, see
gigatok.infra.parallel.cnn_channels_last_for_training).
With `--official-root` (a checkout of SilentView/GigaTok), the official model is timed too, with the same
weights and input, each implementation in its own subprocess so that `peak_rss_mb` is its own; the JSON line
then holds both results and the speedup. On the CPU our side runs with the host-allocator tuning our entry points
apply (`gigatok.infra.host_memory`); the official side runs with the default allocator, as it does on its own,
unless `--official-cpu-malloc tuned` gives it the same tuning. `cpu_malloc` / `official_cpu_malloc` record which.

GPT (random weights; timing does not depend on them): `generate` times sampling `--num-tokens` codes per image
with the KV cache (the batch is doubled when `--cfg-scale` > 1, and the model is cast to `--precision` as the
sampler does); `train` times one teacher-forced forward + backward (autocast under bf16, as in training),
plus the AdamW step with `--optimizer-step` (each side's trainer's optimizer: fused, >= 2-D parameters decay);
`split_s` holds the median forward / backward / optimizer seconds (`official_split_s` side by side).
`generate` also reports the model calls per batch (`forwards`: forward passes per image at batch 1), codes per
call and, for `--sampler sjd`, the draft acceptance rate; `--gpt-ckpt` times trained weights (SJD's acceptance
depends on them: random weights have a zero output head, so every SJD draft is accepted).

Eval: Inception feature extraction (the ADM evaluator's network, gigatok.eval.inception) against
torch-fidelity's FeatureExtractorInceptionV3 with the same weights, on the same random uint8 images,
alternating in one process; images/s of both, their ratio and the largest pool-feature difference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from gigatok.gpt.model import GPT_MODELS
from gigatok.infra.host_memory import cpu_allocator_state, tune_cpu_allocator
from gigatok.infra.optim import build_adamw
from gigatok.infra.parallel import (
    cnn_channels_last,
    cnn_channels_last_for_training,
    set_cnn_memory_format,
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], None], repeat: int, device: torch.device) -> list[float]:
    """Run `fn` once untimed (warm-up), then `repeat` timed runs; seconds per run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _official_model(root: str, config) -> torch.nn.Module:
    """Build the official tokenizer class from our parsed config (import from a checkout of the official repo)."""
    import dataclasses

    sys.path.insert(0, root)
    from tokenizer.tokenizer_image.vq import vq_vit_model as official  # type: ignore[import-not-found]

    init_args = dataclasses.asdict(config.model.init_args)
    for ours_only in ("image_size", "cnn_ch", "entropy_temperature"):
        init_args.pop(ours_only)
    init_args["out_inner_dim"] = init_args["out_inner_dim"] or 768
    name = config.model.model_cls
    args_cls = getattr(official, f"{name}Args")
    known = {f.name for f in dataclasses.fields(args_cls)}
    model = getattr(official, name)(args_cls(**{k: v for k, v in init_args.items() if k in known}))
    used = getattr(model.quantize, "codebook_used", None)
    if isinstance(used, torch.nn.Parameter):  # official quirk: breaks in-place updates on CPU in train mode
        model.quantize.codebook_used = torch.zeros_like(used.data)
    return model


def bench_tokenizer(args: argparse.Namespace) -> dict:
    from gigatok.builders import build_tokenizer
    from gigatok.config import load_config

    config = load_config(args.model_config)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = build_tokenizer(config)
    if args.impl == "official":
        model = _official_model(args.official_root, config)
        model.load_state_dict(ours.state_dict(), strict=True)  # same weights as ours
    else:
        model = ours
        if args.mode == "train":  # the layout our trainer picks for this device (auto unless the config sets it)
            set_cnn_memory_format(model, cnn_channels_last_for_training(config.model.init_args.cnn_channels_last,
                                                                        device))
    del ours
    model = model.to(device)
    size = config.model.init_args.image_size
    x = torch.rand(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    use_bf16 = args.precision == "bf16"
    is_official = args.impl == "official"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def encode_decode() -> None:
        with torch.inference_mode(), autocast():
            quant = model.encode(x)[0]
            model.decode(quant)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast():
            if is_official:
                (recon, _), ([vq, commit, entropy, _], fea_rec), inner = model(x, rec_loss=True, ret_inner_feat=True)
            else:
                out = model(x, rec_loss=True, ret_inner_feat=True)
                recon, fea_rec, inner = out.recon, out.fea_rec_loss, out.inner_feat
                vq, commit, entropy = out.quant_losses.vq, out.quant_losses.commit, out.quant_losses.entropy
            loss = recon.float().pow(2).mean() + vq + commit + entropy + fea_rec + inner.float().mean()
        loss.backward()

    if args.mode == "encode_decode":
        model.eval()
        times = time_fn(encode_decode, args.repeat, device)
    else:
        model.train()
        times = time_fn(train_step, args.repeat, device)
    result = {"bench": "tokenizer", "impl": args.impl, "model_config": args.model_config,
              "images_per_s": args.batch_size / statistics.median(times),
              "cnn_layout": "NCHW" if is_official or not cnn_channels_last(model) else "channels_last"}
    return _summary(result, args, times, device)


def _summary(result: dict, args: argparse.Namespace, times: list[float], device: torch.device) -> dict:
    """Add the fields every benchmark reports: settings, times, and peak host (and CUDA) memory."""
    result = {**result, "mode": args.mode, "batch_size": args.batch_size, "precision": args.precision,
              "threads": torch.get_num_threads(), "device": str(device), "median_s": statistics.median(times),
              "times_s": [round(t, 4) for t in times], "peak_rss_mb": round(_peak_rss_mb(), 1)}
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _official_gpt(root: str, gpt_model: str, args: argparse.Namespace) -> tuple[torch.nn.Module, Callable]:
    """GigaTok's official gpt_1d model and generate() from a checkout of the official repo (learned positions)."""
    import tempfile

    import torch.distributed as dist

    sys.path.insert(0, root)
    from autoregressive.models.generate import generate as official_generate  # type: ignore[import-not-found]
    from autoregressive.models.gpt_1d import GPT_models  # type: ignore[import-not-found]

    if not dist.is_initialized():  # the official generate() calls dist.get_rank()
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/pg", rank=0, world_size=1)
    model = GPT_models[gpt_model](vocab_size=args.vocab_size, block_size=args.num_tokens,
                                  num_classes=args.num_classes, cls_token_num=1, model_type="c2i", rope=False,
                                  use_adaLN=False, use_simple_adaLN=False, use_qk_norm=False, use_flash_attn=False)
    return model, official_generate


# AdamW settings of both GPT trainers' defaults (ours: gigatok.config.gpt; official: train_c2i.py's flags).
TRAIN_LR, TRAIN_BETAS, TRAIN_WEIGHT_DECAY = 1e-4, (0.9, 0.95), 0.05


def _official_gpt_adamw(model: torch.nn.Module, lr: float, betas: tuple[float, float],
                        weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer the official train_c2i.py builds (`creat_optimizer`): [>= 2-D params with weight decay,
    the rest without], fused AdamW whenever torch's AdamW takes `fused` (it always does in torch >= 2.0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def _matmul_shapes(gpt: torch.nn.Module) -> list[tuple[int, int]]:
    """(out, in) of every weight matrix a decode step multiplies with: per layer wqkv, wo, w1, w3, w2; the head."""
    shapes = []
    for layer in gpt.layers:
        for lin in (layer.attention.wqkv, layer.attention.wo, layer.feed_forward.w1, layer.feed_forward.w3,
                    layer.feed_forward.w2):
            shapes.append(tuple(lin.weight.shape))
    shapes.append(tuple(gpt.output.weight.shape))
    return shapes


def decode_matmul_floor(shapes: list[tuple[int, int]], rows: int, dtype: torch.dtype, device: torch.device,
                        repeat: int = 10) -> float:
    """Seconds for the decode step's matrix products alone ((rows, in) @ (in, out) for each weight): the time a
    decode step cannot beat on this machine, measured in the same process as the benchmark."""
    weights = [torch.randn(o, i, dtype=dtype, device=device) for o, i in shapes]
    inputs = {i: torch.randn(rows, i, dtype=dtype, device=device) for _, i in shapes}

    def products() -> None:
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    with torch.inference_mode():
        return statistics.median(time_fn(products, repeat, device))


def matmul_throughput(dtype: torch.dtype, device: torch.device, n: int = 2048, repeat: int = 3) -> float:
    """FLOP/s of a plain (n x n) @ (n x n) product in `dtype`: the ceiling a compute-bound step is compared to."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    with torch.inference_mode():
        return 2 * n**3 / statistics.median(time_fn(lambda: a @ b, repeat, device))


def train_flops(gpt: torch.nn.Module, batch: int, tokens: int) -> float:
    """FLOPs of one teacher-forced forward + backward: 3x the forward's matmuls (weights and causal attention)."""
    c = gpt.config
    matmul_params = sum(o * i for o, i in _matmul_shapes(gpt))
    forward = 2 * batch * tokens * matmul_params + 2 * 2 * batch * c.n_layer * tokens * tokens * c.dim / 2
    return 3 * forward


def bench_gpt(args: argparse.Namespace) -> dict:
    """Time GPT sampling or one training step on random weights and random codes (ours or the official gpt_1d)."""
    from gigatok.builders import build_gpt
    from gigatok.gpt.generate import generate

    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.gpt_ckpt:  # trained weights (SJD's acceptance depends on them; plain timing does not)
        gpt = _load_trained_gpt(args, device)
    else:
        gpt = build_gpt(args.gpt_model, vocab_size=args.vocab_size, block_size=args.num_tokens,
                        num_classes=args.num_classes).to(device)
    is_official = args.impl == "official"
    model = gpt
    if is_official:
        model, official_generate = _official_gpt(args.official_root, args.gpt_model, args)
        model.load_state_dict(gpt.state_dict(), strict=True)  # same weights (same keys for learned positions)
        model = model.to(device)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device)  # (B,)
    codes = torch.randint(0, args.vocab_size, (args.batch_size, args.num_tokens), generator=gen).to(device)  # (B, N)
    use_bf16 = args.precision == "bf16"
    dtype = torch.bfloat16 if use_bf16 else torch.float32

    if args.mode == "generate":
        # The samplers cast the whole GPT (no autocast), so the KV cache is in that dtype too.
        model = model.to(dtype).eval()
        generator = torch.Generator(device).manual_seed(0)
        gen_stats: dict = {}

        def step() -> None:
            if is_official:
                with torch.inference_mode():
                    official_generate(model, labels, args.num_tokens, cfg_scale=args.cfg_scale, cfg_interval=-1,
                                      cfg_schedule="constant", cfg_schedule_kwargs={}, temperature=1.0, top_k=0,
                                      top_p=1.0, sample_logits=True)
            else:
                generate(model, labels, args.num_tokens, cfg_scale=args.cfg_scale, generator=generator,
                         compile=args.compile, sampler=args.sampler, sjd_window=args.sjd_window,
                         cuda_graphs=args.cuda_graphs, temperature=args.temperature, top_k=args.top_k,
                         stats=gen_stats)
    else:
        model.train()
        compiled = torch.compile(model) if args.compile else model
        optimizer = None
        if args.optimizer_step:  # AdamW as each side's trainer builds it, at the trainers' default settings
            optimizer = (_official_gpt_adamw(model, TRAIN_LR, TRAIN_BETAS, TRAIN_WEIGHT_DECAY) if is_official else
                         build_adamw(model, TRAIN_LR, betas=TRAIN_BETAS, weight_decay=TRAIN_WEIGHT_DECAY,
                                     decay_policy="matrices_only"))
        split: list[tuple[float, float, float]] = []  # (forward, backward, optimizer) seconds of each call

        def step() -> None:
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if is_official:
                    _, loss = compiled(idx=codes[:, :-1], cond_idx=labels, targets=codes)
                else:
                    _, loss = compiled(codes[:, :-1], labels, targets=codes)  # logits (B, N, K) vs codes (B, N)
            _sync(device)
            forward_end = time.perf_counter()
            loss.backward()
            _sync(device)
            backward_end = time.perf_counter()
            if optimizer is not None:
                optimizer.step()
                _sync(device)
            split.append((forward_end - start, backward_end - forward_end, time.perf_counter() - backward_end))

    times = time_fn(step, args.repeat, device)
    median = statistics.median(times)
    result = {"bench": "gpt", "impl": args.impl, "gpt_model": args.gpt_model, "num_tokens": args.num_tokens,
              "vocab_size": args.vocab_size, "compile": args.compile}
    if args.mode == "generate":
        rows = args.batch_size * (2 if args.cfg_scale > 1 else 1)
        floor = decode_matmul_floor(_matmul_shapes(gpt), rows, dtype, device)
        step_s = median / args.num_tokens
        if not is_official:  # forward passes per batch = per image at batch 1 (plain: one per code)
            result.update(sampler=args.sampler, cuda_graphs=args.cuda_graphs, forwards=gen_stats.get("forwards"),
                          codes_per_forward=gen_stats.get("codes_per_forward"),
                          acceptance_rate=gen_stats.get("acceptance_rate"),
                          sjd_window=args.sjd_window if args.sampler == "sjd" else None,
                          gpt_ckpt=args.gpt_ckpt, temperature=args.temperature, top_k=args.top_k)
        result.update(cfg_scale=args.cfg_scale, images_per_s=args.batch_size / median,
                      tokens_per_s=args.batch_size * args.num_tokens / median, step_ms=round(1e3 * step_s, 2),
                      matmul_floor_ms=round(1e3 * floor, 2), step_over_floor=round(step_s / floor, 3))
    else:
        flops = train_flops(gpt, args.batch_size, args.num_tokens)
        peak = matmul_throughput(dtype, device)
        timed = split[1:]  # the first call is the warm-up
        result["optimizer_step"] = args.optimizer_step
        result["split_s"] = {part: round(statistics.median(s[i] for s in timed), 4)
                             for i, part in enumerate(("forward", "backward", "optimizer"))}
        result.update(tokens_per_s=args.batch_size * args.num_tokens / median, train_tflops=round(flops / 1e12, 3),
                      achieved_gflop_s=round(flops / median / 1e9, 1), matmul_gflop_s=round(peak / 1e9, 1),
                      share_of_matmul=round(flops / median / peak, 3))
    return _summary(result, args, times, device)


def _load_trained_gpt(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The GPT of a training checkpoint (ours or official format), sized from the checkpoint; the bench's
    --num-tokens / --vocab-size / --num-classes follow it."""
    from gigatok.api import load_gpt

    gpt = load_gpt(args.gpt_ckpt, device=device)
    args.num_tokens, args.vocab_size = gpt.config.block_size, gpt.config.vocab_size
    args.num_classes, args.gpt_model = gpt.config.num_classes, f"{args.gpt_model} ({args.gpt_ckpt})"
    return gpt


def bench_eval(args: argparse.Namespace) -> dict:
    """Time our Inception feature extraction and torch-fidelity's on the same images and weights, alternating
    `--rounds` times in this process (so a change in machine load hits both); medians over the rounds."""
    import tempfile

    import numpy as np
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from gigatok.eval.inception import (
        extract_features,
        load_inception,
        load_inception_state_dict,
    )

    ours = load_inception(args.weights)
    state, _, _ = load_inception_state_dict(args.weights)
    if "fc.weight" not in state:  # fid-helper's trunk has no head; torch-fidelity's class needs one (unused here)
        state.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, f"{tmp}/weights.pth")  # torch-fidelity's format: the same names, unfolded BatchNorm
        theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                             feature_extractor_weights_path=f"{tmp}/weights.pth")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.num_images, args.image_size, args.image_size, 3), dtype=np.uint8)
    batches = [images[i:i + args.batch_size] for i in range(0, args.num_images, args.batch_size)]  # NHWC uint8

    def run_ours(batches: list[np.ndarray]) -> np.ndarray:
        return extract_features(ours, batches, args.batch_size, progress=False)["pool"]

    def run_theirs(batches: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():  # torch-fidelity takes NCHW uint8 tensors
            return torch.cat([theirs(torch.from_numpy(b).permute(0, 3, 1, 2).contiguous())[0] for b in batches]).numpy()

    runs = {"ours": run_ours, "torch_fidelity": run_theirs}
    for run in runs.values():
        run(batches[:1])  # warm-up: allocator and oneDNN kernel choice for this batch shape
    times: dict[str, list[float]] = {name: [] for name in runs}
    pools = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            pools[name] = run(batches)
            times[name].append(time.perf_counter() - start)
    rate = {name: args.num_images / statistics.median(ts) for name, ts in times.items()}
    return {"bench": "eval", "num_images": args.num_images, "image_size": args.image_size,
            "batch_size": args.batch_size, "threads": torch.get_num_threads(), "weights_kind": ours.weights_kind,
            "images_per_s": rate["ours"], "torch_fidelity_images_per_s": rate["torch_fidelity"],
            "speedup": round(rate["ours"] / rate["torch_fidelity"], 3),
            "max_abs_diff_pool": float(np.abs(pools["ours"] - pools["torch_fidelity"]).max()),
            "times_s": [round(t, 3) for t in times["ours"]],
            "torch_fidelity_times_s": [round(t, 3) for t in times["torch_fidelity"]],
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _run_side_by_side(argv: list[str], rounds: int) -> dict:
    """Run the official model and ours alternately, each in its own subprocess, `rounds` times each, so that a
    change in machine load hits both; report the median over all timed runs of each."""
    runs: dict[str, list[dict]] = {"official": [], "ours": []}
    for _ in range(rounds):
        for impl in ("official", "ours"):
            cmd = [sys.executable, "-m", "gigatok.bench", *argv, "--impl", impl]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                raise SystemExit(f"{impl} benchmark failed:\n{proc.stderr[-3000:]}")
            runs[impl].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    times = {impl: [t for r in rs for t in r["times_s"]] for impl, rs in runs.items()}
    medians = {impl: statistics.median(ts) for impl, ts in times.items()}
    ours = runs["ours"][-1]
    return {**ours, "impl": "ours_vs_official", "median_s": medians["ours"], "times_s": times["ours"],
            "images_per_s": ours["batch_size"] / medians["ours"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["ours"]),
            "official_median_s": medians["official"], "official_times_s": times["official"],
            "official_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["official"]),
            "official_cpu_malloc": runs["official"][-1]["cpu_malloc"],
            **({f"{prefix}split_s": {part: round(statistics.median(r["split_s"][part] for r in runs[impl]), 4)
                                     for part in runs[impl][-1]["split_s"]}
                for impl, prefix in (("ours", ""), ("official", "official_")) if "split_s" in runs[impl][-1]}),
            "speedup": round(medians["official"] / medians["ours"], 3)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    tok = sub.add_parser("tokenizer", help="tokenizer encode+decode or train step")
    tok.add_argument("--model-config", default="configs/vq/VQ_SS256.yaml", help="tokenizer YAML (default: %(default)s)")
    tok.add_argument("--batch-size", type=int, default=2, help="images per forward")
    tok.add_argument("--mode", choices=["encode_decode", "train"], default="encode_decode",
                     help="time encode+decode, or one training step (forward + backward)")
    tok.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="compute dtype (bf16: autocast)")
    tok.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    tok.add_argument("--repeat", type=int, default=3, help="timed repetitions (the median is reported)")
    tok.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="device (default: cuda when available, else cpu)")
    tok.add_argument("--official-root", default=None, help="checkout of SilentView/GigaTok to time side by side")
    tok.add_argument("--rounds", type=int, default=2, help="side by side: alternating subprocess runs per impl")
    tok.add_argument("--impl", choices=["ours", "official"], default=None, help=argparse.SUPPRESS)
    tok.add_argument("--official-cpu-malloc", choices=["default", "tuned"], default="default",
                     help="side by side on CPU: the official side's host allocator (default: as it runs alone)")
    gpt = sub.add_parser("gpt", help="GPT sampling (KV cache) or teacher-forced train step")
    gpt.add_argument("--gpt-model", choices=list(GPT_MODELS), default="GPT-B", help="GPT size (default: %(default)s)")
    gpt.add_argument("--mode", choices=["generate", "train"], default="generate",
                     help="time KV-cache sampling, or one teacher-forced training step")
    gpt.add_argument("--batch-size", type=int, default=8, help="images (before the CFG doubling)")
    gpt.add_argument("--cfg-scale", type=float, default=4.0, help="generate: > 1 doubles the decoded rows")
    gpt.add_argument("--num-tokens", type=int, default=256, help="codes per image (GigaTok: 256)")
    gpt.add_argument("--vocab-size", type=int, default=16384, help="codebook size K")
    gpt.add_argument("--num-classes", type=int, default=1000, help="number of classes")
    gpt.add_argument("--compile", action="store_true", help="torch.compile the decode step / the model")
    gpt.add_argument("--optimizer-step", action="store_true",
                     help="train: time the AdamW step too (each side's trainer's AdamW: fused, matrices decay)")
    gpt.add_argument("--sampler", choices=["plain", "sjd"], default="plain",
                     help="generate: plain decoding or speculative Jacobi decoding")
    gpt.add_argument("--sjd-window", type=int, default=16, help="generate, sjd: drafts verified per forward pass")
    gpt.add_argument("--cuda-graphs", action="store_true", help="generate: capture the decode step in a CUDA graph")
    gpt.add_argument("--temperature", type=float, default=1.0, help="generate: softmax temperature")
    gpt.add_argument("--top-k", type=int, default=0, help="generate: top-k filtering (1: greedy; 0: off)")
    gpt.add_argument("--gpt-ckpt", default=None,
                     help="generate: trained weights (a train_c2i checkpoint); sizes come from it (default: random)")
    gpt.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                     help="compute dtype (generate: the GPT is cast to it, as the samplers do)")
    gpt.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    gpt.add_argument("--repeat", type=int, default=3, help="timed repetitions (the median is reported)")
    gpt.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="device (default: cuda when available, else cpu)")
    gpt.add_argument("--official-root", default=None,
                     help="checkout of SilentView/GigaTok: time its gpt_1d model side by side (learned positions)")
    gpt.add_argument("--rounds", type=int, default=2, help="side by side: alternating subprocess runs per impl")
    gpt.add_argument("--impl", choices=["ours", "official"], default=None, help=argparse.SUPPRESS)
    gpt.add_argument("--official-cpu-malloc", choices=["default", "tuned"], default="default",
                     help="side by side on CPU: the official side's host allocator (default: as it runs alone)")
    ev = sub.add_parser("eval", help="Inception feature extraction (ADM evaluator) vs torch-fidelity's")
    ev.add_argument("--num-images", type=int, default=128, help="random images to extract features of")
    ev.add_argument("--image-size", type=int, default=256, help="random square uint8 images of this size")
    ev.add_argument("--batch-size", type=int, default=64, help="images per forward pass (ADM: 64)")
    ev.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ev.add_argument("--weights", default=None, help="Inception weights file (default: the usual lookup)")
    ev.add_argument("--rounds", type=int, default=2, help="alternating timed passes over the images per impl")
    ev.set_defaults(official_root=None, impl="ours")
    from gigatok.bench.gpu_check import add_arguments as add_gpu_check_arguments

    add_gpu_check_arguments(sub.add_parser("gpu-check", help="the prepared one-command GPU check (docs/benchmarks.md)",
                                           description="Run every GPU path once; one JSON report on stdout."))
    from gigatok.bench import sjd_demo

    sjd_demo.add_arguments(sub.add_parser("sjd", help="speculative Jacobi vs plain decoding on the CPU demo's GPT",
                                          description=sjd_demo.__doc__.split("\n\n")[0]))
    from gigatok.bench import zoo

    zoo.add_arguments(sub.add_parser("zoo", help="the quantizer zoo: one tokenizer + GPT probe per quantizer",
                                     description=zoo.__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    if args.bench == "zoo":
        from gigatok.infra.cli import run_stage

        return run_stage(lambda: zoo.main(args, list(argv)))  # a user error (bad --quantizers): exit 2
    if args.bench == "sjd":
        from gigatok.infra.cli import run_stage

        return run_stage(lambda: sjd_demo.main(args))  # no demo run: exit 2 with the command to run
    if args.bench == "gpu-check":
        from gigatok.bench.gpu_check import run_from_args
        from gigatok.infra.cli import run_stage

        return run_stage(lambda: run_from_args(args))  # a user error (bad --parts): exit 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official_root and args.impl is None:
        result = _run_side_by_side(list(argv), args.rounds)
    elif args.bench == "eval":
        from gigatok.infra.cli import run_stage

        result = run_stage(lambda: bench_eval(args))  # missing weights: exit 2
    else:
        args.impl = args.impl or "ours"
        malloc = "tuned" if args.impl == "ours" else args.official_cpu_malloc
        if str(args.device).startswith("cpu") and malloc == "tuned":
            tune_cpu_allocator()  # before the model is built: it applies to later allocations
        result = bench_gpt(args) if args.bench == "gpt" else bench_tokenizer(args)
        result["cpu_malloc"] = cpu_allocator_state()
    print(json.dumps(result))
    return 0

