"""Sampling: CFG schedules, filtering, KV-cached decoding == teacher forcing, reproducibility, model hygiene."""
from __future__ import annotations

import importlib
import math
import time

import pytest
import torch

from gigatok.builders import build_gpt
from gigatok.gpt.generate import (
    CFG_SCHEDULES,
    cfg_at,
    cfg_schedule_values,
    generate,
    sample_from_logits,
    top_k_top_p_filtering,
)
from gigatok.gpt.model import GPT

gen_module = importlib.import_module("gigatok.gpt.generate")  # the module (gigatok.gpt exports the function)
torch.set_num_threads(2)
V, N, NUM_CLASSES = 64, 16, 10  # debug vocabulary, codes per sample, classes


def debug_gpt(pos_type: str = "learned_1d", seed: int = 0, **overrides) -> GPT:
    """Debug GPT in eval mode with a random (not zero) output head, so logits are informative and untied."""
    torch.manual_seed(seed)
    gpt = build_gpt("debug", vocab_size=V, block_size=N, num_classes=NUM_CLASSES, pos_type=pos_type, **overrides)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    return gpt.eval()


def replay_guided_logits(gpt: GPT, labels: torch.Tensor, codes: torch.Tensor,
                         scales: list[float | None]) -> torch.Tensor:
    """Teacher-forced guided logits (B, N, V) for `codes` (B, N); scales[t] None = conditional logits only."""
    with torch.no_grad():
        cond, _ = gpt(codes[:, :-1], labels)
        uncond, _ = gpt(codes[:, :-1], torch.full_like(labels, NUM_CLASSES))
    out = cond.clone()
    for t, s in enumerate(scales):
        if s is not None:
            out[:, t] = uncond[:, t] + (cond[:, t] - uncond[:, t]) * s
    return out


# ---------------------------------------------------------------------------------------------------------------
# schedules
def test_schedule_formulas():
    """GigaTok's exact formulas, including the + 1e-4 that keeps every scheduled scale above 1."""
    s, eps = 3.0, 1e-4
    assert cfg_at(s, 0.3, "constant") == s
    assert cfg_at(s, 0.25, "linear") == pytest.approx(1.5 + eps, abs=1e-12)
    assert cfg_at(s, 0.25, "linear_re") == pytest.approx(2.5 + eps, abs=1e-12)
    assert cfg_at(s, 0.5, "triangular") == pytest.approx(s + eps, abs=1e-12)  # peak
    assert cfg_at(s, 0.25, "triangular") == pytest.approx(2.0 + eps) == cfg_at(s, 0.75, "triangular")
    assert cfg_at(s, 0.2, "triangular", peak=0.4) == pytest.approx(2.0 + eps)
    assert cfg_at(s, 0.0, "cosine") == pytest.approx(s) and cfg_at(s, 1.0, "cosine") == pytest.approx(1.0)
    assert cfg_at(s, 0.5, "cosine") == pytest.approx(1 + 2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cfg_at(s, 0.04, "rectangular") == 1.0 + eps and cfg_at(s, 0.05, "rectangular") == s
    assert cfg_at(s, 1.0, "rectangular") == s
    assert cfg_at(s, 0.5, "rectangular", window_start=0.2, window_end=0.4) == 1.0 + eps
    assert cfg_at(s, 0.17, "step") == 1.0 + eps and cfg_at(s, 0.18, "step") == s
    assert cfg_at(s, 0.5, "step", window_start=0.6) == 1.0 + eps


def test_schedule_values_over_a_sequence():
    values = cfg_schedule_values(1.75, 256, "step", {"window_start": 0.18})
    assert values[0] == 1.75 and values[1:46] == [1.0 + 1e-4] * 45 and values[46:] == [1.75] * 210
    lin = cfg_schedule_values(4.0, 256, "linear")  # ratio = t / 255 for code t >= 1; code 0 gets the full scale
    assert lin[0] == 4.0 and lin[1] == 1 + 3 * (1 / 255) + 1e-4 and lin[-1] == pytest.approx(4.0001)
    assert cfg_schedule_values(4.0, 256, "linear_re")[-1] == pytest.approx(1.0001)
    assert cfg_schedule_values(1.0, 8, "linear") == [1.0] * 8  # guidance off
    # cfg_interval k: decode step i = t - 1 stops guiding once i > k
    assert cfg_schedule_values(4.0, 8, cfg_interval=2) == [4.0, 4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0]
    assert cfg_schedule_values(4.0, 1) == [4.0]


def test_schedule_errors():
    with pytest.raises(ValueError, match="sigmoid"):
        cfg_schedule_values(2.0, 8, "sigmoid")
    with pytest.raises(ValueError, match="unknown cfg_schedule"):
        cfg_schedule_values(2.0, 8, "exp")
    with pytest.raises(ValueError, match="takes"):
        cfg_schedule_values(2.0, 8, "step", {"start": 0.1})
    assert set(CFG_SCHEDULES) == {"constant", "linear", "linear_re", "triangular", "rectangular", "step", "cosine"}


# ---------------------------------------------------------------------------------------------------------------
# filtering and sampling
def test_top_k_keeps_ties_and_top_p_keeps_the_crossing_token():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 2.0]])
    kept = top_k_top_p_filtering(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, True, False, False]]  # both 3.0 >= the 2nd largest
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_k_top_p_filtering(probs.log(), top_p=0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.8: the crossing token stays
    kept = top_k_top_p_filtering(probs.log(), top_p=0.01).isfinite()
    assert kept.tolist() == [[True, False, False, False]]  # always at least one
    assert torch.equal(top_k_top_p_filtering(logits, 0, 1.0), logits)


def test_sampling_is_seeded_and_greedy_with_top_k_1():
    logits = torch.randn(4, 32)
    draw = lambda seed: sample_from_logits(logits, 1.0, 0, 0.9, torch.Generator().manual_seed(seed))
    assert torch.equal(draw(1), draw(1))
    assert torch.equal(sample_from_logits(logits, 1.0, top_k=1), logits.argmax(-1, keepdim=True))
    assert torch.equal(sample_from_logits(logits, temperature=0.0), logits.argmax(-1, keepdim=True))


# ---------------------------------------------------------------------------------------------------------------
# cached decoding
@pytest.mark.parametrize("pos_type", ["learned_1d", "rope_2d", "rope_1d"])
@pytest.mark.parametrize("use_cfg", [False, True])
def test_cached_logits_equal_teacher_forced_logits(pos_type, use_cfg):
    gpt = debug_gpt(pos_type)
    labels = torch.tensor([3, 7])
    rows = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)]) if use_cfg else labels  # [cond; null]
    codes = torch.randint(0, V, (rows.shape[0], N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, _ = gpt(codes[:, :-1], rows)  # (R, N, V)
        for prefix_only in (False, True):  # masked full cache (compile path) / unmasked filled prefix (eager path)
            kv = (lambda n: n) if prefix_only else (lambda n: None)
            gpt.setup_caches(rows.shape[0], 1 + N)
            chunks = [gpt.forward_cached(torch.arange(0, 4), codes=codes[:, :3], labels=rows, kv_len=kv(4))]
            for t in range(4, N):  # then one code per step
                chunks.append(gpt.forward_cached(torch.tensor([t]), codes=codes[:, t - 1:t], kv_len=kv(t + 1)))
            gpt.remove_caches()
            torch.testing.assert_close(torch.cat(chunks, dim=1), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg_scale, schedule, kwargs, interval", [
    (1.0, "constant", {}, -1), (3.0, "constant", {}, -1), (3.0, "linear", {}, -1), (3.0, "cosine", {}, -1),
    (3.0, "step", {"window_start": 0.5}, -1), (3.0, "triangular", {}, 4),
])
def test_greedy_generation_replays_under_teacher_forcing(cfg_scale, schedule, kwargs, interval):
    """Every greedily generated code is the argmax of the teacher-forced guided logits at its position."""
    gpt = debug_gpt("rope_2d")
    labels = torch.tensor([1, 4, 9])
    codes = generate(gpt, labels, N, cfg_scale, schedule, kwargs, cfg_interval=interval, top_k=1)
    assert codes.shape == (3, N) and codes.dtype == torch.int64
    scales = cfg_schedule_values(cfg_scale, N, schedule, kwargs, interval)
    if cfg_scale > 1 and interval > -1:
        scales = [None if t - 1 > interval else s for t, s in enumerate(scales)]  # past the interval: cond only
    guided = replay_guided_logits(gpt, labels, codes, scales if cfg_scale > 1 else [None] * N)
    assert torch.equal(guided.argmax(-1), codes)


def test_generation_is_reproducible_and_restores_the_model():
    gpt = debug_gpt("learned_1d").train()
    labels = torch.tensor([0, 5])
    kwargs = {"cfg_scale": 2.0, "cfg_schedule": "linear", "temperature": 1.0, "top_k": 20, "top_p": 0.95}
    a = generate(gpt, labels, N, generator=torch.Generator().manual_seed(0), **kwargs)
    b = generate(gpt, labels, N, generator=torch.Generator().manual_seed(0), **kwargs)
    c = generate(gpt, labels, N, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < V
    assert gpt.training and not gpt.has_caches
    assert not any("cache" in name for name, _ in gpt.named_buffers())
    # the model trains right away: teacher-forced forward + backward
    codes = torch.randint(0, V, (2, N))
    _, loss = gpt(codes[:, :-1], labels, targets=codes)
    loss.backward()
    assert all(p.grad is not None for p in gpt.parameters())
    gpt.eval()
    generate(gpt, labels, 4, cfg_scale=2.0)
    assert not gpt.training


def test_generation_cleans_up_after_an_error(monkeypatch):
    gpt = debug_gpt().train()
    calls = {"n": 0}
    original = gpt.forward_cached

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(gpt, "forward_cached", failing)
    with pytest.raises(RuntimeError, match="boom"):
        generate(gpt, torch.tensor([1]), N, cfg_scale=2.0)
    assert gpt.training and not gpt.has_caches


def test_generation_argument_errors():
    gpt = debug_gpt()
    with pytest.raises(ValueError, match="num_tokens"):
        generate(gpt, torch.tensor([1]), N + 1)
    with pytest.raises(ValueError, match="num_tokens"):
        generate(gpt, torch.tensor([1]), 0)
    no_null = debug_gpt(class_dropout_prob=0.0)
    with pytest.raises(ValueError, match="null class"):
        generate(no_null, torch.tensor([1]), 4, cfg_scale=2.0)
    assert generate(no_null, torch.tensor([1]), 4).shape == (1, 4)  # conditional sampling needs no null row
    with pytest.raises(RuntimeError, match="setup_caches"):
        gpt.forward_cached(torch.tensor([0]), labels=torch.tensor([1]))


@pytest.mark.slow
def test_compiled_decode_step_matches_eager():
    """`compile=True` wraps the decode step in torch.compile (inductor on CPU: slow to build, hence slow)."""
    torch._dynamo.reset()
    gpt = debug_gpt("rope_2d")
    labels = torch.tensor([2, 8])
    eager = generate(gpt, labels, N, cfg_scale=2.0, top_k=1)
    start = time.time()
    compiled = generate(gpt, labels, N, cfg_scale=2.0, top_k=1, compile=True)
    assert torch.equal(compiled, eager), f"compiled run took {time.time() - start:.1f}s"
    assert not gpt.has_caches


# ---------------------------------------------------------------------------------------------------------------
# the decode step for GPUs: no host sync per step, a static-shape step, multinomial-equal draws
# Ops that read a value back to the host (or copy host data to the device) when the tensors live on a GPU;
# torch.multinomial checks its input with `.item()` on CUDA.
HOST_SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.lift_fresh.default",
                 "aten.masked_select.default", "aten.equal.default", "aten.is_nonzero.default",
                 "aten.multinomial.default", "aten._unique2.default"}


class HostSyncCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops in HOST_SYNC_OPS that run while active (CPU tensors dispatch the same ops as CUDA ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_SYNC_OPS:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


def host_syncs(fn) -> list[str]:
    with HostSyncCounter() as counter:
        fn()
    return counter.syncs


def test_the_sync_counter_sees_host_syncs():
    x = torch.arange(4)
    assert host_syncs(lambda: (x.sum().item(), torch.tensor([1]), torch.nonzero(x))) == [
        "aten._local_scalar_dense.default", "aten.lift_fresh.default", "aten.nonzero.default"]


@pytest.mark.parametrize("decoder", ["eager", "static"])
def test_decode_steps_make_no_host_sync(decoder):
    """Host syncs per call do not grow with the number of decode steps (only the setup may have them)."""
    gpt = debug_gpt("rope_2d")
    labels = torch.tensor([1, 4])

    def run(num_tokens: int) -> list[str]:
        if decoder == "eager":
            call = lambda: generate(gpt, labels, num_tokens, cfg_scale=3.0, cfg_schedule="linear", top_k=5,
                                    top_p=0.9, generator=torch.Generator().manual_seed(0))
        else:
            call = lambda: static_generate(gpt, labels, num_tokens)
        return host_syncs(call)

    assert run(4) == run(N)  # 3 vs 15 decode steps: the same (setup-only) syncs


def static_generate(gpt: GPT, labels: torch.Tensor, num_tokens: int, cfg_scale: float = 3.0,
                    **sampling) -> torch.Tensor:
    """Decode with the static-shape step that torch.compile / CUDA graphs wrap, uncompiled (what the CPU can run)."""
    plan = gen_module._cfg_plan(cfg_scale, num_tokens, "linear", None, -1)
    sampler = gen_module._Sampling(cfg_scale > 1, sampling.get("temperature", 1.0), sampling.get("top_k", 5),
                                   sampling.get("top_p", 0.9), torch.Generator().manual_seed(0))
    cond = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])
    gpt.setup_caches(cond.shape[0], 1 + num_tokens)
    try:
        codes = torch.empty(labels.shape[0], num_tokens, dtype=torch.long)
        logits = gpt.forward_cached(torch.arange(1), labels=cond, kv_len=1)[:, -1]
        codes[:, :1] = sampler.pick(logits, plan[0])
        gen_module._StaticDecoder(gpt, codes, plan, sampler, compile=False, cuda_graphs=False).decode()
    finally:
        gpt.remove_caches()
    return codes


def test_static_decode_step_equals_eager_decoding():
    """The masked full-cache step with device-side schedule and draws gives the eager codes: greedy exactly, and
    sampled ones too on this CPU (same draws from the same generator, logits equal to rounding)."""
    gpt = debug_gpt("learned_1d")
    labels = torch.tensor([0, 7, 3])
    greedy = static_generate(gpt, labels, N, top_k=1)
    assert torch.equal(greedy, generate(gpt, labels, N, cfg_scale=3.0, cfg_schedule="linear", top_k=1))
    sampled = static_generate(gpt, labels, N, top_k=0, top_p=1.0)
    eager = generate(gpt, labels, N, cfg_scale=3.0, cfg_schedule="linear", generator=torch.Generator().manual_seed(0))
    assert (sampled == eager).float().mean() > 0.9


def test_draws_equal_torch_multinomial():
    """`sample_from_logits` reproduces torch.multinomial's draws from the same generator (so seeded samples kept
    their values when the sampler moved to the sync-free draw)."""
    for seed, (rows, k) in enumerate([(3, 64), (8, 16384), (1, 256)]):
        logits = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)) * 3
        ours = sample_from_logits(logits, 0.7, top_k=20, generator=torch.Generator().manual_seed(seed))
        probs = torch.softmax(top_k_top_p_filtering(logits / 0.7, 20), dim=-1)
        reference = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ours, reference)
