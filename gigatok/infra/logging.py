"""Training metrics: cross-rank reduction, one logger for every sink, and a guard against non-finite losses.

- `reduce_metrics` averages a dict of scalars over ranks with ONE all-reduce (a no-op without a process group).
- `MetricsLogger` writes, on rank 0 only: the console and `log.txt` (through the `gigatok` logger of
  `dist.setup_logging`), `metrics.jsonl` (one JSON object per logged step), and optionally Weights & Biases and
  TensorBoard. Both are optional dependencies, imported only when asked for. On other ranks every method is a
  no-op, so the loop calls them unconditionally. Both trainers (and the probes) log through it, so every sink sees
  the same `train/<name>` metrics at the same steps.
- W&B mode `auto` (the trainers' default): on ("online") when wandb is installed and an API key is found without
  touching the network (`WANDB_API_KEY`, or the netrc entry `wandb login` writes), otherwise off with one log line
  that says how to turn it on. `online` / `offline` insist: a missing wandb package is an error.
- `check_logging_setup` refuses, before any work and on every rank, sinks whose package is missing.
- `NonFiniteGuard` decides, identically on all ranks, whether to skip a step with a NaN/inf loss, and stops the
  run with an actionable error after too many in a row.
"""
from __future__ import annotations

import configparser
import importlib.util
import json
import logging
import math
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gigatok.errors import UserError
from gigatok.infra.dist import get_world_size, is_main_process, setup_logging
from gigatok.infra.io import write_text_atomic

logger = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")
WANDB_HOWTO = "to turn it on: `pip install wandb && wandb login`, or pass --wandb-mode online"


class LoggingSetupError(UserError, ValueError):
    """A logging sink was asked for but cannot work (unknown W&B mode, wandb or tensorboard not installed)."""


def _wandb_host() -> str:
    """The W&B server whose key counts: `WANDB_BASE_URL`, else the `base_url` of wandb's settings file, else
    api.wandb.ai."""
    url = os.environ.get("WANDB_BASE_URL")
    if not url:
        config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "wandb")
        settings = configparser.ConfigParser()
        try:
            settings.read(os.path.join(config_dir, "settings"))
            url = settings.get("default", "base_url", fallback=None)
        except configparser.Error:
            url = None
    url = url or "https://api.wandb.ai"
    return (url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]) or "api.wandb.ai"


def wandb_logged_in() -> bool:
    """True when a W&B API key is at hand, found without the network: `WANDB_API_KEY`, or an entry for the W&B host
    in the netrc file (`$NETRC`, else ~/.netrc or ~/_netrc) where `wandb login` stores it."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    home = os.path.expanduser("~")
    paths = [os.environ["NETRC"]] if os.environ.get("NETRC") else [os.path.join(home, n) for n in (".netrc", "_netrc")]
    host = _wandb_host()
    for path in paths:
        if not os.path.isfile(path):
            continue
        try:
            entry = netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            continue
        if entry and entry[2]:
            return True
    return False


def resolve_wandb_mode(mode: str) -> str:
    """The W&B mode to run with: `auto` becomes "online" (wandb installed and logged in), "offline" (installed and
    the environment says `WANDB_MODE=offline`) or "disabled" (with one log line that says how to turn it on); the
    other modes are returned as they are.

    Raises:
        LoggingSetupError: a mode outside `WANDB_MODES`.
    """
    if mode not in WANDB_MODES:
        raise LoggingSetupError(f"unknown wandb mode '{mode}': use one of {WANDB_MODES}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if importlib.util.find_spec("wandb") is None:
        why = "the wandb package is not installed"
    elif env == "disabled":
        why = "WANDB_MODE=disabled is set"
    elif env in ("offline", "dryrun"):
        return "offline"
    elif wandb_logged_in():
        return "online"
    else:
        why = f"no W&B API key was found (WANDB_API_KEY, or {_wandb_host()} in ~/.netrc)"
    logger.info(f"W&B logging is off (--wandb-mode auto: {why}); {WANDB_HOWTO}")
    return "disabled"


def check_logging_setup(wandb_mode: str, use_tensorboard: bool = False) -> None:
    """Refuse, before any work, sinks that cannot run: an unknown W&B mode, `online`/`offline` without the wandb
    package, TensorBoard without the tensorboard package. Call it on every rank, so that all of them stop.

    Raises:
        LoggingSetupError: with the command that fixes it.
    """
    if wandb_mode not in WANDB_MODES:
        raise LoggingSetupError(f"unknown wandb mode '{wandb_mode}': use one of {WANDB_MODES}")
    if wandb_mode in ("online", "offline") and importlib.util.find_spec("wandb") is None:
        raise LoggingSetupError(
            f"W&B logging was requested (--wandb-mode {wandb_mode}) but the 'wandb' package is not installed: "
            "`pip install wandb` (then `wandb login`), or use --wandb-mode auto / --no-wandb")
    if use_tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise LoggingSetupError(
            "TensorBoard logging was requested (--tensorboard) but the 'tensorboard' package is not installed: "
            "`pip install tensorboard`, or drop --tensorboard")


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drop the `metrics.jsonl` lines logged after `step` (rank 0 only): a resumed run redoes those steps and logs
    them again, so each step keeps one line. Cut-off lines (a kill in the middle of a write) go too."""
    path = Path(run_dir) / "metrics.jsonl"
    if not is_main_process() or not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except json.JSONDecodeError:  # empty, or cut off by a kill in the middle of a write
            continue
    write_text_atomic(path, "".join(kept))


def reduce_metrics(metrics: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Mean of each scalar over all ranks, as python floats (the values every rank then logs identically).

    Args:
        metrics: name -> 0-d tensor (any device/dtype, detached or not) or number. Every rank must pass the same
            names (order does not matter).

    Returns:
        name -> mean over ranks (the local value without a process group).
    """
    names = sorted(metrics)
    if not names:
        return {}
    tensors = [v for v in metrics.values() if isinstance(v, torch.Tensor)]
    if not dist.is_initialized() or get_world_size() == 1:
        return {k: float(metrics[k].detach().float().mean() if isinstance(metrics[k], torch.Tensor) else metrics[k])
                for k in names}
    if tensors:
        device = tensors[0].device
    elif dist.get_backend() == "nccl":  # plain numbers only: NCCL still needs them on the GPU
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    # One stacked float64 vector, one collective, one host sync for all metrics.
    packed = torch.stack([
        metrics[k].detach().to(device, torch.float64).mean() if isinstance(metrics[k], torch.Tensor)
        else torch.tensor(float(metrics[k]), device=device, dtype=torch.float64) for k in names])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    values = (packed / get_world_size()).tolist()
    return dict(zip(names, values))


def _json_value(value: Any) -> Any:
    """Floats as JSON numbers; NaN/inf as null (strict JSON has no NaN)."""
    value = float(value.detach().float().item()) if isinstance(value, torch.Tensor) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """One `log(step, metrics)` for the console, `log.txt`, `metrics.jsonl`, W&B and TensorBoard (rank 0 only).

    Args:
        run_dir: run directory; receives `metrics.jsonl` (appended to, so resumed runs continue the file),
            `log.txt` (if the `gigatok` logger is not configured yet, it is set up here with
            `setup_logging(run_dir)`), `tensorboard/` and `wandb/`.
        wandb_mode: "disabled" (default), "online", "offline" or "auto" (see `resolve_wandb_mode`; a W&B run that
            fails to start in auto mode is logged and skipped, in the other modes it is an error).
        wandb_project, wandb_name: W&B project and run name; the run id is kept in `run_dir/wandb_run_id.txt`
            so a resumed run continues the same W&B run.
        config: the resolved config (plain dict), attached to the W&B run.
        use_tensorboard: also write TensorBoard scalars to `run_dir/tensorboard`.

    Raises:
        LoggingSetupError: an unknown W&B mode; wandb / tensorboard requested but not installed.
    """

    def __init__(self, run_dir: str | os.PathLike, *, wandb_mode: str = "disabled", wandb_project: str = "gigatok",
                 wandb_name: str | None = None, config: Mapping[str, Any] | None = None,
                 use_tensorboard: bool = False) -> None:
        if wandb_mode not in WANDB_MODES:
            raise LoggingSetupError(f"unknown wandb mode '{wandb_mode}': use one of {WANDB_MODES}")
        self.run_dir = Path(run_dir)
        self.enabled = is_main_process()
        self._jsonl = None
        self._wandb = None
        self._tb = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        base = logging.getLogger("gigatok")
        if not base.handlers:
            setup_logging(self.run_dir)
        # The run's log.txt must exist whatever configured the logger before (an entry point, a previous run in
        # the same process): add a file handler for it unless one is already there; `close` removes ours.
        log_file = (self.run_dir / "log.txt").resolve()
        self._file_handler: logging.FileHandler | None = None
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_file for h in base.handlers):
            self._file_handler = logging.FileHandler(log_file)
            self._file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
            base.addHandler(self._file_handler)
            base.setLevel(logging.INFO)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        try:
            if use_tensorboard:
                self._tb = self._init_tensorboard()
            self._start_wandb(wandb_mode, wandb_project, wandb_name, config)
        except BaseException:
            self.close()  # nothing half-open is left behind (log.txt handler, metrics.jsonl, TensorBoard)
            raise

    def _start_wandb(self, wandb_mode: str, project: str, name: str | None, config: Mapping[str, Any] | None
                     ) -> None:
        """Open the W&B run of the resolved mode; in auto mode a W&B that fails to start (network, server) is
        logged and skipped, as the official trainers' "Running without wandb"."""
        mode = resolve_wandb_mode(wandb_mode)
        if mode == "disabled":
            return
        try:
            self._wandb = self._init_wandb(mode, project, name, config)
        except Exception as err:  # noqa: BLE001 - any failure of wandb.init
            if wandb_mode != "auto" or isinstance(err, LoggingSetupError):
                raise
            logger.warning(f"W&B could not start ({type(err).__name__}: {err}); logging without it")

    def _init_wandb(self, mode: str, project: str, name: str | None, config: Mapping[str, Any] | None) -> Any:
        try:
            import wandb
        except ImportError:
            raise LoggingSetupError(f"W&B logging was requested (--wandb-mode {mode}) but the 'wandb' package is "
                                    "not installed: `pip install wandb` (then `wandb login`), or use --wandb-mode auto "
                                    "/ --no-wandb") from None
        id_file = self.run_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        write_text_atomic(id_file, run_id)
        (self.run_dir / "wandb").mkdir(exist_ok=True)
        return wandb.init(project=project, name=name, id=run_id, resume="allow", mode=mode,
                          dir=str(self.run_dir / "wandb"), config=dict(config) if config else None)

    def _init_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            if importlib.util.find_spec("tensorboard") is None:
                raise LoggingSetupError("TensorBoard logging was requested (--tensorboard) but the 'tensorboard' "
                                        "package is not installed: `pip install tensorboard`, or drop --tensorboard"
                                        ) from None
            raise LoggingSetupError(f"TensorBoard logging was requested (--tensorboard) but torch.utils.tensorboard "
                                    f"cannot be imported ({err}): `pip install -U tensorboard` (with its "
                                    "dependencies), or drop --tensorboard") from None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, Any], console: bool = True) -> None:
        """Record the (already reduced) scalars of one step in every sink.

        Args:
            step: global optimizer step, the x-axis everywhere.
            metrics: name -> float or 0-d tensor, e.g. `{"train/loss": 0.12, "train/lr": 1e-4}`.
            console: also print a line to the console / `log.txt` (off for high-frequency series).
        """
        if not self.enabled:
            return
        values = {k: _json_value(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()  # a crashed run keeps every line written so far
        if console:
            logging.getLogger("gigatok").info(
                "(step=%07d) %s", step, " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        if self._wandb is not None:
            self._wandb.log({k: (float("nan") if v is None else v) for k, v in values.items()}, step=int(step))
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, global_step=int(step))

    def close(self) -> None:
        """Flush and close every sink (safe to call twice)."""
        if getattr(self, "_file_handler", None) is not None:
            logging.getLogger("gigatok").removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "nan" if value is None else str(value)


class TrainingDivergedError(UserError, RuntimeError):
    """The loss stayed non-finite for too many steps in a row: the run stops (the trainer adds which checkpoint to
    go back to)."""


class NonFiniteGuard:
    """Skip optimizer steps whose loss is NaN/inf; stop with a clear error after too many in a row.

    The decision is all-reduced (any rank non-finite => every rank skips), so DDP ranks never disagree about
    running backward. Costs one host sync per step (plus one tiny all-reduce under a process group).

    Args:
        max_consecutive: consecutive non-finite steps tolerated; the next one raises. 0 = raise on the first.

    Attributes:
        num_skipped: total skipped steps (log it, e.g. as `train/skipped_steps`).
        consecutive: current run of skipped steps.
        streak_start: the step the current run of skipped steps began at (None when the last step was finite).
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0; got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.num_skipped = 0
        self.consecutive = 0
        self.streak_start: int | None = None

    def check(self, loss: torch.Tensor | float, step: int | None = None) -> bool:
        """True if this step must be skipped (loss not finite on some rank); call on every rank, before backward.

        Raises:
            TrainingDivergedError: after more than `max_consecutive` non-finite steps in a row.
        """
        if isinstance(loss, torch.Tensor):
            bad = (~torch.isfinite(loss.detach())).any().to(torch.float32)
        else:
            bad = torch.tensor(0.0 if math.isfinite(loss) else 1.0)
        if dist.is_initialized() and get_world_size() > 1:
            if dist.get_backend() == "nccl" and not bad.is_cuda:
                bad = bad.cuda()
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bool(bad.item()):
            self.consecutive, self.streak_start = 0, None
            return False
        if self.consecutive == 0:
            self.streak_start = step
        self.num_skipped += 1
        self.consecutive += 1
        where = f"step {step}" if step is not None else "this step"
        if self.consecutive > self.max_consecutive:
            raise TrainingDivergedError(
                f"the loss was NaN/inf for {self.consecutive} consecutive steps (at {where}; {self.num_skipped} "
                "steps skipped in total). Training is diverging. Try: a lower learning rate or a longer warm-up, "
                "bf16 instead of fp16 mixed precision (fp16 overflows), a smaller max_grad_norm, and check the data "
                "for corrupt samples.")
        logger.warning("non-finite loss at %s: skipping the update (%d in a row, %d skipped in total)",
                       where, self.consecutive, self.num_skipped)
        return True

    def state_dict(self) -> dict[str, int | None]:
        return {"num_skipped": self.num_skipped, "consecutive": self.consecutive, "streak_start": self.streak_start}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.num_skipped = int(state.get("num_skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))
        self.streak_start = state.get("streak_start")
