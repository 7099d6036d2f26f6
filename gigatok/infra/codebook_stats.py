"""Codebook usage statistics for training logs: usage, perplexity and dead codes, windowed and cumulative.

Everything works on code histograms (K,) rather than on the codes themselves, so the cross-rank version is one
all-reduce of K counts per update, whatever the per-rank batch sizes. The rolling window covers the last
`window` updates (batches); the official tokenizer's `codebook_used` buffer is a window of the last 65,536 codes,
i.e. 256 images of 256 tokens (window=2 at a per-rank batch of 128, 1 rank). K is the tokenizer's codebook size,
implicit for lfq (2**Dc) and fsq (prod(levels)); above `SPARSE_WINDOW_ABOVE` codes the window is stored sparsely.

Definitions over a histogram n (K,) with N = sum(n):
    usage       = #{k : n_k > 0} / K                   fraction of codes hit at least once
    perplexity  = exp(-sum_k p_k log p_k), p = n / N   effective number of codes in use (1 ... K)
    dead_codes  = #{k : n_k = 0}
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import torch
import torch.distributed as dist

from gigatok.infra.dist import get_world_size

# Codebooks larger than this (implicit lfq / fsq codebooks, e.g. fsq 8^8 = 16.8M codes) keep the rolling window's
# histograms sparse; the cumulative counts stay one dense (K,) int64 tensor (134 MB at K = 8^8).
SPARSE_WINDOW_ABOVE = 2**18


def compute_codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """usage, perplexity and dead_codes of one histogram `counts` (K,) of non-negative counts.

    An empty histogram (no codes seen yet) gives usage 0, perplexity 0 and K dead codes.
    """
    counts = counts.detach().double()
    total = counts.sum()
    used = int((counts > 0).sum().item())
    if total <= 0:
        return {"usage": 0.0, "perplexity": 0.0, "dead_codes": float(counts.numel())}
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()  # 0 log 0 := 0 via the clamp (p=0 term is 0 * finite)
    return {"usage": used / counts.numel(), "perplexity": float(torch.exp(entropy).item()),
            "dead_codes": float(counts.numel() - used)}


class CodebookUsageTracker:
    """Accumulate code histograms from batches of codes and report windowed and cumulative statistics.

    Args:
        codebook_size: K.
        window: number of most recent `update` calls in the rolling window.
        sync: sum the histograms over ranks (one all-reduce of K int64 per update) when a process group exists;
            then every rank reports global statistics. Call `update` on every rank in that case (under NCCL
            with codes on the GPU).

    Usage: `tracker.update(codes)` every step; at log time `metrics.update(tracker.compute("codebook/"))`.
    """

    def __init__(self, codebook_size: int, window: int = 100, sync: bool = True) -> None:
        if codebook_size < 1 or window < 1:
            raise ValueError(f"codebook_size and window must be >= 1; got {codebook_size}, {window}")
        self.codebook_size = codebook_size
        self.window = window
        self.sync = sync
        # each update's histogram: (K,) counts, or (indices, counts) of its non-zero entries for large K
        self._recent: deque[torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = deque()
        self._window_counts: torch.Tensor | None = None
        self.cumulative = torch.zeros(codebook_size, dtype=torch.int64)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, codes: torch.Tensor) -> None:
        """Add one batch of codes: integer tensor of any shape, typically (B, L), values in [0, K)."""
        flat = codes.detach().reshape(-1).long()
        # bincount rejects negatives itself and grows past K for too-large codes, so the length check below
        # validates the range without an extra host sync.
        hist = torch.bincount(flat, minlength=self.codebook_size)  # (K,) int64 on the codes' device
        if hist.numel() != self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}); got a code {hist.numel() - 1}")
        if self.sync and dist.is_initialized() and get_world_size() > 1:
            dist.all_reduce(hist, op=dist.ReduceOp.SUM)
        if self._window_counts is None or self._window_counts.device != hist.device:
            self._window_counts = torch.zeros_like(hist)
            self._recent.clear()
        # Running window sum: add the newest histogram, subtract the one that falls out. Large (implicit lfq / fsq)
        # codebooks keep each histogram as its non-zero entries: `window` dense copies of K = 8**8 counts would
        # take 13 GB (the nonzero costs one host sync per update, only there).
        self._window_counts += hist
        if self.codebook_size > SPARSE_WINDOW_ABOVE:
            used = hist.nonzero().squeeze(1)
            self._recent.append((used, hist[used]))
        else:
            self._recent.append(hist)
        if len(self._recent) > self.window:
            oldest = self._recent.popleft()
            if isinstance(oldest, tuple):
                self._window_counts.index_add_(0, oldest[0], -oldest[1])
            else:
                self._window_counts -= oldest
        self.cumulative = self.cumulative.to(hist.device)  # no-op after the first update
        self.cumulative += hist
        self.num_updates += 1

    def compute(self, prefix: str = "") -> dict[str, float]:
        """Windowed and cumulative statistics as `{prefix}usage`, `{prefix}perplexity`, `{prefix}dead_codes`,
        `{prefix}usage_cumulative`, `{prefix}perplexity_cumulative`, `{prefix}dead_codes_cumulative`."""
        window = self._window_counts if self._window_counts is not None else torch.zeros(self.codebook_size)
        stats = {f"{prefix}{k}": v for k, v in compute_codebook_stats(window).items()}
        stats.update({f"{prefix}{k}_cumulative": v for k, v in compute_codebook_stats(self.cumulative).items()})
        return stats

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Cumulative counts (the rolling window restarts on resume; it refills within `window` steps)."""
        return {"cumulative": self.cumulative.cpu().clone(), "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, torch.Tensor | int]) -> None:
        cumulative = state["cumulative"]
        if not isinstance(cumulative, torch.Tensor) or cumulative.shape != (self.codebook_size,):
            raise ValueError(f"codebook stats state holds counts of shape {getattr(cumulative, 'shape', None)}, "
                             f"expected ({self.codebook_size},)")
        self.cumulative = cumulative.to(torch.int64).cpu().clone()
        self.num_updates = int(state.get("num_updates", 0))
