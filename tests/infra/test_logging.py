"""Metrics logging: metrics.jsonl content, rank-0 gating, optional sinks, cross-rank mean, non-finite guard."""
from __future__ import annotations

import datetime
import importlib.machinery
import importlib.util
import json
import logging
import math
import socket
import sys
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gigatok.infra.logging as metrics_logging
from gigatok.config import GPTTrainConfig, VQConfig, load_config
from gigatok.errors import UserError
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


# -- W&B mode `auto` and TensorBoard, with stand-ins for the optional packages -----------------------------------------
class FakeWandb(types.ModuleType):
    """A stand-in `wandb` module that records the run it was asked for and what was logged to it."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # find_spec("wandb") finds it
        self.fail, self.inits, self.logged, self.finished = fail, [], [], 0
        self.util = types.SimpleNamespace(generate_id=lambda: "run123")

    def init(self, **kwargs):
        if self.fail:
            raise ConnectionError("api.wandb.ai unreachable")
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda values, step: self.logged.append((step, values)),
                                     finish=self._finish)

    def _finish(self) -> None:
        self.finished += 1


class FakeSummaryWriter:
    """A stand-in `torch.utils.tensorboard.SummaryWriter`: records every scalar."""

    writers: list[FakeSummaryWriter] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeSummaryWriter.writers.append(self)

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        self.scalars.append((global_step, tag, value))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    """An environment with no W&B key anywhere: empty HOME, no WANDB_* variables, no netrc."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def fake_tensorboard(monkeypatch):
    """`tensorboard` importable and `torch.utils.tensorboard.SummaryWriter` = FakeSummaryWriter."""
    FakeSummaryWriter.writers = []
    package = types.ModuleType("tensorboard")
    package.__spec__ = importlib.machinery.ModuleSpec("tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard", package)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    return FakeSummaryWriter


def _note_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "W&B logging is off" in r.getMessage()]


def test_auto_wandb_is_off_with_one_line_when_wandb_is_missing(tmp_path, monkeypatch, caplog, no_wandb_key,
                                                                fresh_gigatok_logger):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed (find_spec returns None, import fails)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a key alone does not help without the package
    caplog.set_level(logging.INFO, logger="gigatok")
    # A handler already there: MetricsLogger then leaves the logger as it is (its setup_logging would stop the
    # propagation to caplog's root handler).
    logging.getLogger("gigatok").addHandler(logging.NullHandler())
    assert metrics_logging.resolve_wandb_mode("auto") == "disabled"
    (note,) = _note_lines(caplog)
    assert "wandb package is not installed" in note
    assert "pip install wandb && wandb login" in note and "--wandb-mode online" in note
    caplog.clear()
    with MetricsLogger(tmp_path, wandb_mode="auto") as logger:
        logger.log(1, {"train/loss": 1.0})
    assert len(_note_lines(caplog)) == 1 and not (tmp_path / "wandb").exists()
    assert _read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 1.0}]
    # Explicit modes keep insisting: a clear user error before any work.
    for mode in ("online", "offline"):
        with pytest.raises(UserError, match=r"pip install wandb"):
            metrics_logging.check_logging_setup(mode)
    metrics_logging.check_logging_setup("auto")  # auto and disabled never refuse
    metrics_logging.check_logging_setup("disabled")
    with pytest.raises(UserError, match="unknown wandb mode"):
        metrics_logging.check_logging_setup("on")


def test_auto_wandb_follows_the_login_found_offline(tmp_path, monkeypatch, caplog, no_wandb_key):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb())
    caplog.set_level(logging.INFO, logger="gigatok")
    # A handler already there: MetricsLogger then leaves the logger as it is (its setup_logging would stop the
    # propagation to caplog's root handler).
    logging.getLogger("gigatok").addHandler(logging.NullHandler())
    assert metrics_logging.resolve_wandb_mode("auto") == "disabled"  # installed, never logged in
    (note,) = _note_lines(caplog)
    assert "no W&B API key" in note and "pip install wandb && wandb login" in note
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert metrics_logging.resolve_wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    # `wandb login` writes the key to ~/.netrc for the W&B host; another host's entry does not count.
    netrc_file = no_wandb_key / ".netrc"
    netrc_file.write_text("machine example.org\n  login user\n  password secret\n")
    netrc_file.chmod(0o600)
    assert metrics_logging.resolve_wandb_mode("auto") == "disabled"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert metrics_logging.resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mycompany.com")  # a private server needs its own key
    assert metrics_logging.resolve_wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_BASE_URL")
    monkeypatch.setenv("WANDB_MODE", "offline")  # wandb's own switch is honoured
    assert metrics_logging.resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert metrics_logging.resolve_wandb_mode("auto") == "disabled"
    assert metrics_logging.resolve_wandb_mode("online") == "online"  # explicit modes are not second-guessed


def test_auto_wandb_logs_to_the_run_and_survives_a_failed_start(tmp_path, monkeypatch, caplog, no_wandb_key,
                                                                 fresh_gigatok_logger):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    with MetricsLogger(tmp_path / "run", wandb_mode="auto", wandb_project="proj", wandb_name="run",
                       config={"trainer": {"lr": 1e-4}}) as logger:
        logger.log(10, {"train/loss": 0.5, "train/lr": float("nan")})
    (init,) = wandb.inits
    assert init["mode"] == "online" and init["project"] == "proj" and init["id"] == "run123"
    assert init["config"] == {"trainer": {"lr": 1e-4}}
    assert (tmp_path / "run" / "wandb_run_id.txt").read_text() == "run123"  # a resumed run continues it
    assert wandb.logged[0][0] == 10 and wandb.logged[0][1]["train/loss"] == 0.5
    assert math.isnan(wandb.logged[0][1]["train/lr"]) and wandb.finished == 1
    # auto: a W&B that cannot start (network, server) is a warning, the run goes on; explicit online stops.
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=True))
    caplog.set_level(logging.INFO, logger="gigatok")
    # A handler already there: MetricsLogger then leaves the logger as it is (its setup_logging would stop the
    # propagation to caplog's root handler).
    logging.getLogger("gigatok").addHandler(logging.NullHandler())
    logging.getLogger("gigatok").propagate = True  # the first MetricsLogger above configured it (no propagation)
    with MetricsLogger(tmp_path / "flaky", wandb_mode="auto") as logger:
        logger.log(1, {"train/loss": 1.0})
    assert any("W&B could not start" in r.getMessage() for r in caplog.records)
    assert _read_jsonl(tmp_path / "flaky" / "metrics.jsonl") == [{"step": 1, "train/loss": 1.0}]
    with pytest.raises(ConnectionError):
        MetricsLogger(tmp_path / "strict", wandb_mode="online")
    assert not any(isinstance(h, logging.FileHandler) and "strict" in h.baseFilename
                   for h in logging.getLogger("gigatok").handlers)  # nothing left open


def test_tensorboard_gets_every_metric_of_metrics_jsonl(tmp_path, monkeypatch, fake_tensorboard,
                                                        fresh_gigatok_logger):
    with MetricsLogger(tmp_path, use_tensorboard=True) as logger:
        logger.log(5, {"train/loss": torch.tensor(0.25), "train/lr": 1e-4, "train/skipped_steps": 2})
        logger.log(10, {"train/loss": float("inf")})  # null in the JSON file: no TensorBoard point
    (writer,) = fake_tensorboard.writers
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.closed
    assert writer.scalars == [(5, "train/loss", 0.25), (5, "train/lr", 1e-4), (5, "train/skipped_steps", 2)]
    jsonl_names = {k for row in _read_jsonl(tmp_path / "metrics.jsonl") for k in row if k != "step"}
    assert {tag for _, tag, _ in writer.scalars} == jsonl_names
    metrics_logging.check_logging_setup("disabled", use_tensorboard=True)  # installed: accepted
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # installed but broken (a missing dependency)
    with pytest.raises(UserError, match=r"torch.utils.tensorboard cannot be imported .*pip install -U tensorboard"):
        MetricsLogger(tmp_path / "broken", use_tensorboard=True)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(UserError, match="pip install tensorboard"):
        metrics_logging.check_logging_setup("disabled", use_tensorboard=True)


def test_both_trainers_log_the_same_names_everywhere_without_wandb(tmp_path, monkeypatch, capsys, no_wandb_key,
                                                                   fake_tensorboard, one_thread):
    """The README's training commands with wandb not installed: both trainers run (W&B auto -> off, one line
    saying how to turn it on), and --tensorboard receives exactly the metrics of metrics.jsonl, under names the two
    trainers share."""
    from helpers import CONFIG, make_digit_folder, save_official_tokenizer

    from gigatok.stages.extract_codes import main as extract_main
    from gigatok.stages.train_c2i import main as train_c2i
    from gigatok.stages.train_vq import main as train_vq

    monkeypatch.setitem(sys.modules, "wandb", None)
    images = make_digit_folder(tmp_path / "digits", 8)
    train_vq(["--model-config", str(CONFIG), "--data-path", str(images), "--save-path", str(tmp_path / "runs"),
              "--sub-exp-dir", "vq", "--iterations", "2", "--global-batch-size", "4", "--log-every", "1",
              "--mixed-precision", "none", "--num-workers", "0", "--device", "cpu", "--tensorboard",
              "--perceptual-weight", "0", "--trainer.distill_loss=false", "--trainer.preview_every=0"])
    err_vq = capsys.readouterr().err
    codes = tmp_path / "codes"
    extract_main(["--data-path", str(images), "--code-path", str(codes), "--model-config", str(CONFIG),
                  "--vq-ckpt", str(save_official_tokenizer(tmp_path / "tok.pt")), "--num-workers", "0",
                  "--device", "cpu"])
    capsys.readouterr()
    train_c2i(["--code-path", str(codes), "--save-path", str(tmp_path / "runs"), "--sub-exp-dir", "gpt",
               "--gpt-model", "debug", "--num-workers", "0", "--device", "cpu", "--mixed-precision", "none",
               "--iterations", "2", "--global-batch-size", "4", "--log-every", "1", "--tensorboard"])
    err_gpt = capsys.readouterr().err
    names = {}
    for run, err, schema in (("vq", err_vq, VQConfig), ("gpt", err_gpt, GPTTrainConfig)):
        run_dir = tmp_path / "runs" / run
        assert err.count("W&B logging is off (--wandb-mode auto: the wandb package is not installed)") == 1, run
        assert "pip install wandb && wandb login" in err
        saved = load_config(run_dir / "config.yaml", schema=schema)
        assert saved.trainer.wandb_mode == "auto" and saved.trainer.tensorboard is True
        (writer,) = [w for w in fake_tensorboard.writers if w.log_dir == str(run_dir / "tensorboard")]
        rows = _read_jsonl(run_dir / "metrics.jsonl")
        assert sorted({s for s, _, _ in writer.scalars}) == [row["step"] for row in rows] == [1, 2]
        assert {(s, tag) for s, tag, _ in writer.scalars} == {(row["step"], k) for row in rows for k in row
                                                              if k != "step" and row[k] is not None}
        names[run] = {tag for _, tag, _ in writer.scalars}
    shared = {"train/lr", "train/grad_norm", "train/epoch", "train/steps_per_s", "train/skipped_steps"}
    assert shared <= names["vq"] & names["gpt"], shared - (names["vq"] & names["gpt"])
    assert all(name.startswith("train/") for name in names["vq"] | names["gpt"])
