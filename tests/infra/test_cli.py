"""`run_stage`, the shared ending of every entry point: user errors become exit code 2 with one line, and the
process group is torn down on every path (after a barrier only when the stage succeeded)."""
from __future__ import annotations

import pytest
import torch.distributed as dist

from gigatok.errors import UserError
from gigatok.infra import dist as gdist
from gigatok.infra.cli import run_stage
from gigatok.infra.io import DiskFullError


class _UserError(UserError):
    """A domain error: every subclass of UserError is handled alike."""


@pytest.fixture
def group(tmp_path, monkeypatch):
    """A one-process gloo group, and a log of the barriers `cleanup` runs."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    barriers: list[str] = []
    real_barrier = dist.barrier

    def counting_barrier(*args, **kwargs):
        barriers.append("barrier")
        return real_barrier(*args, **kwargs)

    monkeypatch.setattr(gdist.dist, "barrier", counting_barrier)
    yield barriers
    if dist.is_initialized():
        dist.destroy_process_group()


def test_success_returns_the_result_and_tears_down_after_a_barrier(group):
    assert run_stage(lambda: 42) == 42
    assert not dist.is_initialized()
    assert group == ["barrier"]


def test_user_error_exits_2_with_one_line_and_no_barrier(group, capsys):
    def stage():
        raise _UserError("--data-path 'x' does not exist")

    with pytest.raises(SystemExit) as info:
        run_stage(stage)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --data-path 'x' does not exist"
    assert not dist.is_initialized()
    assert group == []  # a failed rank must not wait for peers that may never arrive


def test_a_bug_keeps_its_traceback_and_still_tears_down(group):
    def stage():
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run_stage(stage)
    assert not dist.is_initialized()
    assert group == []


def test_a_user_error_raised_anywhere_is_one_line(group, capsys):
    def stage():
        raise DiskFullError("no space left on the device while writing 'x.pt'")

    with pytest.raises(SystemExit) as info:
        run_stage(stage)
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_code_130(group, capsys):
    def stage():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_stage(stage)
    err = capsys.readouterr().err
    assert info.value.code == 130 and "Traceback" not in err and err.count("\n") == 1
    assert "run the same command again to resume" in err
    assert not dist.is_initialized()


def test_the_launcher_names_a_sigkilled_worker_and_its_likely_cause():
    from gigatok.infra.launch import describe_failure

    line, code = describe_failure([0, 1], [-9])
    assert code == 137 and "killed by SIGKILL" in line and "out-of-memory killer" in line and "[0, 1]" in line
    line, code = describe_failure([1], [-15])
    assert code == 143 and "SIGTERM" in line and "out-of-memory" not in line
    line, code = describe_failure([0], [2])
    assert code == 2 and "exit code [2]" in line
