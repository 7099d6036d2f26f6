"""Training checkpoints: atomic writes, finding the latest good file, full round trip incl. RNG, wrappers, retention."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gigatok.config import TrainerConfig
from gigatok.data.sampler import ResumableDistributedSampler
from gigatok.infra.checkpoint import CheckpointError, read_checkpoint
from gigatok.infra.ema import EMA
from gigatok.infra.parallel import unwrap
from gigatok.infra.run_state import (
    CHECKPOINT_VERSION,
    CheckpointManager,
    checkpoint_path,
    find_latest_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    prune_checkpoints,
    restore_rng,
)
from gigatok.infra.states import (
    ConstState,
    EMAState,
    ModelState,
    OptimizerState,
    SamplerState,
    ScalerState,
    ValueState,
)


def _manager(run_dir, *, model, ema=None, optimizer=None, discriminator=None, optimizer_disc=None, scaler=None,
             sampler=None, config=None, extra=None, data_state=None) -> CheckpointManager:
    """A manager over the given objects, under the entry names the trainers use."""
    states = {"model": ModelState(model)}
    if ema is not None:
        states["ema"] = EMAState(ema, model)
    if optimizer is not None:
        states["optimizer"] = OptimizerState(optimizer, model)
    if discriminator is not None:
        states["discriminator"] = ModelState(discriminator, "discriminator", required=False)
    if optimizer_disc is not None:
        states["optimizer_disc"] = OptimizerState(optimizer_disc, discriminator, "optimizer_disc")
    if scaler is not None:
        states["scaler"] = ScalerState(scaler)
    if sampler is not None:
        states["data_state"] = SamplerState(sampler, steps_per_epoch=10)
    if data_state is not None:
        states["data_state"] = ValueState(lambda: data_state, lambda value: None)
    states.update({f"extra.{k}": ConstState(v) for k, v in (extra or {}).items()})
    return CheckpointManager(run_dir, states, config)


def save_training_checkpoint(run_dir, step, **objects) -> Path:
    return _manager(run_dir, **objects).save(step)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _warnings_of(name: str):
    """Messages logged on `name`, with a handler on that logger itself (the `gigatok` logger may not propagate)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _draws() -> tuple:
    """One number from each generator a training run uses."""
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _trained(seed: int = 0) -> tuple[Net, Net, torch.optim.Optimizer, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model, disc = Net(), Net()
    opt, opt_d = torch.optim.AdamW(model.parameters(), lr=1e-3), torch.optim.AdamW(disc.parameters(), lr=1e-3)
    for _ in range(2):  # non-empty optimizer states (exp_avg, step)
        for m, o in ((model, opt), (disc, opt_d)):
            o.zero_grad()
            m(torch.randn(5, 4)).square().mean().backward()
            o.step()
    return model, disc, opt, opt_d


def _save_all(run_dir: Path, step: int, model, disc, opt, opt_d, ema, scaler, sampler) -> Path:
    return save_training_checkpoint(
        run_dir, step, model=model, ema=ema, optimizer=opt, discriminator=disc, optimizer_disc=opt_d,
        scaler=scaler, sampler=sampler, config=TrainerConfig(lr=3e-4),
        extra={"guard": {"num_skipped": 2, "consecutive": 0}, "note": "hello"})


def test_round_trip_every_entry(tmp_path):
    model, disc, opt, opt_d = _trained()
    ema = EMA(model, decay=0.5)
    ema.update(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sampler = ResumableDistributedSampler(list(range(50)), seed=1)
    sampler.set_epoch(3)
    sampler.advance(12)
    path = _save_all(tmp_path, 1234, model, disc, opt, opt_d, ema, scaler, sampler)
    expected_draws = _draws()  # what the run would draw right after the save

    assert path == tmp_path / "checkpoints" / "0001234.pt" == checkpoint_path(tmp_path, 1234)
    ckpt = load_training_checkpoint(path)
    assert ckpt["version"] == CHECKPOINT_VERSION and ckpt["step"] == ckpt["steps"] == 1234
    assert set(ckpt) == {"version", "step", "steps", "model", "ema", "optimizer", "discriminator", "optimizer_disc",
                         "scaler", "rng", "world_size", "data_state", "config", "extra"}
    assert ckpt["config"]["lr"] == 3e-4 and ckpt["extra"]["note"] == "hello" and ckpt["world_size"] == 1
    assert read_checkpoint(path)["model"].keys() == model.state_dict().keys()  # weights_only-safe file

    torch.manual_seed(99)
    model2, disc2, opt2, opt_d2 = _trained(seed=5)
    ema2, scaler2 = EMA(model2), torch.amp.GradScaler("cpu")
    sampler2 = ResumableDistributedSampler(list(range(50)), seed=1)
    step = _manager(tmp_path, model=model2, ema=ema2, optimizer=opt2, discriminator=disc2, optimizer_disc=opt_d2,
                    scaler=scaler2, sampler=sampler2).restore(ckpt, with_rng=False)
    assert step == 1234 and ema2.num_updates == 1234
    for a, b in ((model, model2), (disc, disc2), (ema.module, ema2.module)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert str(opt.state_dict()) == str(opt2.state_dict()) and str(opt_d.state_dict()) == str(opt_d2.state_dict())
    assert scaler2.get_scale() == 1024.0
    assert (sampler2.epoch, sampler2.position) == (3, 12)

    random.seed(7), np.random.seed(7), torch.manual_seed(7)  # a fresh process seeds itself ...
    assert restore_rng(ckpt) is True  # ... then resumes the saved streams
    assert _draws() == expected_draws


def test_wrapped_models_save_prefix_free_keys(tmp_path):
    model = Net()
    bare_keys = list(model.state_dict())
    compiled = torch.compile(model)  # the wrapper only; nothing is compiled without a forward
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap(compiled) is model
    port = _free_port()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    try:
        ddp = nn.parallel.DistributedDataParallel(torch.compile(model))
        assert unwrap(ddp) is model
        ema = EMA(ddp)
        path = save_training_checkpoint(tmp_path, 5, model=ddp, ema=ema, discriminator=compiled)
    finally:
        dist.destroy_process_group()
    ckpt = load_training_checkpoint(path)
    assert list(ckpt["model"]) == list(ckpt["ema"]) == list(ckpt["discriminator"]) == bare_keys


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = Net()
    good = save_training_checkpoint(tmp_path, 100, model=model)
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the disk, then the process dies
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_training_checkpoint(tmp_path, 200, model=model)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt_dir = tmp_path / "checkpoints"
    assert not (ckpt_dir / "0000200.pt").exists() and not list(ckpt_dir.glob("*.tmp"))  # the writer cleaned up
    (ckpt_dir / "0000200.pt.tmp").write_bytes(b"PK\x03\x04 half a zip file")  # what a kill -9 would leave
    assert find_latest_checkpoint(tmp_path) == good
    assert load_training_checkpoint(good)["step"] == 100

    # A corrupt newest file (e.g. copied half-way by hand): warn and fall back to the previous one.
    (ckpt_dir / "0000300.pt").write_bytes(good.read_bytes()[:200])
    with _warnings_of("gigatok.infra.run_state") as records:
        assert find_latest_checkpoint(tmp_path) == good
    assert len(records) == 1 and "0000300.pt" in records[0].getMessage()
    assert find_latest_checkpoint(tmp_path / "nothing_here") is None
    with pytest.raises(CheckpointError):
        load_training_checkpoint(ckpt_dir / "0000300.pt")


def test_rejects_unsafe_values_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"'extra'\['when'\]"):
        save_training_checkpoint(tmp_path, 1, model=Net(), extra={"when": datetime.datetime.now()})
    with pytest.raises(TypeError, match=r"'data_state'\['position'\] is a int64"):
        save_training_checkpoint(tmp_path, 1, model=Net(), data_state={"position": np.int64(3)})
    with pytest.raises(TypeError, match=r"'config'\['when'\]"):
        save_training_checkpoint(tmp_path, 1, model=Net(), config={"when": datetime.datetime.now()})
    assert list_checkpoints(tmp_path / "checkpoints") == []


def test_official_checkpoint_resumes_without_rng(tmp_path):
    model, _, opt, _ = _trained()
    path = tmp_path / "0005000.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "steps": 5000,
                "args": argparse.Namespace(lr=1e-4)}, path)
    assert find_latest_checkpoint(tmp_path) == path  # a folder of official files works too
    ckpt = load_training_checkpoint(path)
    assert ckpt["step"] == 5000
    model2, ema2 = Net(), None
    ema2 = EMA(model2)
    sampler = ResumableDistributedSampler(list(range(50)), seed=1)
    with _warnings_of("gigatok.infra.states") as records:
        step = _manager(tmp_path, model=model2, ema=ema2, optimizer=torch.optim.AdamW(model2.parameters()),
                        sampler=sampler).restore(ckpt, with_rng=False)
    assert step == 5000 and sampler.epoch == 500  # no data position: the epoch the step falls in, from its start
    assert torch.equal(ema2.module.layers[0].weight, model.layers[0].weight)  # no EMA: restarts from the weights
    assert any("no 'ema' entry" in r.getMessage() for r in records)
    with _warnings_of("gigatok.infra.run_state") as records:
        assert restore_rng(ckpt) is False
    assert "no RNG states" in records[0].getMessage()


def _touch(ckpt_dir: Path, steps: list[int]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for s in steps:
        (ckpt_dir / f"{s:07d}.pt").write_bytes(b"x")


def _steps(ckpt_dir: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(ckpt_dir)]


def test_retention_official_example(tmp_path):
    # The example of the official manage_ckpt_num docstring test: milestones every 100k from 100k, keep 2.
    _touch(tmp_path, [10_000, 20_000, 30_000, 100_000, 200_000, 300_000, 400_000, 500_000, 600_000,
                      610_000, 620_000, 630_000])
    deleted = prune_checkpoints(tmp_path, keep_last=10, milestone_every=100_000, milestone_start=100_000,
                                max_milestones=2)
    assert len(deleted) == 7
    assert _steps(tmp_path) == [500_000, 600_000, 610_000, 620_000, 630_000]


def test_retention_keeps_last_n_and_milestones(tmp_path):
    _touch(tmp_path, list(range(5_000, 130_000, 5_000)))
    (tmp_path / "0130000.pt.tmp").write_bytes(b"partial")
    prune_checkpoints(tmp_path, keep_last=3, milestone_every=50_000, milestone_start=50_000, max_milestones=30)
    # milestones 50k and 100k; non-milestones older than the newest milestone go; of the rest the last 3 stay
    assert _steps(tmp_path) == [50_000, 100_000, 115_000, 120_000, 125_000]
    assert not (tmp_path / "0130000.pt.tmp").exists()
    _touch(tmp_path, [150_000])
    prune_checkpoints(tmp_path, keep_last=3, max_milestones=1)
    assert _steps(tmp_path) == [150_000]  # newest is a milestone: older non-milestones superseded
    prune_checkpoints(tmp_path, keep_last=1, max_milestones=0)
    assert _steps(tmp_path) == [150_000]  # the newest checkpoint is never deleted
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=0)


def _rng_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))
    try:
        random.seed(rank), np.random.seed(rank), torch.manual_seed(rank)  # per-rank streams, as in training
        _draws()
        path = save_training_checkpoint(run_dir, 10, model=Net())  # collective; rank 0 writes
        expected = _draws()
        ckpt = load_training_checkpoint(path)
        assert len(ckpt["rng"]) == world and ckpt["world_size"] == world
        random.seed(100), np.random.seed(100), torch.manual_seed(100)
        assert restore_rng(ckpt)
        assert _draws() == expected, f"rank {rank} did not get its own RNG stream back"
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_rng_states_of_every_rank_two_process_gloo(tmp_path):
    mp.spawn(_rng_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ckpt = load_training_checkpoint(find_latest_checkpoint(tmp_path))
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])


def test_a_full_disk_keeps_the_previous_checkpoint_and_removes_the_partial_file(tmp_path, monkeypatch, capsys):
    from gigatok.infra.cli import run_stage
    from gigatok.infra.io import DiskFullError

    model = Net()
    good = save_training_checkpoint(tmp_path, 100, model=model)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(DiskFullError, match="no space left on the device while writing .*0000200.pt"):
        save_training_checkpoint(tmp_path, 200, model=model)
    assert list((tmp_path / "checkpoints").iterdir()) == [good]  # no partial file keeps the disk full
    with pytest.raises(SystemExit) as info:
        run_stage(lambda: save_training_checkpoint(tmp_path, 300, model=model))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert info.value.code == 2 and "Traceback" not in err
    assert last.startswith("error: no space left on the device") and "free some space" in last
    monkeypatch.setattr(torch, "save", real_save)
    assert save_training_checkpoint(tmp_path, 300, model=model).is_file()  # once space is free, it works
    assert find_latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 300)


def test_unreadable_checkpoints_are_set_aside_once_and_resume_from_goes_back(tmp_path, caplog):
    from gigatok.errors import UserError
    from gigatok.infra.run_state import divergence_advice, resume_from_step

    model = Net()
    for step in (10, 20, 30):
        save_training_checkpoint(tmp_path, step, model=model)
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "0000040.pt").write_bytes(b"PK\x03\x04 cut short")
    assert find_latest_checkpoint(tmp_path, quarantine=True) == ckpt_dir / "0000030.pt"
    assert (ckpt_dir / "bad" / "0000040.pt").is_file() and "unreadable" in (ckpt_dir / "bad" / "0000040.pt.why.txt"
                                                                           ).read_text()
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [10, 20, 30]  # not retried (and warned about) every resume
    with pytest.raises(UserError, match="no checkpoint of step 25"):
        resume_from_step([tmp_path], 25)
    resume_from_step([tmp_path], 10)
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [10]
    assert sorted(p.name for p in (ckpt_dir / "abandoned").glob("*.pt")) == ["0000020.pt", "0000030.pt"]
    assert "step 10" in divergence_advice([tmp_path], first_bad_step=12) and "--resume-from 10" in divergence_advice(
        [tmp_path], first_bad_step=12)
    assert "--resume-from 0" in divergence_advice([tmp_path], first_bad_step=5)


def test_a_refused_save_writes_nothing(tmp_path):
    manager = _manager(tmp_path, model=Net())
    manager.health = lambda: "the weights hold NaN/inf"
    assert manager.save(5) is None and list_checkpoints(tmp_path / "checkpoints") == []
    manager.health = lambda: None
    assert manager.save(5) == checkpoint_path(tmp_path, 5)
