"""torchrun without the launcher's own traceback: `python -m gigatok.infra.launch <torchrun arguments>`.

When a worker exits with an error, torchrun prints a Python traceback of the launcher itself after the worker's
message. Our workers already print a clear message and exit with code 2 on user errors, so this wrapper runs the
same launcher (`torch.distributed.run`) and turns a failed worker into a one-line note and the worker's exit code.
The shell scripts use it unless TORCH_RUN_PATH names another launcher.
"""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun_main(argv)
    except ChildFailedError as err:
        failures = err.failures
        codes = sorted({failure.exitcode for failure in failures.values()})
        ranks = sorted(failures)
        print(f"launch: worker rank(s) {ranks} failed with exit code {codes}; see the message above.",
              file=sys.stderr)
        return codes[0] if len(codes) == 1 and codes[0] > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
