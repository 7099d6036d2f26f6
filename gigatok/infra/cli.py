"""The shared ending of every entry point's `main`: a `UserError` becomes one paragraph and exit code 2."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from gigatok.errors import UserError

T = TypeVar("T")


def _prefix() -> str:
    if "torch" not in sys.modules:
        return ""
    from gigatok.infra.dist import get_rank, get_world_size
    return f"[rank {get_rank()}] " if get_world_size() > 1 else ""


def cleanup(synchronize: bool = True) -> None:
    """`gigatok.infra.dist.cleanup`, imported only when torch is loaded: a stage that never imports torch (the
    report stages) has no process group, and starts without the seconds torch takes to import."""
    if "torch" in sys.modules:
        from gigatok.infra.dist import cleanup as dist_cleanup
        dist_cleanup(synchronize=synchronize)


def run_stage(stage: Callable[[], T]) -> T:
    """Run an entry point's body.

    A `UserError` (bad flags, configs, checkpoints, data, missing weights) prints `error: <message>` (prefixed with
    the rank when several run) and exits with code 2, without a traceback; Ctrl-C prints one line and exits with
    code 130 (everything written so far is complete: writes are atomic, and a rerun resumes); anything else is a bug
    and keeps its traceback. The process group is torn down either way.
    """
    try:
        result = stage()
    except UserError as err:
        print(f"{_prefix()}error: {err}", file=sys.stderr)
        cleanup(synchronize=False)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{_prefix()}interrupted: what was written so far is complete; run the same command again to resume",
              file=sys.stderr)
        cleanup(synchronize=False)
        raise SystemExit(130) from None
    except BaseException:
        cleanup(synchronize=False)
        raise
    cleanup()
    return result
