"""Metrics logging: metrics.jsonl content, rank-0 gating, optional sinks, cross-rank mean, non-finite guard."""
from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gigatok.infra.logging as metrics_logging
from gigatok.infra.logging import MetricsLogger, NonFiniteGuard, reduce_metrics


@pytest.fixture
def fresh_gigatok_logger():
    """No handlers on the `gigatok` logger before and after (other tests may have configured it)."""
    def clear() -> None:
        logger = logging.getLogger("gigatok")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    clear()
    yield
    clear()


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_console_and_resume_append(tmp_path, fresh_gigatok_logger):
    with MetricsLogger(tmp_path) as logger:
        logger.log(100, {"train/loss": torch.tensor(0.5), "train/lr": 1e-4, "train/skipped_steps": 0})
        logger.log(200, {"train/loss": float("nan"), "train/lr": 2e-4}, console=False)
    with MetricsLogger(tmp_path) as logger:  # a resumed run appends to the same file
        logger.log(300, {"train/loss": 0.25})
    rows = _read_jsonl(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 100, "train/loss": 0.5, "train/lr": 1e-4, "train/skipped_steps": 0},
                    {"step": 200, "train/loss": None, "train/lr": 2e-4},  # NaN -> null: strict JSON
                    {"step": 300, "train/loss": 0.25}]
    text = (tmp_path / "log.txt").read_text()
    assert "(step=0000100) train/loss=0.5 train/lr=0.0001" in text and "step=0000200" not in text


def test_other_ranks_write_nothing(tmp_path, monkeypatch, fresh_gigatok_logger):
    monkeypatch.setattr(metrics_logging, "is_main_process", lambda: False)
    logger = MetricsLogger(tmp_path / "run", use_tensorboard=True, wandb_mode="online")  # sinks never opened
    logger.log(1, {"train/loss": 1.0})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_optional_sinks_fail_with_clear_message(tmp_path, fresh_gigatok_logger):
    with pytest.raises(ValueError, match="unknown wandb mode"):
        MetricsLogger(tmp_path, wandb_mode="yes")
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ValueError, match="pip install wandb"):
            MetricsLogger(tmp_path, wandb_mode="offline")
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            MetricsLogger(tmp_path, use_tensorboard=True)
    else:
        with MetricsLogger(tmp_path, use_tensorboard=True) as logger:
            logger.log(1, {"train/loss": 1.0})
        assert any((tmp_path / "tensorboard").iterdir())


def test_reduce_metrics_single_process():
    out = reduce_metrics({"b": torch.tensor(2.0, dtype=torch.bfloat16), "a": 3, "c": torch.tensor([1.0, 3.0])})
    assert out == {"a": 3.0, "b": 2.0, "c": 2.0} and all(isinstance(v, float) for v in out.values())
    assert reduce_metrics({}) == {}


def test_non_finite_guard():
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.check(torch.tensor(1.0), step=0) is False
    assert guard.check(torch.tensor(float("nan")), step=1) is True
    assert guard.check(float("inf"), step=2) is True
    assert guard.check(torch.tensor(0.3), step=3) is False  # a finite step resets the run ...
    assert (guard.consecutive, guard.num_skipped) == (0, 2)  # ... but not the total
    guard.check(torch.tensor(float("nan")), step=4)
    guard.check(torch.tensor(float("nan")), step=5)
    with pytest.raises(RuntimeError) as err:
        guard.check(torch.tensor(float("-inf")), step=6)
    message = str(err.value)
    assert "3 consecutive steps" in message and "step 6" in message and "5 steps skipped in total" in message
    assert "lower learning rate" in message and "bf16 instead of fp16" in message and "data" in message
    restored = NonFiniteGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.num_skipped == 5
    with pytest.raises(RuntimeError):
        NonFiniteGuard(max_consecutive=0).check(torch.tensor(math.nan))


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    try:
        # Keys in a different order on each rank: the reduction sorts them.
        local = {"loss": torch.tensor(float(rank + 1)), "acc": 0.5 * rank} if rank == 0 else \
                {"acc": 0.5 * rank, "loss": torch.tensor(float(rank + 1))}
        assert reduce_metrics(local) == {"acc": 0.25, "loss": 1.5}
        guard = NonFiniteGuard(max_consecutive=5)
        # NaN on rank 1 only: both ranks must skip (or DDP would hang in backward).
        assert guard.check(torch.tensor(float("nan") if rank == 1 else 1.0), step=7) is True
        assert guard.check(torch.tensor(1.0), step=8) is False
        with MetricsLogger(run_dir) as logger:
            logger.log(8, {"train/loss": 1.5, "rank": rank})
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_reduce_guard_and_gating(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    assert _read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 8, "train/loss": 1.5, "rank": 0}]
