"""KV-cache sampling for the class-conditional GPT, with GigaTok's classifier-free-guidance schedules.

Decoding (SPEC_llamagen §2, SPEC_gigatok §6.4): with guidance the batch is doubled as [cond; null] (2B rows,
cond first); prefill runs the class token alone, then one code per step is fed to both halves. Guided logits are
`uncond + (cond - uncond) * cfg` on raw logits, then / temperature, top-k / top-p filtering, softmax and
`torch.multinomial`. The first code (prefill) always uses the full `cfg_scale`; code t = 1 .. L-1 uses
`schedule(ratio = t / (L - 1))`. Whether the batch is doubled is decided once from `cfg_scale > 1` (GigaTok
re-tests every scheduled value and adds 1e-4 to keep it above 1, which our single decision makes moot; where its
schedule does reach 1, the cosine's last code, the official code breaks while ours keeps guiding with 1.0).

Shape letters: B batch; L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook
size (= GPT vocabulary); R decoding rows (2B with classifier-free guidance, else B). Here B counts the samples
(labels) and L = `num_tokens`, the codes generated per image.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from gigatok.gpt.model import GPT

CFG_SCHEDULES = ("constant", "linear", "linear_re", "triangular", "rectangular", "step", "cosine")
# Keyword arguments each schedule accepts, with defaults (rectangular: official generate.py; step: the official
# samplers' --step-start-ratio; triangular's peak is fixed at 0.5 officially, exposed here as an extension).
_SCHEDULE_KWARGS: dict[str, dict[str, float]] = {
    "rectangular": {"window_start": 0.05, "window_end": 1.0},
    "step": {"window_start": 0.18},
    "triangular": {"peak": 0.5},
}
# GigaTok adds this to scales that may reach 1, so that every decode step keeps the guided, doubled batch.
_EPS = 1e-4


def cfg_at(cfg_scale: float, ratio: float, cfg_schedule: str = "constant", **kwargs: float) -> float:
    """Guidance scale of one generated code at progress `ratio` in (0, 1] (GigaTok's schedules, exact formulas).

    constant: s.  linear: 1 + (s-1) r + 1e-4.  linear_re: 1 + (s-1)(1-r) + 1e-4.  triangular: rises as
    1 + (s-1) r/peak + 1e-4 while r < peak, then falls as 1 + (s-1)(1-r)/(1-peak) + 1e-4.  rectangular: s for
    window_start <= r <= window_end, else 1 + 1e-4.  step: s for r >= window_start, else 1 + 1e-4.
    cosine: 1 + (s-1)(1 + cos(pi r))/2 (no epsilon; the official one crashes because `math` is not imported).
    """
    if cfg_schedule not in CFG_SCHEDULES:
        hint = " ('sigmoid' is accepted but unimplemented in the official code)" if cfg_schedule == "sigmoid" else ""
        raise ValueError(f"unknown cfg_schedule '{cfg_schedule}', expected one of {CFG_SCHEDULES}{hint}")
    allowed = _SCHEDULE_KWARGS.get(cfg_schedule, {})
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"cfg_schedule '{cfg_schedule}' takes {sorted(allowed) or 'no arguments'}, got {unknown}")
    opts = {**allowed, **kwargs}
    s = cfg_scale
    if cfg_schedule == "constant":
        return s
    if cfg_schedule == "linear":
        return 1.0 + (s - 1.0) * ratio + _EPS
    if cfg_schedule == "linear_re":
        return 1.0 + (s - 1.0) * (1.0 - ratio) + _EPS
    if cfg_schedule == "triangular":
        peak = opts["peak"]
        rise = ratio / peak if ratio < peak else (1.0 - ratio) / (1.0 - peak)
        return 1.0 + (s - 1.0) * rise + _EPS
    if cfg_schedule == "rectangular":
        return s if opts["window_start"] <= ratio <= opts["window_end"] else 1.0 + _EPS
    if cfg_schedule == "step":
        return s if ratio >= opts["window_start"] else 1.0 + _EPS
    return 1.0 + (s - 1.0) * (0.5 * (1.0 + math.cos(math.pi * ratio)))  # cosine


def _cfg_plan(cfg_scale: float, num_tokens: int, cfg_schedule: str, cfg_schedule_kwargs: dict[str, Any] | None,
              cfg_interval: float) -> list[float | None]:
    """Guidance per generated code; None = plain conditional logits (no guidance, or past `cfg_interval`)."""
    kwargs = dict(cfg_schedule_kwargs or {})
    cfg_at(cfg_scale, 0.0, cfg_schedule, **kwargs)  # validate the schedule even when guidance is off
    if cfg_scale <= 1.0:
        return [None] * num_tokens
    plan: list[float | None] = [cfg_scale]  # prefill: always the full scale
    for t in range(1, num_tokens):
        # LlamaGen/GigaTok cfg_interval: decode step i = t - 1 stops guiding once i > cfg_interval
        if cfg_interval > -1 and t - 1 > cfg_interval:
            plan.append(None)
        else:
            plan.append(cfg_at(cfg_scale, t / (num_tokens - 1), cfg_schedule, **kwargs))
    return plan


def cfg_schedule_values(cfg_scale: float, num_tokens: int, cfg_schedule: str = "constant",
                        cfg_schedule_kwargs: dict[str, Any] | None = None, cfg_interval: float = -1) -> list[float]:
    """The guidance scale applied to each of the `num_tokens` generated codes (1.0 where unguided).

    Matches the `_cfg_per_token` arrays of the reference vectors.
    """
    plan = _cfg_plan(cfg_scale, num_tokens, cfg_schedule, cfg_schedule_kwargs, cfg_interval)
    return [1.0 if c is None else c for c in plan]


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf (HF transformers v3 semantics, one token always kept).

    top-k keeps every logit >= the k-th largest (ties kept). top-p keeps the smallest prefix of the sorted
    distribution whose cumulative probability reaches p, including the token that crosses p.

    Args:
        logits: (R, K) float.

    Returns:
        A new (R, K) tensor.
    """
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (R, K)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # shift right: keep the first token that crosses p
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one code per row from `logits` (R, K) float32; returns (R, 1) int64."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = top_k_top_p_filtering(logits, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(gpt: GPT, labels: torch.Tensor, num_tokens: int, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
             cfg_schedule_kwargs: dict[str, Any] | None = None, cfg_interval: float = -1, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             compile: bool = False) -> torch.Tensor:
    """Sample codes autoregressively with a static KV cache and classifier-free guidance.

    Needs no process group. The model is put in eval mode for the call; afterwards its train/eval mode is
    restored and the caches are removed, so it can train again right away.

    Args:
        gpt: the model (any dtype/device; caches take the token embedding's).
        labels: (B,) int64 classes in [0, num_classes] (`num_classes` = unconditional); they decide the device.
        num_tokens: L, the codes to generate per image, 1 .. block_size (fewer than block_size give a prefix).
        cfg_scale: guidance scale s; > 1 doubles the batch as [cond; null]. <= 1: plain conditional sampling.
        cfg_schedule: one of CFG_SCHEDULES, see `cfg_at`.
        cfg_schedule_kwargs: `window_start` / `window_end` for 'rectangular', `window_start` for 'step' (default
            0.18, the official samplers' --step-start-ratio), `peak` for 'triangular'.
        cfg_interval: > -1: plain conditional logits for code t once t - 1 > cfg_interval (official semantics).
        temperature, top_k, top_p: applied to the guided logits (top_k 0 / top_p 1.0 = off; top_k 1 = greedy).
        generator: torch.Generator on the labels' device, for reproducible draws.
        compile: `torch.compile` the single-token decode step (the prefill stays eager).

    Returns:
        (B, L) int64 codes in [0, K).
    """
    cfg = gpt.config
    if not 1 <= num_tokens <= cfg.block_size:
        raise ValueError(f"num_tokens must be in [1, block_size={cfg.block_size}], got {num_tokens}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be (B,), got shape {tuple(labels.shape)}")
    plan = _cfg_plan(cfg_scale, num_tokens, cfg_schedule, cfg_schedule_kwargs, cfg_interval)
    use_cfg = cfg_scale > 1.0
    if use_cfg and not gpt.has_null_class:
        raise ValueError("classifier-free guidance needs a null class, but this model has class_dropout_prob = 0")
    b, device = labels.shape[0], labels.device
    labels = labels.long()
    cond = torch.cat([labels, torch.full_like(labels, cfg.num_classes)]) if use_cfg else labels  # (R,)

    def pick(logits: torch.Tensor, scale: float | None) -> torch.Tensor:
        """Guide (R, K) logits into (B, K) and draw (B, 1) codes."""
        if use_cfg:
            cond_logits, uncond_logits = logits.chunk(2, dim=0)  # (R, K) -> 2 x (B, K)
            logits = cond_logits if scale is None else uncond_logits + (cond_logits - uncond_logits) * scale
        return sample_from_logits(logits, temperature, top_k, top_p, generator)

    was_training = gpt.training
    gpt.eval()  # no label/token dropout while sampling
    try:
        gpt.setup_caches(cond.shape[0], cfg.cls_token_num + num_tokens)
        step = gpt.forward_cached
        if compile:
            step = torch.compile(step, mode="reduce-overhead" if device.type == "cuda" else None, fullgraph=True)
        codes = torch.empty(b, num_tokens, dtype=torch.long, device=device)
        prefill_pos = torch.arange(cfg.cls_token_num, device=device)
        logits = gpt.forward_cached(prefill_pos, labels=cond, kv_len=cfg.cls_token_num)[:, -1]  # (R, K), class pos.
        codes[:, :1] = pick(logits, plan[0])
        for t in range(1, num_tokens):
            x = codes[:, t - 1:t]  # (B, 1)
            x = torch.cat([x, x]) if use_cfg else x  # (R, 1): both halves see the same sampled code
            input_pos = torch.tensor([cfg.cls_token_num + t - 1], device=device)
            # Eager: attend over the filled prefix only. Compiled: fixed shapes, masked full cache.
            kv_len = None if compile else cfg.cls_token_num + t
            logits = step(input_pos, codes=x, kv_len=kv_len)[:, -1]  # (R, K)
            codes[:, t:t + 1] = pick(logits, plan[t])
    finally:
        gpt.remove_caches()
        gpt.train(was_training)
    return codes
