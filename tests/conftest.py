"""Shared test fixtures: tiny configs, procedural weights and the official parity vectors in tests/assets."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. The suite runs two pytest-xdist workers on two cores, and several
# tests start torchrun ranks beside them: spinning threads of one process then steal the cores the others compute
# on (a 20 s training test took over 2 minutes). Set before torch starts its thread pool; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The tests never reach the network: a missing pretrained file stays missing (the lookup's error, or the offline
# fallback) instead of a download. tests/infra/test_download.py lifts it for its local HTTP server.
os.environ["GIGATOK_OFFLINE"] = "1"
# The TensorFlow evaluator's interpreter (EVAL_PYTHON_PATH, exported by .ci/run) is for the TensorFlow tests only,
# which read it as GIGATOK_TEST_TF_PYTHON: every other test runs the default PyTorch evaluator, which the stages'
# --eval-python-path default (EVAL_PYTHON_PATH) would otherwise replace, in this process and its children.
if "EVAL_PYTHON_PATH" in os.environ:
    os.environ["GIGATOK_TEST_TF_PYTHON"] = os.environ.pop("EVAL_PYTHON_PATH")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
sys.path.insert(0, str(ASSETS))  # procedural.py

from procedural import procedural_state_dict  # noqa: E402

# Under pytest-xdist (.ci/run: -n 2 on 2 cores) each worker computes on one thread: two workers with two threads each
# would oversubscribe the cores. Tests whose reference values depend on the thread count set it themselves.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _pristine_gigatok_logger() -> Iterator[None]:
    """After each test, the `gigatok` logger as before any stage ran: a stage's `setup_logging` binds a StreamHandler
    to the sys.stderr of the moment (this test's capture stream), which a later test would log into once closed."""
    yield
    logger = logging.getLogger("gigatok")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate, logger.level = True, logging.NOTSET


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for a test. The debug models gain nothing from threads, and on a busy 2-core machine the
    workers of a 2-thread OpenMP region wait on each other against other processes (10-100x slower); with one
    thread, in-process runs also compute exactly like their subprocesses (started with OMP_NUM_THREADS=1)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """`one_thread` for a whole module, its module-scoped fixtures included (`pytestmark = usefixtures(...)`)."""
    with torch_threads(1):
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with long tests (marked slow) first, each module kept together (its module-scoped fixtures are built
    once): parallel workers then finish at about the same time, instead of one of them running a minute-long test
    alone at the end."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)


def load_procedural(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every state_dict entry with the deterministic weights the official vectors were produced with."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(procedural_state_dict(shapes, seed), strict=True)
    return model


def read_key_list(name: str) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(total parameter count, {key: shape}) of an official key dump in tests/assets/keys."""
    lines = (ASSETS / "keys" / f"{name}.txt").read_text().splitlines()
    total = int(lines[0].split("\t")[1])
    shapes = {}
    for line in lines[1:]:
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
    return total, shapes


@pytest.fixture(scope="session")
def vectors():
    """Lazy loader of the official parity vectors: vectors('tok_VQ_SS256')."""
    cache: dict[str, dict[str, np.ndarray]] = {}

    def get(case: str) -> dict[str, np.ndarray]:
        if case not in cache:
            with np.load(ASSETS / f"{case}.npz") as data:
                cache[case] = {k: data[k] for k in data.files}
        return cache[case]

    return get


def expect_exit_2(main, argv: list[str], capsys) -> str:
    """Run an entry point's main(argv) expecting a user error: exit code 2, a message, no traceback. Returns stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err
