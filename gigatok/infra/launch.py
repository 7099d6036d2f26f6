"""torchrun without the launcher's own traceback: `python -m gigatok.infra.launch <torchrun arguments>`.

When a worker exits with an error, torchrun prints a Python traceback of the launcher itself after the worker's
message. Our workers already print a clear message and exit with code 2 on user errors, so this wrapper runs the
same launcher (`torch.distributed.run`) and turns what ends a run into one line and an exit code:
- a failed worker: its exit code (a worker killed by a signal: 128 + the signal, with the likely cause of a SIGKILL,
  the out-of-memory killer);
- Ctrl-C or a termination signal to the launcher: torchrun stops the workers; exit code 128 + the signal.
The shell scripts use it unless TORCH_RUN_PATH names another launcher. Workers die with their launcher even when it
is killed with SIGKILL (`gigatok.infra.dist.exit_with_parent`).
"""
from __future__ import annotations

import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

RESUME_HINT = "run the same command again to resume from the last checkpoint"


def describe_failure(ranks: list[int], codes: list[int]) -> tuple[str, int]:
    """(one line, exit code) for workers that failed with `codes` (negative: killed by that signal)."""
    killed = sorted({-code for code in codes if code < 0})
    if killed:
        names = ", ".join(signal.Signals(s).name for s in killed)
        cause = (": usually the out-of-memory killer (see `dmesg` or the job's memory limit; lower the batch size or "
                 "use more GPUs)" if signal.SIGKILL in killed else "")
        return (f"launch: worker rank(s) {ranks} were killed by {names}{cause}; {RESUME_HINT}.",
                128 + killed[0])
    exit_code = codes[0] if len(codes) == 1 and codes[0] > 0 else 1
    return f"launch: worker rank(s) {ranks} failed with exit code {codes}; see the message above.", exit_code


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun_main(argv)
    except ChildFailedError as err:
        failures = err.failures
        line, code = describe_failure(sorted(failures), sorted({f.exitcode for f in failures.values()}))
        print(line, file=sys.stderr)
        return code
    except SignalException as err:  # Ctrl-C / SIGTERM to the launcher: torchrun has stopped the workers
        print(f"launch: interrupted by {err.sigval.name}; the workers were stopped. {RESUME_HINT[0].upper()}"
              f"{RESUME_HINT[1:]}.", file=sys.stderr)
        return 128 + int(err.sigval)
    except KeyboardInterrupt:
        print(f"launch: interrupted. {RESUME_HINT[0].upper()}{RESUME_HINT[1:]}.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
