"""env_install.sh argument and knob checks that need no install (the real install runs in CI's first step)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_install(*args: str, **env: str) -> subprocess.CompletedProcess:
    # The active environment is this test's own: nothing is created, and the knob checks fail before any install.
    environ = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent), **env}
    return subprocess.run(["bash", str(ROOT / "env_install.sh"), *args], capture_output=True, text=True,
                          env=environ, timeout=120)


def test_unknown_installer_and_option_are_refused_before_any_install():
    result = run_install(INSTALLER="conda")
    assert result.returncode == 2 and "INSTALLER must be auto, uv or pip, not 'conda'" in result.stderr
    assert "pip install" not in result.stdout
    result = run_install("--frobnicate")
    assert result.returncode == 2 and "unknown option '--frobnicate'" in result.stderr
