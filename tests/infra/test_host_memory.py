"""Host-allocator tuning: after `tune_cpu_allocator`, a CNN block's large activations reuse freed memory without
page faults.

Each case runs in a fresh interpreter: the tuning is process-wide and the pytest process may already have it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, torch
from gigatok.infra.host_memory import cpu_allocator_state, tune_cpu_allocator
from gigatok.layers.conv import ResnetBlock

torch.manual_seed(0)
block = ResnetBlock(64, 64).to(memory_format=torch.channels_last).eval()
x = torch.randn(1, 64, 384, 384).contiguous(memory_format=torch.channels_last)  # 36 MiB: above glibc's 32 MiB

def faults_per_forward():
    with torch.inference_mode():
        for _ in range(3):
            block(x)  # warm up: the heap grows to its working size (its first touch faults either way)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            block(x)  # four 36 MiB activations per forward (two norms, two convs)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

default = faults_per_forward()
tuned = tune_cpu_allocator()
print(json.dumps({"default": default, "tuned": tuned, "after": faults_per_forward(), "state": cpu_allocator_state()}))
"""
PAGES = 36 * 2**20 / 4096  # 4 KiB pages of one activation

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")


def _probe(**env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE], check=False, capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tuning_removes_the_page_faults_of_large_allocations():
    out = _probe()
    if not out["tuned"]:
        pytest.skip("not glibc: mallopt tuning unavailable")
    assert out["default"] > 2 * PAGES  # glibc: a fresh mmap per activation, each of its pages faults
    # heap reuse: no faults per forward; a late one-off heap growth by an activation or two (fragmentation) can
    # still land in the 5 measured forwards (0.2 activation pages per forward each), against 4 per forward before
    assert out["after"] < 0.45 * PAGES
    assert out["state"] == "tuned"


def test_opt_out_keeps_the_default_allocator():
    out = _probe(GIGATOK_CPU_MALLOC="default")
    assert out["tuned"] is False and out["state"] == "default"
    assert out["after"] > 2 * PAGES


def test_init_distributed_tunes_cpu_runs():
    code = ("from gigatok.infra.dist import init_distributed; from gigatok.infra.host_memory import "
            "cpu_allocator_state; init_distributed('cpu'); print(cpu_allocator_state())")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "GIGATOK_CPU_MALLOC")}
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "tuned"


def test_unknown_value_warns_and_keeps_the_tuning():
    out = subprocess.run([sys.executable, "-c", "from gigatok.infra.host_memory import tune_cpu_allocator as t; "
                          "print(t())"], check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GIGATOK_CPU_MALLOC": "off"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GIGATOK_CPU_MALLOC='off' is neither 'tuned' nor 'default'" in out.stderr
    assert out.stdout.strip() in ("True", "False")  # False only off glibc
