"""gpu-check parts that train: the tokenizer in fp32 / bf16 / fp16 against the CPU step, the XL-XXL tokenizer's
largest batch, FSDP2 at world size 1 against the plain model, and the GPTs' train step (tokens/s, MFU).
"""
from __future__ import annotations

import contextlib
import copy
import math
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator

import torch

from gigatok.bench import (
    _sync,
    time_fn,
    train_flops,
)
from gigatok.bench.gpu_parts import (  # the shared pieces
    FSDP_TOLERANCE,
    MFU_GOAL,
    TOLERANCES,
    Check,
    _free_cuda,
    _loss_of,
    _peak_memory,
    bf16_peak,
    init_weights,
    no_tf32,
    parity_images,
    rel_l2,
    tokenizer_config,
    tokenizer_loss,
)

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
