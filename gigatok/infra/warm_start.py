"""Run `python -m <module> ARGS` in processes forked from a warm interpreter that has already imported torch.

Why: on a 2-core machine every `python -m gigatok.<stage>` spends 5-15 s before its first line of work: the
interpreter, torch and torchvision, the stage's own imports, and torch._dynamo, which torch.optim imports lazily
when the first optimizer is built. A pipeline of many short stages (the CPU demo) pays that at every stage.

`WarmLauncher` starts one helper process (the zygote) that imports all of that once and then only forks: each
command runs in a child of the zygote exactly as `python -m` runs it (`runpy`, `__name__ == "__main__"`, its own
argv, environment and working directory, its own exit code), with stdout and stderr on the zygote's stdout, which
the caller reads. The zygote never runs a tensor operation, so no OpenMP thread pool exists when it forks (a GNU
OpenMP pool does not survive fork; a child of a process that computed with it can hang in its first parallel
region), and no CUDA context (the children may initialise CUDA themselves). The only other threads it has are
OpenBLAS pools (numpy's, scipy's), which OpenBLAS shuts down and re-creates around fork (pthread_atfork).

Linux only (`available()`); callers fall back to plain subprocesses elsewhere. Protocol: one JSON request per line
on the zygote's stdin; after each child exits, the zygote writes `MARKER <exit code> <CPU seconds>\\n` to its
stdout, after all the child's output (the CPU time, as the zygote and not the caller reaps the child). The marker starts with a NUL byte, which text output never contains.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

MARKER = b"\0gigatok-warm-start-exit "
READY = b"\0gigatok-warm-start-ready\n"
# Imported lazily by torch itself on the first optimizer (torch.optim -> torch._dynamo): seconds on a small CPU.
LAZY_TORCH_MODULES = ("torch._dynamo",)


class WarmStartError(RuntimeError):
    """The zygote could not start or died: the caller should fall back to a plain subprocess."""


def available() -> bool:
    """True where fork-based warm starts are supported and safe (Linux: fork, no Objective-C runtime)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _warm_imports(modules: Sequence[str]) -> None:
    """Import `modules` plus what they import; the modules themselves are dropped again, so that a child can run
    one as `__main__` exactly as `python -m` does (runpy warns about a module that is already imported)."""
    for name in [*LAZY_TORCH_MODULES, *modules]:
        importlib.import_module(name)
    for name in modules:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent and parent in sys.modules and hasattr(sys.modules[parent], child):
            delattr(sys.modules[parent], child)


def _run_child(request: dict[str, Any]) -> None:
    """In the forked child: become `python -m module args` and exit with its code (never returns)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores Ctrl-C; the stage must not
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent()
        devnull = os.open(os.devnull, os.O_RDONLY)  # stdin carries the zygote's requests: not for the command
        os.dup2(devnull, 0)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        if request.get("threads"):
            import torch

            torch.set_num_threads(int(request["threads"]))  # OMP_NUM_THREADS was read when the zygote loaded torch
        import runpy

        sys.argv = [request["module"], *request["args"]]  # runpy replaces argv[0] with the module's file
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:  # sys.exit("message"): Python prints it and exits 1
                print(exit_.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # noqa: BLE001 -- as the interpreter would: print the traceback, exit 1
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        try:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)  # no atexit handlers: they belong to the zygote


def _die_with_parent() -> None:
    """Ask the kernel to kill this child when the zygote dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass


def serve(modules: Sequence[str]) -> None:
    """The zygote's main loop (see the module docstring): warm up, then fork one child per request on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the running child and the caller, not us
    _die_with_parent()
    _warm_imports(modules)
    out = sys.stdout.buffer
    out.write(READY)
    out.flush()
    child = 0

    def stop(signum: int, frame: Any) -> None:
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            _run_child(request)
        _, status, usage = os.wait4(child, 0)
        child = 0
        result = f"{os.waitstatus_to_exitcode(status)} {usage.ru_utime + usage.ru_stime:.3f}\n"
        out.write(MARKER + result.encode())
        out.flush()


class WarmLauncher:
    """Runs `python -m` commands in children of one warm zygote; use as a context manager.

    Args:
        modules: the modules that will be run (their imports are warmed, they themselves are not kept).
        env: the zygote's environment (children get their own with each command).
        cwd: the zygote's working directory.
    """

    def __init__(self, modules: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.modules, self.env, self.cwd = list(modules), env, cwd
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> WarmLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the zygote and wait until its imports are done (raises WarmStartError if it fails)."""
        code = f"from gigatok.infra.warm_start import serve; serve({self.modules!r})"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        seen = b""
        while not seen.endswith(READY):
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                self.close()
                tail = seen.decode(errors="replace").strip().splitlines()[-5:]
                raise WarmStartError("the warm-start helper exited during its imports: " + " | ".join(tail))
            seen += chunk

    def run(self, module: str, args: Sequence[str], env: dict[str, str], cwd: str, sink: Callable[[bytes], None],
            threads: int | None = None) -> tuple[int, float]:
        """Run `python -m module *args` in a fresh child; its merged output goes to `sink` as it comes.

        Returns the exit code (negative: killed by that signal) and the child's CPU seconds. Raises WarmStartError
        if the zygote is gone or died.
        """
        if self.process is None:
            self.start()
        request = {"module": module, "args": list(args), "env": dict(env), "cwd": str(cwd), "threads": threads}
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            raise WarmStartError("the warm-start helper is gone") from None
        return _pump(self.process.stdout, sink)

    def close(self) -> None:
        """Stop the zygote (and a child it is running)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:  # a request still buffered for a zygote that died
                pass
        self.process = None


def _pump(stream: BinaryIO, sink: Callable[[bytes], None]) -> tuple[int, float]:
    """Copy `stream` to `sink` until the exit marker; returns the exit code and CPU seconds it carries."""
    pending = b""
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            if pending:
                sink(pending)
            raise WarmStartError("the warm-start helper died while running a command")
        pending += chunk
        at = pending.find(MARKER)
        if at >= 0 and pending.find(b"\n", at) >= 0:
            if at:
                sink(pending[:at])
            end = pending.find(b"\n", at)
            code, cpu = pending[at + len(MARKER):end].split()
            return int(code), float(cpu)
        # Pass everything on at once, except from a NUL on (the start of a marker split across reads).
        keep = pending.rfind(b"\0")
        keep = keep if keep >= 0 else len(pending)
        if keep:
            sink(pending[:keep])
        pending = pending[keep:]
