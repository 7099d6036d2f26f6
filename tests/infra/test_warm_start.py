"""gigatok.infra.warm_start: `python -m` commands forked from a warm zygote behave like fresh subprocesses."""
from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest

from gigatok.infra import warm_start

pytestmark = pytest.mark.skipif(not warm_start.available(), reason="warm starts need Linux fork")

PROBE = textwrap.dedent("""
    import os, signal, sys
    WARM = "torch" in sys.modules  # a fresh `python -m` has not imported torch at this point
    import torch


    def main():
        print("torch already imported:", WARM, flush=True)
        mode = sys.argv[1]
        print("name", __name__, "argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("PROBE"), flush=True)
        if mode == "compute":  # a 2-thread OpenMP region in a child of the zygote must not hang
            torch.set_num_threads(2)
            x = torch.randn(256, 256)
            print("threads", torch.get_num_threads(), "sum", float((x @ x).abs().sum() > 0), flush=True)
        elif mode == "bytes":
            sys.stdout.buffer.write(b"a\\0b\\rprogress\\r")  # a NUL and carriage returns pass through untouched
            sys.stdout.flush()
        elif mode == "exit":
            sys.exit(int(sys.argv[2]))
        elif mode == "message":
            sys.exit("bad flag --x")
        elif mode == "raise":
            raise RuntimeError("boom")
        elif mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "stdin":
            print("stdin", repr(sys.stdin.read()), flush=True)


    if __name__ == "__main__":  # the zygote imports this module to warm it up: no work at import time
        main()
""")


def start_launcher(folder):
    (folder / "probe_mod.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])}
    launcher = warm_start.WarmLauncher(["probe_mod"], env=env, cwd=str(folder))
    launcher.test_env = env
    return launcher


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    with start_launcher(tmp_path_factory.mktemp("warm")) as it:  # one zygote for the module: each starts in ~5 s
        yield it


def run(launcher, *args: str, cwd: str = "/", probe: str = "x", threads: int | None = None) -> tuple[int, str]:
    chunks: list[bytes] = []
    code, cpu = launcher.run("probe_mod", list(args), {**launcher.test_env, "PROBE": probe}, cwd, chunks.append,
                             threads=threads)
    assert cpu >= 0.0
    return code, b"".join(chunks).decode()


def test_a_command_runs_as_main_with_its_argv_env_and_cwd_in_a_warm_process(launcher, tmp_path):
    code, out = run(launcher, "plain", "--flag", cwd=str(tmp_path), probe="hello")  # another folder than the zygote's
    assert code == 0
    assert "torch already imported: True" in out  # the zygote warmed the probe's imports ...
    assert f"name __main__ argv ['plain', '--flag'] cwd {tmp_path} env hello" in out  # ... but ran it fresh
    code, out = run(launcher, "plain", probe="second")  # each command gets its own environment and directory
    assert code == 0 and "cwd / env second" in out


def test_exit_codes_messages_tracebacks_and_signals_are_those_of_python_m(launcher):
    assert run(launcher, "exit", "3")[0] == 3
    assert run(launcher, "exit", "0")[0] == 0
    code, out = run(launcher, "message")
    assert code == 1 and "bad flag --x" in out
    code, out = run(launcher, "raise")
    assert code == 1 and "RuntimeError: boom" in out and "Traceback" in out
    assert run(launcher, "kill")[0] == -signal.SIGKILL
    assert run(launcher, "plain")[0] == 0  # the zygote survives its children's failures


def test_output_is_passed_on_byte_for_byte_and_stdin_is_not_the_request_pipe(launcher):
    code, out = run(launcher, "bytes")
    assert code == 0 and out.endswith("a\0b\rprogress\r")
    code, out = run(launcher, "stdin")
    assert code == 0 and "stdin ''" in out


def test_children_can_use_openmp_threads(launcher):
    for _ in range(2):
        code, out = run(launcher, "compute", threads=2)
        assert code == 0 and "threads 2 sum 1.0" in out


def test_a_dead_zygote_is_reported_so_that_callers_can_fall_back(tmp_path):
    with start_launcher(tmp_path) as launcher:
        assert run(launcher, "plain")[0] == 0
        launcher.process.send_signal(signal.SIGKILL)
        launcher.process.wait()
        with pytest.raises(warm_start.WarmStartError):
            run(launcher, "plain")


def test_a_zygote_that_cannot_import_its_modules_fails_to_start(tmp_path):
    with warm_start.WarmLauncher(["no_such_module_xyz"], cwd=str(tmp_path)) as it:
        with pytest.raises(warm_start.WarmStartError, match="no_such_module_xyz"):
            it.start()
