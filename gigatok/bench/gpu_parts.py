"""The parts of `python -m gigatok.bench gpu-check` (see gigatok.bench.gpu_check for the command and its report):
their tolerances and time shares, the `Check` each part receives, shared helpers, and one function per part that
returns the part's figures (raising = the part failed).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import inspect
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gigatok.bench import (
    _official_gpt,
    _peak_rss_mb,
    _sync,
    matmul_throughput,
    time_fn,
    train_flops,
)

ROOT = Path(__file__).resolve().parents[2]  # the checkout (configs/, scripts/, tests/assets/), when there is one

# Relative L2 error allowed against the CPU fp32 step (codes pinned to the reference's, see `pinned_codes`). fp32
# with TF32 off differs from the CPU only in summation order. fp16 keeps 11 mantissa bits: measured on the debug
# tokenizers (CPU autocast, 16 px) 0.003-0.007, within 1e-2. bf16 keeps 8, a rounding unit 8x fp16's: measured
# 0.014-0.036 on the reconstruction and up to 0.072 on the gradients (quant_conv, the first encoder conv: the end
# of the longest backward paths), hence 1e-1, not the 3e-2 first proposed in issue #16.
TOLERANCES = {"fp32": 1e-4, "bf16": 1e-1, "fp16": 1e-2}
# FSDP2 at world size 1 against the plain model, same optimizer kernel: losses (relative) and all parameters (one
# relative L2) after 3 AdamW steps; the arithmetic is the same up to rounding.
FSDP_TOLERANCE = 1e-5
# Dense bf16 tensor-core peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name(); first match wins.
BF16_PEAK_FLOPS = [
    ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("A6000", 155e12), ("L4", 121e12),
]
MFU_GOAL = 0.45  # issue #16: GPT-XL training on one H100
OFFICIAL_SPEEDUP_GOAL = 4.0  # issue #16: GPT-B generation at batch 8 and 64 against the official sampler

PARTS = ("tokenizer_precision", "tokenizer_xl_xxl_train", "fsdp_world1", "gpt_train", "generation",
         "adm_inception", "seed_commands")
# Share of the total budget per part (seconds out of the default 480; scaled to --budget-s).
PART_BUDGET_S = {"tokenizer_precision": 60, "tokenizer_xl_xxl_train": 70, "fsdp_world1": 25, "gpt_train": 90,
                 "generation": 170, "adm_inception": 15, "seed_commands": 50}


@dataclass
class Check:
    """What every part gets: the device, the size switch, and the time its share of the budget ends."""

    device: torch.device
    tiny: bool
    deadline: float  # time.perf_counter() by which the part should end
    official_root: str | None = None
    inception_weights: str | None = None  # a file, "random", or None for the usual lookup

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full fp32 (TF32 off) for parity; the previous settings restored after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def rel_l2(value: torch.Tensor, ref: torch.Tensor) -> float:
    """||value - ref|| / ||ref|| in float64 on the CPU (inf when `value` is not finite)."""
    value, ref = value.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(value).all():
        return math.inf
    return float((value - ref).norm() / ref.norm().clamp_min(1e-30))


def _procedural_loader() -> Callable[[dict], dict] | None:
    """tests/assets/procedural.py (the parity tests' weight recipe) when the checkout is here, else None."""
    path = ROOT / "tests" / "assets" / "procedural.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("gigatok_test_procedural", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.procedural_state_dict


def init_weights(model: torch.nn.Module) -> str:
    """Give `model` the parity tests' procedural weights (or, without tests/, keep its torch.manual_seed(0) init);
    returns which."""
    procedural = _procedural_loader()
    if procedural is None:
        return "seeded init (tests/assets/procedural.py not found)"
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(procedural(shapes), strict=True)
    return "procedural (tests/assets/procedural.py)"


def parity_images(size: int) -> tuple[torch.Tensor, str]:
    """(2, 3, size, size) float32 in [-1, 1]: the tok_VQ_SS256 parity vectors' input images (resized), or seeded
    random images without tests/assets."""
    path = ROOT / "tests" / "assets" / "tok_VQ_SS256.npz"
    if path.is_file():
        with np.load(path) as data:
            images = torch.from_numpy(data["image"])  # (2, 3, 256, 256)
        if size != images.shape[-1]:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
        return images.clamp(-1, 1), "tok_VQ_SS256 parity vectors' input"
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, size, size, generator=gen) * 2 - 1, "seeded random images"


def tokenizer_config(name: str):
    """The shipped config `name`; the debug ones at 16 px (4x4 grid, 16 latent tokens) to keep --tiny fast."""
    from gigatok.config import load_config
    from gigatok.zoo import config_path

    overrides = []
    if name.startswith("VQ_debug"):
        overrides.append("model.init_args.image_size=16")
        if name == "VQ_debug":  # 1D: at most one latent token per grid cell
            overrides.append("model.init_args.num_latent_tokens=16")
    return load_config(config_path(name), overrides)


def tokenizer_loss(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, recon) of the training forward as gigatok.bench times it: shortcut outputs and distill features on."""
    out = model(images, rec_loss=True, ret_inner_feat=True)
    return _loss_of(out), out.recon


def _loss_of(out) -> torch.Tensor:
    losses = out.quant_losses
    loss = out.recon.float().pow(2).mean() + losses.vq + losses.commit + losses.entropy + out.fea_rec_loss
    if out.inner_feat is not None:
        loss = loss + out.inner_feat.float().mean()
    return loss


def _peak_memory(check: Check) -> dict:
    if check.cuda:
        return {"peak_cuda_mb": round(torch.cuda.max_memory_allocated(check.device) / 2**20, 1)}
    return {"peak_rss_mb": round(_peak_rss_mb(), 1)}


def _free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bf16_peak(device: torch.device) -> tuple[float, str]:
    """(FLOP/s, source) of the dense peak MFU is measured against: the table for a known card, else a measured
    bf16 matmul (unknown card) or fp32 matmul (CPU)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in BF16_PEAK_FLOPS:
            if key in name:
                return flops, f"table: {key} bf16 dense"
        return matmul_throughput(torch.bfloat16, device, n=8192), f"measured bf16 matmul (unknown card {name})"
    return matmul_throughput(torch.float32, device, n=1024), "measured fp32 matmul (cpu)"


# ---------------------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------------------

GRAD_PARAMS = ("encoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_out.weight")


@contextlib.contextmanager
def pinned_codes(quantizer: torch.nn.Module, codes: torch.Tensor | None, extras: dict) -> Iterator[None]:
    """Make `quantizer` pick `codes` (B, L) (the fp32 reference's): VQ's argmin is discontinuous, so a rounding-level
    change of z flips near-tied codes, and one flipped code moves the reconstruction far beyond any precision
    tolerance. Rows whose argmin differs get their reference code's distance set just below the row minimum (a
    rounding-level nudge of one entry; the entropy loss sees the same). `extras["code_agreement"]` is the share of
    codes that agreed before the nudge."""
    if codes is None:
        yield
        return
    original = quantizer.distances
    ref = codes.reshape(-1)  # (N,) b-major, the quantizer's row order

    def distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        d = original(z, codebook)  # (N, K)
        target = ref.to(d.device)
        agree = d.argmin(dim=1) == target  # (N,)
        extras["code_agreement"] = round(float(agree.float().mean()), 4)
        rows = torch.arange(len(d), device=d.device)
        below_min = d.min(dim=1).values - 1e-6 * d.abs().amax(dim=1).clamp_min(1e-12)
        return d.index_put((rows, target), torch.where(agree, d[rows, target], below_min))

    quantizer.distances = distances  # the instance attribute shadows the staticmethod
    try:
        yield
    finally:
        del quantizer.distances


def _precision_step(model: torch.nn.Module, images: torch.Tensor, precision: str, device: torch.device,
                    ref_codes: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """One forward + backward of a copy of `model` on `device` in `precision`, with the quantizer's codes pinned to
    `ref_codes` when given; (recon, named grads, extras with "codes")."""
    model = copy.deepcopy(model).to(device)
    images = images.to(device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    extras: dict = {}
    with no_tf32(), pinned_codes(model.quantize, ref_codes, extras), torch.autocast(
            device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(images, rec_loss=True, ret_inner_feat=True)
        loss, recon = _loss_of(out), out.recon
    extras["codes"] = out.codes.cpu()
    if precision == "fp16":  # the fp16 recipe: scaled loss, unscaled grads, inf check, step, scale update
        scaler = torch.amp.GradScaler(device.type)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        extras["grad_scale"] = float(scaler.get_scale())
    else:
        with no_tf32():
            loss.backward()
    params = dict(model.named_parameters())
    grads = {n: params[n].grad.detach().float().cpu() for n in GRAD_PARAMS if n in params}
    extras["finite"] = bool(torch.isfinite(recon).all()) and all(
        bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    return recon.detach().float().cpu(), grads, extras


def part_tokenizer_precision(check: Check) -> dict:
    configs = {"S-S": "VQ_debug", "B-L": "VQ_debug_2d"} if check.tiny else {"S-S": "VQ_SS256", "B-L": "VQ_BL256"}
    result: dict = {"tolerances": TOLERANCES, "passed_checks": True}
    for label, name in configs.items():
        if label == "B-L" and check.time_left() < 20:
            result[label] = "skipped: budget"
            continue
        config = tokenizer_config(name)
        torch.manual_seed(0)
        from gigatok.builders import build_tokenizer
        from gigatok.infra.parallel import set_cnn_memory_format

        model = build_tokenizer(config).train()
        set_cnn_memory_format(model, False)  # one layout on both devices
        weights = init_weights(model)
        images, source = parity_images(config.model.init_args.image_size)
        images = images[:1]  # (1, 3, S, S): one image halves the CPU reference's time (B-L at 256 px)
        ref_recon, ref_grads, ref = _precision_step(model, images, "fp32", torch.device("cpu"))
        entry: dict = {"config": name, "weights": weights, "inputs": source, "batch": len(images)}
        for precision in ("fp32", "bf16", "fp16"):
            recon, grads, extras = _precision_step(model, images, precision, check.device, ref["codes"])
            extras.pop("codes")
            errors = {"recon": rel_l2(recon, ref_recon), **{f"grad:{n}": rel_l2(g, ref_grads[n])
                                                              for n, g in grads.items()}}
            ok = extras["finite"] and max(errors.values()) <= TOLERANCES[precision]
            entry[precision] = {"rel_l2": {k: float(f"{v:.3g}") for k, v in errors.items()},
                                "max_rel_l2": float(f"{max(errors.values()):.3g}"), "tolerance": TOLERANCES[precision],
                                "pass": ok, **extras}
            result["passed_checks"] &= ok
        result[label] = entry
        del model
        _free_cuda()
    return result


def part_tokenizer_xl_xxl_train(check: Check) -> dict:
    from gigatok.builders import build_tokenizer
    from gigatok.infra.optim import build_adamw
    from gigatok.infra.parallel import parallelize

    name = "VQ_debug" if check.tiny else "VQ_XLXXL256"
    config = tokenizer_config(name)
    torch.manual_seed(0)
    model = build_tokenizer(config, device=check.device).to(check.device).train()  # (buffers made from numpy)
    # The trainer's path (gigatok.engine.vq_train): trainer.activation_checkpointing -> parallelize(...).
    model = parallelize(model, "none", device=check.device, activation_checkpointing=True)
    optimizer = build_adamw(model, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4)
    use_bf16 = check.cuda  # the released configs train in bf16 (trainer.mixed_precision)
    size = config.model.init_args.image_size
    batches = [1, 2] if check.tiny else [2**i for i in range(7)]  # 1 .. 64
    runs: list[dict] = []
    stopped = "cap"
    for batch in batches:
        if runs and check.time_left() < 5 * runs[-1]["step_s"] + 5:  # twice the batch: ~2x the step, twice
            stopped = "budget"
            break
        images = torch.rand(batch, 3, size, size, device=check.device) * 2 - 1

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=check.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, _ = tokenizer_loss(model, images)
            loss.backward()
            optimizer.step()

        if check.cuda:
            torch.cuda.reset_peak_memory_stats(check.device)
        oom = False
        try:
            step_s = time_fn(step, 1, check.device)[0]
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:  # cuBLAS / cuDNN workspaces: RuntimeError
            if "out of memory" not in str(err):
                raise
            oom = True  # freed below, once the exception (and the frames it holds) is gone
        if oom:
            stopped = "oom"
            optimizer.zero_grad(set_to_none=True)
            images = None  # the step closure holds it otherwise
            _free_cuda()
            break
        runs.append({"batch": batch, "step_s": round(step_s, 4), "images_per_s": round(batch / step_s, 3),
                     **_peak_memory(check)})
    if not runs:
        raise RuntimeError(f"{name}: not even batch 1 fits ({stopped})")
    params = sum(p.numel() for p in model.parameters())
    _free_cuda()
    return {"config": name, "params": params, "activation_checkpointing": True, "bf16_autocast": use_bf16,
            "largest_batch": runs[-1]["batch"], "stopped_by": stopped, **{k: v for k, v in runs[-1].items()
                                                                          if k != "batch"}, "runs": runs}


def _fsdp_compare(build: Callable[[], torch.nn.Module], loss_fn: Callable, data: list, check: Check) -> dict:
    """3 AdamW steps of the plain model and of its FSDP2 copy (gigatok.infra.parallel.parallelize) on the same data."""
    from gigatok.infra.parallel import full_model_state, parallelize

    torch.manual_seed(0)
    plain = build().to(check.device).train()
    sharded = parallelize(copy.deepcopy(plain), "fsdp", device=check.device)
    losses: dict[str, list[float]] = {}
    with no_tf32(), warnings.catch_warnings():
        # FSDP2 warns once per forward that the tokenizer returns views (its dataclass outputs); none is written to.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
        for label, module in (("plain", plain), ("fsdp", sharded)):
            # The same (foreach) kernel for both: fused AdamW takes no DTensors.
            optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.05, foreach=True)
            losses[label] = []
            for inputs in data:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(module, *inputs)
                loss.backward()
                optimizer.step()
                losses[label].append(loss.item())
    full = full_model_state(sharded)
    ref = {k: v for k, v in plain.state_dict().items() if v.is_floating_point()}
    # One relative L2 over all floating tensors: the conv biases in front of a GroupNorm have a zero true gradient,
    # so their rounding-level gradients differ between the two runs and Adam turns that noise into lr-sized steps
    # of either sign (per tensor they differ by up to ~1e-4 absolute after 3 steps at lr 1e-3).
    param_err = math.sqrt(sum(float((full[k].double().cpu() - v.double().cpu()).pow(2).sum()) for k, v in ref.items())
                          / sum(float(v.double().pow(2).sum()) for v in ref.values()))
    max_abs = max(float((full[k].double().cpu() - v.double().cpu()).abs().max()) for k, v in ref.items())
    loss_err = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses["fsdp"], losses["plain"]))
    return {"losses_plain": [round(v, 6) for v in losses["plain"]], "losses_fsdp": [round(v, 6) for v in
                                                                                   losses["fsdp"]],
            "max_loss_rel_diff": float(f"{loss_err:.3g}"), "param_rel_l2": float(f"{param_err:.3g}"),
            "max_param_abs_diff": float(f"{max_abs:.3g}"),
            "identical": loss_err == 0 and param_err == 0,
            "pass": loss_err <= FSDP_TOLERANCE and param_err <= FSDP_TOLERANCE}


def part_fsdp_world1(check: Check) -> dict:
    import torch.distributed as dist

    from gigatok.builders import build_gpt, build_tokenizer
    from gigatok.infra.parallel import set_cnn_memory_format

    backend = "nccl" if check.cuda else "gloo"
    own_group = not dist.is_initialized()
    tmp = tempfile.mkdtemp(prefix="gigatok_fsdp_")
    if own_group:
        if check.cuda:
            torch.cuda.set_device(check.device)
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=0, world_size=1)
    try:
        tok_name = "VQ_debug" if check.tiny else "VQ_SS256"
        tok_config = tokenizer_config(tok_name)
        size = tok_config.model.init_args.image_size

        def build_tok() -> torch.nn.Module:
            model = build_tokenizer(tok_config)
            set_cnn_memory_format(model, False)  # FSDP2 shards NCHW weights only
            return model

        gen = torch.Generator().manual_seed(0)
        tok_data = [((torch.rand(2, 3, size, size, generator=gen) * 2 - 1).to(check.device),) for _ in range(3)]
        tokenizer = _fsdp_compare(build_tok, lambda m, x: tokenizer_loss(m, x)[0], tok_data, check)
        gpt_name, vocab, tokens, classes = ("debug", 1024, 16, 10) if check.tiny else ("GPT-B", 16384, 256, 1000)
        no_dropout = {"token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0, "class_dropout_prob": 0.0}

        def build() -> torch.nn.Module:
            return build_gpt(gpt_name, vocab_size=vocab, block_size=tokens, num_classes=classes, **no_dropout)

        def gpt_loss(model: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return model(codes[:, :-1], labels, targets=codes)[1]  # logits (B, T, K) vs codes (B, T)

        gpt_data = [(torch.randint(0, vocab, (4, tokens), generator=gen).to(check.device),
                     torch.randint(0, classes, (4,), generator=gen).to(check.device)) for _ in range(3)]
        gpt = _fsdp_compare(build, gpt_loss, gpt_data, check)
    finally:
        if own_group:
            dist.destroy_process_group()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"backend": backend, "world_size": 1, "tolerance": FSDP_TOLERANCE, "steps": 3,
            "tokenizer": {"config": tok_name, **tokenizer}, "gpt": {"gpt_model": gpt_name, **gpt},
            "passed_checks": tokenizer["pass"] and gpt["pass"]}


def part_gpt_train(check: Check) -> dict:
    from gigatok.builders import build_gpt
    from gigatok.infra.optim import build_adamw

    # GPT-XL first: the MFU goal is on it, and its compile is the longest.
    models = [("debug", 2, 16)] if check.tiny else [("GPT-XL", 16, 256), ("GPT-B", 32, 256)]
    vocab, classes = (1024, 10) if check.tiny else (16384, 1000)
    peak, peak_source = bf16_peak(check.device)
    result: dict = {"peak_flops": peak, "peak_source": peak_source, "bf16_autocast": check.cuda}
    # Inductor's C++ build takes ~30 s on 2 CPU cores: the tiny CPU run compiles through AOT autograd only.
    backend = "aot_eager" if check.tiny and not check.cuda else "inductor"
    result["compile_backend"] = backend
    for name, batch, tokens in models:
        with torch.device(check.device):
            torch.manual_seed(0)
            gpt = build_gpt(name, vocab_size=vocab, block_size=tokens, num_classes=classes).to(check.device).train()
        optimizer = build_adamw(gpt, lr=1e-4, weight_decay=0.05)
        codes = torch.randint(0, vocab, (batch, tokens), device=check.device)  # (B, T)
        labels = torch.randint(0, classes, (batch,), device=check.device)  # (B,)
        flops = train_flops(gpt, batch, tokens)
        entry: dict = {"batch": batch, "tokens": tokens, "train_flops": flops}
        for mode in ("eager", "compiled"):
            if check.time_left() < (10 if mode == "eager" or check.tiny else 60):  # a GPU compile takes ~30-60 s
                entry[mode] = "skipped: budget"
                continue
            module = torch.compile(gpt, backend=backend) if mode == "compiled" else gpt

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=check.device.type, dtype=torch.bfloat16, enabled=check.cuda):
                    _, loss = module(codes[:, :-1], labels, targets=codes)
                loss.backward()
                optimizer.step()

            start = time.perf_counter()
            step()  # warm-up (and the compile)
            _sync(check.device)
            first_s = time.perf_counter() - start
            median = statistics.median(time_fn(step, 1 if check.tiny else 5, check.device))
            entry[mode] = {"step_s": round(median, 5), "first_step_s": round(first_s, 2),
                           "tokens_per_s": round(batch * tokens / median, 1),
                           "achieved_tflop_s": round(flops / median / 1e12, 4), "mfu": round(flops / median / peak, 4)}
        mfus = [entry[m]["mfu"] for m in ("eager", "compiled") if isinstance(entry[m], dict)]
        entry["best_mfu"] = max(mfus) if mfus else None
        result[name] = entry
        gpt = optimizer = module = None  # freed before the next model is built
        _free_cuda()
    xl = result.get("GPT-XL", {}).get("best_mfu")
    result["mfu_goal"] = MFU_GOAL
    result["mfu_goal_met"] = (xl >= MFU_GOAL) if (check.cuda and xl is not None) else None
    return result


def _generate_kwargs() -> set[str]:
    from gigatok.gpt.generate import generate

    return set(inspect.signature(generate).parameters)


def _time_generation(fn: Callable[[], object], check: Check) -> float:
    """Seconds per call: one warm-up (compile / graph capture), then the median of 1 (tiny) or 2 timed calls."""
    return statistics.median(time_fn(fn, 1 if check.tiny else 2, check.device))


def _official_sampler(check: Check, gpt: torch.nn.Module, name: str, tokens: int, vocab: int, classes: int,
                      batches: list[int], dtype: torch.dtype) -> dict[int, float | None]:
    """images/s of the official generate() with the same weights, at `batches` (None: skipped for the budget)."""
    args = argparse.Namespace(vocab_size=vocab, num_tokens=tokens, num_classes=classes)
    model, official_generate = _official_gpt(check.official_root, name, args)
    model.load_state_dict(gpt.state_dict(), strict=True)
    model = model.to(device=check.device, dtype=dtype).eval()
    rates: dict[int, float | None] = {}
    for batch in batches:
        if check.time_left() < 10:
            rates[batch] = None  # skipped: budget
            continue
        labels = torch.randint(0, classes, (batch,), device=check.device)

        def run() -> None:
            with torch.inference_mode():
                official_generate(model, labels, tokens, cfg_scale=4.0, cfg_interval=-1, cfg_schedule="constant",
                                  cfg_schedule_kwargs={}, temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)

        rates[batch] = batch / _time_generation(run, check)
    return rates


def part_generation(check: Check) -> dict:
    from gigatok.builders import build_gpt
    from gigatok.gpt.generate import generate

    models = ["debug"] if check.tiny else ["GPT-B", "GPT-XL"]
    batches = [1, 2] if check.tiny else [8, 64, 1]  # the goals are at 8 and 64: measured first
    tokens, vocab, classes = (16, 1024, 10) if check.tiny else (256, 16384, 1000)
    # Seconds a mode needs at least: the compiled decode step compiles once per batch shape (~30-60 s on a GPU).
    min_left = {"eager": 5, "compiled": 5 if check.tiny else 45, "cuda_graphs": 5 if check.tiny else 10}
    dtype = torch.bfloat16 if check.cuda else torch.float32
    known = _generate_kwargs()
    missing = sorted({"sampler", "cuda_graphs", "stats"} - known)
    modes = {"eager": {}, "compiled": {"compile": True}, "cuda_graphs": {"cuda_graphs": True}}
    result: dict = {"tokens": tokens, "cfg_scale": 4.0, "dtype": str(dtype).removeprefix("torch."),
                    "missing_generate_kwargs": missing, "skipped_for_budget": []}
    failures: list[str] = []
    for name in models:
        torch.manual_seed(0)
        with torch.device(check.device):
            gpt = build_gpt(name, vocab_size=vocab, block_size=tokens, num_classes=classes).to(check.device)
        gpt.output.weight.data.normal_(0, 0.02)  # a fresh head is zero (uniform logits): greedy would be all ties
        gpt = gpt.to(dtype).eval()
        entry: dict = {}
        for batch in batches:
            labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(batch))
            labels = labels.to(check.device)
            row: dict = {}
            greedy: dict[str, torch.Tensor] = {}
            for mode, kwargs in modes.items():
                if mode == "cuda_graphs" and not check.cuda:
                    row[mode] = "n/a on cpu"
                    continue
                if check.time_left() < min_left[mode]:
                    result["skipped_for_budget"].append(f"{name} b{batch} {mode}")
                    continue
                try:
                    # --tiny times the greedy runs themselves (one compile per shape instead of two on the CPU);
                    # else the exact sampling (top_k 0) is timed and one greedy run follows.
                    timed, sink = ({"top_k": 1}, greedy) if check.tiny else ({}, {})
                    seconds = _time_generation(
                        lambda: sink.__setitem__(mode, generate(gpt, labels, tokens, cfg_scale=4.0, **timed,
                                                                **kwargs)), check)
                    if not check.tiny and batch == batches[0]:  # one greedy run per model (and compile)
                        greedy[mode] = generate(gpt, labels, tokens, cfg_scale=4.0, top_k=1, **kwargs)
                    row[mode] = {"images_per_s": round(batch / seconds, 3), "seconds": round(seconds, 4)}
                except Exception as err:  # one mode failing (e.g. a missing keyword) leaves the others measured
                    row[mode] = f"fail: {type(err).__name__}: {err}"[:300]
                    failures.append(f"{name} b{batch} {mode}")
            codes = list(greedy.values())
            row["greedy_identical"] = all(torch.equal(c, codes[0]) for c in codes[1:]) if len(codes) > 1 else None
            row["greedy_modes"] = sorted(greedy)
            if row["greedy_identical"] is False:
                failures.append(f"{name} b{batch} greedy codes differ")
            if batch in (1, 2, 8):  # speculative Jacobi decoding at the small batches, where it pays
                row["sjd"] = _sjd_figures(gpt, labels, tokens, check, failures, f"{name} b{batch}")
            entry[f"batch_{batch}"] = row
        if check.official_root and check.tiny:
            entry["official"] = "n/a with --tiny (the official registry has no debug GPT)"
        elif check.official_root and name == "GPT-B":
            official_batches = [8, 64]
            try:
                rates = _official_sampler(check, gpt, name, tokens, vocab, classes, official_batches, dtype)
                entry["official"] = {}
                for batch, rate in rates.items():  # exact (plain) decoding only: SJD is reported beside it
                    row = entry[f"batch_{batch}"]
                    ours = [row[m]["images_per_s"] for m in modes if isinstance(row.get(m), dict)]
                    best = max(ours) if ours else None
                    entry["official"][f"batch_{batch}"] = "skipped: budget" if rate is None else {
                        "images_per_s": round(rate, 3), "ours_best_images_per_s": best,
                        "ratio": round(best / rate, 3) if best else None,
                        "goal_met": bool(best and best / rate >= OFFICIAL_SPEEDUP_GOAL)}
            except Exception as err:
                entry["official"] = f"fail: {type(err).__name__}: {err}"[:300]
                failures.append(f"{name} official")
        result[name] = entry
        gpt = None
        _free_cuda()
    result["greedy_identical"] = all(r.get("greedy_identical") is not False for e in result.values()
                                     if isinstance(e, dict) for r in e.values() if isinstance(r, dict))
    result["failures"] = failures
    if failures:
        result.update(passed_checks=False, error=f"{len(failures)} sub-measurement(s) failed: "
                                                 f"{', '.join(failures)}")
    return result


def _sjd_figures(gpt: torch.nn.Module, labels: torch.Tensor, tokens: int, check: Check, failures: list[str],
                 where: str) -> dict | str:
    """Speculative Jacobi decoding against plain sampling: images/s, forward passes per image, acceptance."""
    from gigatok.gpt.generate import generate

    if check.time_left() < 5:
        return "skipped: budget"
    try:
        stats: dict[str, dict] = {"plain": {}, "sjd": {}}
        rates = {}
        for sampler in ("plain", "sjd"):
            seconds = _time_generation(lambda: generate(gpt, labels, tokens, cfg_scale=4.0, sampler=sampler), check)
            generate(gpt, labels, tokens, cfg_scale=4.0, sampler=sampler, stats=stats[sampler])
            rates[sampler] = len(labels) / seconds
        plain_fwd, sjd_fwd = stats["plain"]["forwards"], stats["sjd"]["forwards"]
        return {"images_per_s": round(rates["sjd"], 3), "plain_images_per_s": round(rates["plain"], 3),
                "forwards": sjd_fwd, "plain_forwards": plain_fwd, "forward_reduction": round(plain_fwd / sjd_fwd, 3),
                **{k: v for k, v in stats["sjd"].items() if k != "forwards" and isinstance(v, (int, float))}}
    except Exception as err:
        failures.append(f"{where} sjd")
        return f"fail: {type(err).__name__}: {err}"[:300]


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


PART_FUNCTIONS: dict[str, Callable[[Check], dict]] = {
    "tokenizer_precision": part_tokenizer_precision, "tokenizer_xl_xxl_train": part_tokenizer_xl_xxl_train,
    "fsdp_world1": part_fsdp_world1, "gpt_train": part_gpt_train, "generation": part_generation,
    "adm_inception": part_adm_inception, "seed_commands": part_seed_commands,
}
