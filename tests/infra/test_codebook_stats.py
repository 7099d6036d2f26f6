"""Codebook usage statistics: the formulas, the rolling window, cumulative counts, and the cross-rank sum."""
from __future__ import annotations

import datetime
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gigatok.infra.codebook_stats import CodebookUsageTracker, compute_codebook_stats


def test_compute_codebook_stats_formulas():
    stats = compute_codebook_stats(torch.tensor([2, 2, 0, 0]))
    assert stats == pytest.approx({"usage": 0.5, "perplexity": 2.0, "dead_codes": 2.0})
    uniform = compute_codebook_stats(torch.ones(16384, dtype=torch.int64))
    assert uniform["perplexity"] == pytest.approx(16384) and uniform["dead_codes"] == 0 and uniform["usage"] == 1
    skewed = compute_codebook_stats(torch.tensor([3, 1]))
    assert skewed["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert compute_codebook_stats(torch.zeros(8)) == {"usage": 0.0, "perplexity": 0.0, "dead_codes": 8.0}


def test_window_and_cumulative():
    tracker = CodebookUsageTracker(codebook_size=8, window=2)
    tracker.update(torch.tensor([[0, 0], [1, 1]]))  # (B, L) codes
    tracker.update(torch.tensor([[2, 3]]))
    tracker.update(torch.tensor([[4, 4, 4, 4]]))    # the first batch falls out of the window
    stats = tracker.compute("codebook/")
    assert stats["codebook/usage"] == pytest.approx(3 / 8)          # codes {2, 3, 4}
    assert stats["codebook/dead_codes"] == 5
    assert stats["codebook/usage_cumulative"] == pytest.approx(5 / 8)  # codes {0, ..., 4}
    assert stats["codebook/dead_codes_cumulative"] == 3
    assert tracker.cumulative.tolist() == [2, 2, 1, 1, 4, 0, 0, 0]
    assert set(CodebookUsageTracker(8).compute()) == {"usage", "perplexity", "dead_codes", "usage_cumulative",
                                                      "perplexity_cumulative", "dead_codes_cumulative"}


def test_state_round_trip_and_errors():
    tracker = CodebookUsageTracker(codebook_size=4)
    tracker.update(torch.tensor([0, 1, 1]))
    other = CodebookUsageTracker(codebook_size=4)
    other.load_state_dict(tracker.state_dict())
    assert other.cumulative.tolist() == [1, 2, 0, 0] and other.num_updates == 1
    with pytest.raises(ValueError, match="shape"):
        CodebookUsageTracker(codebook_size=5).load_state_dict(tracker.state_dict())
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        tracker.update(torch.tensor([4]))
    with pytest.raises(RuntimeError):
        tracker.update(torch.tensor([-1]))
    with pytest.raises(ValueError):
        CodebookUsageTracker(codebook_size=4, window=0)


def _worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    try:
        tracker = CodebookUsageTracker(codebook_size=8, window=4)
        # Different batch sizes per rank: histograms are summed, so that does not matter.
        tracker.update(torch.tensor([[0, 1]]) if rank == 0 else torch.tensor([[2, 3], [3, 3]]))
        stats = tracker.compute()
        assert stats["usage"] == 0.5 and stats["dead_codes"] == 4  # {0, 1, 2, 3} over both ranks
        assert tracker.cumulative.tolist() == [1, 1, 1, 3, 0, 0, 0, 0]
        local = CodebookUsageTracker(codebook_size=8, sync=False)
        local.update(torch.tensor([[0, 1]]) if rank == 0 else torch.tensor([[2, 3], [3, 3]]))
        assert local.compute()["usage"] == 0.25
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_sum_over_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port), nprocs=2, join=True)
