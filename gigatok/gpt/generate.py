"""KV-cache sampling for the class-conditional GPT, with GigaTok's classifier-free-guidance schedules.

Decoding (SPEC_llamagen §2, SPEC_gigatok §6.4): with guidance the batch is doubled as [cond; null] (2B rows,
cond first); prefill runs the class token alone, then one code per step is fed to both halves. Guided logits are
`uncond + (cond - uncond) * cfg` on raw logits, then / temperature, top-k / top-p filtering, softmax and
`torch.multinomial`'s draw (made here as the exponential race it runs internally, so that no step waits for the
host). The first code (prefill) always uses the full `cfg_scale`; code t = 1 .. L-1 uses
`schedule(ratio = t / (L - 1))`. Whether the batch is doubled is decided once from `cfg_scale > 1` (GigaTok
re-tests every scheduled value and adds 1e-4 to keep it above 1, which our single decision makes moot; where its
schedule does reach 1, the cosine's last code, the official code breaks while ours keeps guiding with 1.0).

Decoders: eager (one code per forward, attention over the filled prefix), static (fixed shapes, masked full cache:
for torch.compile and CUDA graphs) and speculative Jacobi decoding (`sampler="sjd"`: a window of drafts verified
per forward with the exact speculative-sampling rule). T below is the number of positions of one forward pass.

Shape letters: B batch; L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook
size (= GPT vocabulary); R decoding rows (2B with classifier-free guidance, else B); T sequence positions (here:
the positions of one forward pass). Here B counts the samples (labels) and L = `num_tokens`, the codes generated per
image.
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
        # shift right (the first token never removed): keep the token that crosses p
        remove = torch.cat([torch.zeros_like(remove[..., :1]), remove[..., :-1]], dim=-1)
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def exponential_noise(shape: tuple[int, ...], device: torch.device | str,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) float32 noise of `shape`: what `torch.multinomial` draws for one sample per row, from the same stream."""
    return torch.empty(shape, dtype=torch.float32, device=device).exponential_(1, generator=generator)


def draw(weights: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One index per row of `weights` (..., K), proportional to the weights (need not sum to 1): the exponential race
    argmax(weights / noise), noise ~ Exp(1) of the same shape.

    Bit for bit the draw of `torch.multinomial(weights, 1)` given the same noise (torch makes this race internally
    for one sample per row), but without its validity check, which reads a value back to the host on CUDA: this
    stays on the device and can run inside a CUDA graph with the noise drawn outside it.

    Returns:
        (..., 1) int64.
    """
    return torch.argmax(weights / noise, dim=-1, keepdim=True)


def filtered_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution codes are drawn from: softmax of `logits` (..., K) float32 / temperature after top-k/top-p."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = top_k_top_p_filtering(logits, top_k, top_p)
    return torch.softmax(logits, dim=-1)


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one code per row from `logits` (R, K) float32; returns (R, 1) int64 (= torch.multinomial's draw)."""
    probs = filtered_probs(logits, temperature, top_k, top_p)
    return draw(probs, exponential_noise(probs.shape, probs.device, generator))


SAMPLERS = ("plain", "sjd")
SJD_NOISE = ("fixed", "fresh")


@torch.no_grad()
def generate(gpt: GPT, labels: torch.Tensor, num_tokens: int, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
             cfg_schedule_kwargs: dict[str, Any] | None = None, cfg_interval: float = -1, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
             compile: bool = False, sampler: str = "plain", sjd_window: int = 16, sjd_noise: str = "fixed",
             cuda_graphs: bool = False, stats: dict[str, Any] | None = None) -> torch.Tensor:
    """Sample codes autoregressively with a static KV cache and classifier-free guidance.

    Needs no process group. The model is put in eval mode for the call; afterwards its train/eval mode is
    restored and the caches are removed, so it can train again right away. No decode step reads a value back to
    the host (positions, guidance and draws stay on the device), so on a GPU the steps queue up without waiting;
    `sampler="sjd"` reads its (B, T) acceptance tests back once per verification pass, by design.

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
        compile: `torch.compile` the single-token decode step (the prefill stays eager); on CUDA with
            mode="reduce-overhead" (inductor captures the step in a CUDA graph).
        sampler: "plain" (one code per forward pass) or "sjd": speculative Jacobi decoding (Teng et al. 2024,
            arXiv 2410.01699), training free: each forward pass verifies a window of draft codes with the
            speculative-sampling acceptance rule, which keeps the model's distribution exactly; greedy output
            (top_k=1) equals plain decoding.
        sjd_window: "sjd": draft codes verified per forward pass (>= 2).
        sjd_noise: "sjd": how a code's draft is redrawn from each new prediction. "fixed": from the same
            exponential-race noise every time (drafts settle as the context settles, as in greedy Jacobi
            decoding; still exact, see `_sjd_decode`); "fresh": new noise each pass (the SJD paper).
        cuda_graphs: capture the static decode step in a CUDA graph by hand (CUDA only; "plain" sampler).
        stats: if given, filled with "forwards" (model calls for the batch, prefill included), "codes_per_forward"
            and, for "sjd", "acceptance_rate" (accepted / verified drafts) and "iterations".

    Returns:
        (B, L) int64 codes in [0, K).
    """
    cfg = gpt.config
    if not 1 <= num_tokens <= cfg.block_size:
        raise ValueError(f"num_tokens must be in [1, block_size={cfg.block_size}], got {num_tokens}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be (B,), got shape {tuple(labels.shape)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "sjd" and (compile or cuda_graphs):
        raise ValueError("sampler='sjd' runs eagerly (its window length changes per pass): drop compile/cuda_graphs")
    if sampler == "sjd" and sjd_window < 2:
        raise ValueError(f"sjd_window must be >= 2, got {sjd_window}")
    if sjd_noise not in SJD_NOISE:
        raise ValueError(f"sjd_noise must be one of {SJD_NOISE}, got {sjd_noise!r}")
    if cuda_graphs and labels.device.type != "cuda":
        raise ValueError(f"cuda_graphs needs labels on a CUDA device, got {labels.device}")
    plan = _cfg_plan(cfg_scale, num_tokens, cfg_schedule, cfg_schedule_kwargs, cfg_interval)
    use_cfg = cfg_scale > 1.0
    if use_cfg and not gpt.has_null_class:
        raise ValueError("classifier-free guidance needs a null class, but this model has class_dropout_prob = 0")
    b, device = labels.shape[0], labels.device
    labels = labels.long()
    cond = torch.cat([labels, torch.full_like(labels, cfg.num_classes)]) if use_cfg else labels  # (R,)
    sampling = _Sampling(use_cfg, temperature, top_k, top_p, generator)

    was_training = gpt.training
    gpt.eval()  # no label/token dropout while sampling
    try:
        gpt.setup_caches(cond.shape[0], cfg.cls_token_num + num_tokens)
        codes = torch.empty(b, num_tokens, dtype=torch.long, device=device)  # (B, L), filled in place
        if sampler == "sjd":  # its first pass is also the prefill
            run = _sjd_decode(gpt, cond, codes, plan, sampling, sjd_window, fixed_noise=sjd_noise == "fixed")
        else:
            prefill_pos = torch.arange(cfg.cls_token_num, device=device)
            logits = gpt.forward_cached(prefill_pos, labels=cond, kv_len=cfg.cls_token_num)[:, -1]  # (R, K)
            codes[:, :1] = sampling.pick(logits, plan[0])
            if compile or cuda_graphs:
                run = _StaticDecoder(gpt, codes, plan, sampling, compile, cuda_graphs).decode()
            else:
                run = _eager_decode(gpt, codes, plan, sampling)
    finally:
        gpt.remove_caches()
        gpt.train(was_training)
    if stats is not None:
        stats.clear()
        stats.update(run, codes_per_forward=num_tokens / run["forwards"])
    return codes


class _Sampling:
    """Guidance + filtering + draw of the next codes, shared by every decoder."""

    def __init__(self, use_cfg: bool, temperature: float, top_k: int, top_p: float,
                 generator: torch.Generator | None) -> None:
        self.use_cfg, self.temperature, self.top_k, self.top_p = use_cfg, temperature, top_k, top_p
        self.generator = generator

    def guide(self, logits: torch.Tensor, scale: float | torch.Tensor | None,
              guided: torch.Tensor | None = None) -> torch.Tensor:
        """(R, ..., K) -> (B, ..., K): `uncond + (cond - uncond) * scale` with guidance, else the cond rows.

        `scale` None: the conditional logits (past cfg_interval). A tensor `scale` comes with a boolean `guided`
        (same shape) choosing per element, so that a schedule can live on the device."""
        if not self.use_cfg:
            return logits
        cond, uncond = logits.chunk(2, dim=0)  # (R, ..., K) -> 2 x (B, ..., K)
        if guided is not None:
            return torch.where(guided, uncond + (cond - uncond) * scale, cond)
        return cond if scale is None else uncond + (cond - uncond) * scale

    def probs(self, guided_logits: torch.Tensor) -> torch.Tensor:
        return filtered_probs(guided_logits, self.temperature, self.top_k, self.top_p)

    def noise(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return exponential_noise(shape, device, self.generator)

    def pick(self, logits: torch.Tensor, scale: float | None) -> torch.Tensor:
        """Guide (R, K) logits into (B, K) and draw (B, 1) codes."""
        probs = self.probs(self.guide(logits, scale))
        return draw(probs, self.noise(probs.shape, probs.device))


def _step_inputs(codes: torch.Tensor, t: int, use_cfg: bool) -> torch.Tensor:
    """The previous code of every row, (R, 1): both halves of a guided batch see the same sampled code."""
    x = codes[:, t - 1:t]  # (B, 1)
    return torch.cat([x, x]) if use_cfg else x


def _eager_decode(gpt: GPT, codes: torch.Tensor, plan: list[float | None], sampling: _Sampling) -> dict[str, Any]:
    """One forward pass per code, attention over the filled cache prefix only (no mask; shapes grow per step)."""
    c, num_tokens = gpt.config.cls_token_num, codes.shape[1]
    positions = torch.arange(c, c + num_tokens, device=codes.device)  # code t - 1 sits at position c + t - 1
    for t in range(1, num_tokens):
        x = _step_inputs(codes, t, sampling.use_cfg)
        logits = gpt.forward_cached(positions[t - 1:t], codes=x, kv_len=c + t)[:, -1]  # (R, K)
        codes[:, t:t + 1] = sampling.pick(logits, plan[t])
    return {"forwards": num_tokens}


class _StaticDecoder:
    """The decode step with fixed shapes for torch.compile and CUDA graphs.

    Attention runs over the whole cache under a mask built on the device from the position; the per-step inputs
    (position, guidance scale and flag, the draw's noise) are copied into preallocated buffers from tables made
    once, and the drawn codes go straight into the preallocated output. With `cuda_graphs` the step (forward,
    guidance, filtering, draw, writing the codes and the next step's inputs) is captured once and replayed; the
    noise is drawn outside the graph from the caller's generator, so every step's draw is fresh and reproducible.
    """

    def __init__(self, gpt: GPT, codes: torch.Tensor, plan: list[float | None], sampling: _Sampling,
                 compile: bool, cuda_graphs: bool) -> None:
        self.gpt, self.codes, self.sampling, self.cuda_graphs = gpt, codes, sampling, cuda_graphs
        device, (b, num_tokens) = codes.device, codes.shape
        c = gpt.config.cls_token_num
        self.positions = torch.arange(c - 1, c + num_tokens - 1, device=device)  # step t feeds position c + t - 1
        self.scales = torch.tensor([1.0 if s is None else s for s in plan], dtype=torch.float32, device=device)
        self.guided = torch.tensor([s is not None for s in plan], device=device)  # (L,) bool
        rows = 2 * b if sampling.use_cfg else b
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # the step's buffers, refilled per step
        self.x = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.scale = torch.ones((), dtype=torch.float32, device=device)
        self.flag = torch.ones((), dtype=torch.bool, device=device)
        self.noise_buf = torch.ones(b, gpt.config.vocab_size, dtype=torch.float32, device=device)
        self.step_fn = self.step
        if compile:
            mode = "reduce-overhead" if device.type == "cuda" and not cuda_graphs else None
            self.step_fn = torch.compile(self.step, mode=mode, fullgraph=True)

    def step(self, pos: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, flag: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        """(1,) position, (R, 1) codes in, () scale and flag, (B, K) noise -> (B, 1) drawn codes."""
        logits = self.gpt.forward_cached(pos, codes=x, kv_len=None)[:, -1]  # (R, K), masked full cache
        probs = self.sampling.probs(self.sampling.guide(logits, scale, flag))  # (B, K)
        return draw(probs, noise)

    def _load(self, t: int) -> None:
        """Fill the buffers for code t (device-to-device copies and the noise draw; nothing comes to the host)."""
        self.pos.copy_(self.positions[t:t + 1])
        self.x.copy_(_step_inputs(self.codes, t, self.sampling.use_cfg))
        self.scale.copy_(self.scales[t])
        self.flag.copy_(self.guided[t])
        self.noise_buf.exponential_(1, generator=self.sampling.generator)  # = exponential_noise's draw

    def decode(self) -> dict[str, Any]:
        num_tokens = self.codes.shape[1]
        if num_tokens == 1:
            return {"forwards": 1}
        graph = self._capture() if self.cuda_graphs else None
        for t in range(1, num_tokens):
            self._load(t)
            if graph is not None:
                graph.replay()
                self.codes[:, t:t + 1] = self.out
            else:
                self.codes[:, t:t + 1] = self.step_fn(self.pos, self.x, self.scale, self.flag, self.noise_buf)
        return {"forwards": num_tokens}

    def _capture(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (allocator, cuBLAS), then capture one step reading and writing the buffers.

        The warm-up runs the step for code 1 with its real inputs but without drawing noise: it only writes the
        cache slot that the first replayed step writes again with the same values."""
        self.pos.copy_(self.positions[1:2])
        self.x.copy_(_step_inputs(self.codes, 1, self.sampling.use_cfg))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step_fn(self.pos, self.x, self.scale, self.flag, self.noise_buf)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self.step_fn(self.pos, self.x, self.scale, self.flag, self.noise_buf)  # (B, 1), graph memory
        return graph


def _sjd_decode(gpt: GPT, cond: torch.Tensor, codes: torch.Tensor, plan: list[float | None], sampling: _Sampling,
                window: int, fixed_noise: bool = True) -> dict[str, Any]:
    """Speculative Jacobi decoding of all L codes; the first pass is also the prefill (class token + drafts).

    Every code has a draft with a known draft distribution q: at first uniform random codes (q = 1/K); later the
    model's own prediction from a pass whose context held earlier drafts (the Jacobi update). A pass feeds the last
    final code and the drafts after it (W positions; the first pass: the class token and W - 1 drafts) and gets the
    exact distribution p of the first open code n given the final prefix, and of each later code given the drafts
    before it. Drafts are checked in order: accepted with probability min(1, p(x) / q(x)); at the first rejection the
    code is drawn from max(0, p - q) (renormalised), which makes every final code distributed exactly as p
    (speculative sampling, Leviathan et al. 2023). The codes after it take new drafts from this pass's predictions.
    Each pass finalises at least one code.

    Redrawing those drafts with new noise every pass (the SJD paper) keeps them jumping even where the predictions
    barely change. With `fixed_noise` each code k keeps one Exp(1) noise vector E_k from when it enters the window,
    and its draft is argmax(q_k / E_k) (the exponential race, an exact draw from q_k): drafts then settle wherever
    the context has settled, like greedy Jacobi decoding. Still exact: E_k only ever feeds the drafts of code k,
    which influence later codes only, and code k is verified once; everything that decides when it is verified
    and which q_k it has lies before k, so E_k is fresh to that check and the draft is distributed as q_k.

    Rows advance in lockstep from the smallest final count n among them; codes a row has already finalised beyond
    n are fed again and kept. The cache slots of rejected drafts are overwritten by the next pass, which starts at
    the last final code (attention there is masked to the filled prefix plus the causal window).

    Args:
        cond: (R,) labels ([cond; null] with guidance). codes: (B, L) int64, overwritten with the result.
    """
    cfg = gpt.config
    c, k = cfg.cls_token_num, cfg.vocab_size
    (b, num_tokens), device = codes.shape, codes.device
    gen = sampling.generator
    positions = torch.arange(c + num_tokens, device=device)  # class token(s) 0 .. c - 1, code t at c + t
    scales = torch.tensor([1.0 if s is None else s for s in plan], dtype=torch.float32, device=device)  # (L,)
    guided = torch.tensor([s is not None for s in plan], device=device)  # (L,) bool
    rows = torch.arange(b, device=device)
    codes.copy_(torch.randint(k, (b, num_tokens), generator=gen, device=device))  # initial drafts, q = 1 / K
    # Draft distributions q (and with fixed noise the draft noise e) of codes n .. n + W - 1 live in a 2W-slot buffer
    # that the window slides through (slot = code - base), moved back to its front only when it reaches the end, so
    # a pass appends nothing: slots ahead of the window still hold their initial q = 1 / K.
    q_buf = torch.full((b, 2 * window, k), 1.0 / k, device=device)
    e_buf = torch.empty((b, 2 * window, k), device=device) if fixed_noise else None
    if fixed_noise:
        e_buf[:, :window].exponential_(1, generator=gen)  # the fixed noise of the first W codes
    base = 0
    # The bookkeeping of who accepted what runs on the host from the one read-back per pass (the acceptance tests,
    # (B, T) bools): at batch 1 the pass is overhead-bound, and this keeps its tensor ops to about 30.
    final = [0] * b  # codes < final[r] are final in row r
    n, forwards, verified, accepted = 0, 0, 0, 0
    while n < num_tokens:
        t = min(window, num_tokens - n)  # codes n .. n + t - 1 are predicted by this pass
        if n == 0:  # prefill: class token(s), then the drafts of codes 0 .. t - 2
            x = codes[:, :t - 1]  # (B, T - 1)
            x = torch.cat([x, x]) if sampling.use_cfg else x  # (R, T - 1)
            logits = gpt.forward_cached(positions[:c + t - 1], codes=x if t > 1 else None, labels=cond,
                                        kv_len=c + t - 1)[:, c - 1:]  # (R, T, K) from the last class position on
        else:  # the last final code, then the drafts of codes n .. n + t - 2
            x = codes[:, n - 1:n - 1 + t]  # (B, T)
            x = torch.cat([x, x]) if sampling.use_cfg else x  # (R, T)
            logits = gpt.forward_cached(positions[c + n - 1:c + n - 1 + t], codes=x, kv_len=c + n - 1 + t)
        forwards += 1
        window_plan = set(plan[n:n + t])
        if len(window_plan) == 1:  # one scale (or none) for the whole window: guide with a number
            guided_logits = sampling.guide(logits, window_plan.pop())
        else:
            guided_logits = sampling.guide(logits, scales[n:n + t, None], guided[n:n + t, None])
        probs = sampling.probs(guided_logits)  # (B, T, K)
        q = q_buf[:, n - base:n - base + window]  # (B, W, K) views of the window's slots
        e = e_buf[:, n - base:n - base + window] if fixed_noise else None
        drafts, q_win = codes[:, n:n + t], q[:, :t]  # (B, T), (B, T, K)
        p_d = probs.gather(-1, drafts[..., None])  # (B, T, 1)
        q_d = q_win.gather(-1, drafts[..., None])
        u = torch.rand((b, t), generator=gen, device=device)
        ok = (u[..., None] * q_d < p_d).view(b, t).tolist()  # accept with probability min(1, p / q)
        # Per row: the first rejected draft (t: none), counting codes final in an earlier pass as accepted.
        first_bad = [next((j for j in range(t) if not (ok[r][j] or n + j < final[r])), t) for r in range(b)]
        noise_fix = sampling.noise((b, k), device)  # drawn before the Jacobi noise, whatever the rows need
        noise = e[:, :t] if fixed_noise else sampling.noise(probs.shape, device)
        if len(set(first_bad)) == 1:  # every row stops at the same draft (always at batch 1): slices, no masks
            j = first_bad[0]
            if j < t:  # the rejected draft is redrawn from max(0, p - q), renormalised (p where that is all 0)
                residual = (probs[:, j] - q_win[:, j]).clamp(min=0)  # (B, K)
                residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, probs[:, j])
                codes[:, n + j:n + j + 1] = draw(residual, noise_fix)
            codes[:, n + j + 1:n + t] = draw(probs[:, j + 1:], noise[:, j + 1:])[..., 0]  # Jacobi update of later
            q[:, j + 1:t] = probs[:, j + 1:]  # drafts, and their draft distributions
        else:
            at_t = torch.tensor([min(j, t - 1) for j in first_bad], device=device)
            p_at, q_at = probs[rows, at_t], q_win[rows, at_t]  # (B, K) at the first rejection
            residual = (p_at - q_at).clamp(min=0)
            residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_at)
            fix = draw(residual, noise_fix)  # (B, 1)
            fresh = draw(probs, noise)[..., 0]  # (B, T) Jacobi update of later drafts
            # masks[0]: later than the first rejection (new drafts); masks[1]: the rejected draft (resampled)
            masks = torch.tensor([[[j > first_bad[r] for j in range(t)] for r in range(b)],
                                  [[j == first_bad[r] for j in range(t)] for r in range(b)]], device=device)
            codes[:, n:n + t] = torch.where(masks[0], fresh, torch.where(masks[1], fix, drafts))
            q[:, :t] = torch.where(masks[0, ..., None], probs, q_win)
        new_final = [n + min(j + 1, t) for j in first_bad]
        for r in range(b):
            checked = new_final[r] - max(final[r], n)  # drafts verified in row r
            verified += checked
            accepted += checked - (first_bad[r] < t)
        final = new_final
        step = min(final) - n  # rows advance in lockstep from the slowest
        n += step
        if n - base + window > 2 * window:  # the window would leave the buffer: move its live slots to the front
            live = window - step
            q_buf[:, :live] = q_buf[:, n - base:n - base + live]  # no overlap: n - base > W >= live
            q_buf[:, live:] = 1.0 / k
            if fixed_noise:
                e_buf[:, :live] = e_buf[:, n - base:n - base + live]
            base = n
        if fixed_noise:  # the codes entering the window get their noise
            e_buf[:, n - base + window - step:n - base + window].exponential_(1, generator=gen)
    return {"forwards": forwards, "iterations": forwards,
            "acceptance_rate": accepted / verified if verified else 0.0}
