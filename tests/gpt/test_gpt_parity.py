"""Parity with the official GigaTok gpt_1d and LlamaGen gpt.py under procedural weights (reference vectors).

The vectors (tests/assets/gpt*.npz, see MANIFEST.md of the reference set) were produced by the official code,
fp32 on CPU with 2 threads. Weights are `procedural_state_dict(shapes, seed=0)` loaded into our modules through
the checkpoint loader, which also proves key/shape compatibility.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from gigatok.builders import build_gpt, load_gpt
from gigatok.gpt.generate import cfg_schedule_values, generate
from gigatok.gpt.model import GPT

ASSETS = Path(__file__).resolve().parents[1] / "assets"
torch.set_num_threads(2)  # the vectors were produced with 2 threads

CASES = {"gpt1d_GPT-B": "learned_1d", "gpt2d_LlamaGen-B": "rope_2d"}
# generation arrays -> (cfg_scale, cfg_schedule, cfg_schedule_kwargs), as recorded in the MANIFEST
GENERATIONS = {
    ("gpt1d_GPT-B", "gen_cfg4_constant"): (4.0, "constant", {}),
    ("gpt1d_GPT-B", "gen_cfg1p75_step"): (1.75, "step", {"window_start": 0.18}),
    ("gpt1d_GPT-B", "gen_cfg1"): (1.0, "constant", {}),
    ("gpt2d_LlamaGen-B", "gen_cfg4"): (4.0, "constant", {}),
    ("gpt2d_LlamaGen-B", "gen_cfg1"): (1.0, "constant", {}),
}


def _procedural_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    spec = importlib.util.spec_from_file_location("gigatok_test_procedural", ASSETS / "procedural.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.procedural_state_dict(shapes, seed=0)


_MODELS: dict[str, GPT] = {}


def official_model(case: str) -> GPT:
    """GPT-B with procedural weights, loaded through `load_gpt` (strict); cached across the tests of this file."""
    if case not in _MODELS:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_gpt("GPT-B", pos_type=CASES[case]).state_dict().items()}
        _MODELS[case] = load_gpt({"model": _procedural_state_dict(shapes)}, "GPT-B", pos_type=CASES[case])
    return _MODELS[case]


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _MODELS.clear()


def vectors(case: str) -> dict[str, np.ndarray]:
    with np.load(ASSETS / f"{case}.npz") as data:
        return dict(data)


@pytest.mark.parametrize("case", list(CASES))
def test_teacher_forced_logits_match_official(case):
    ref = vectors(case)
    gpt = official_model(case)
    assert not gpt.training
    codes, labels = torch.from_numpy(ref["codes"]), torch.from_numpy(ref["labels"])
    with torch.no_grad():
        logits, loss = gpt(codes[:, :-1], labels, targets=codes)
    assert logits.shape == (2, 256, 16384) and logits.dtype == torch.float32
    sel = logits[:, torch.from_numpy(ref["logits_positions"])].numpy()
    assert np.abs(sel - ref["logits_sel"]).max() <= 1e-4 * np.abs(ref["logits_sel"]).max()
    lse = torch.logsumexp(logits, dim=-1).numpy()
    assert np.abs(lse - ref["lse"]).max() <= 1e-4 * np.abs(ref["lse"]).max()
    np.testing.assert_array_equal(logits.argmax(-1).numpy(), ref["argmax"])
    assert loss.item() == pytest.approx(float(ref["loss"]), rel=1e-5)


@pytest.mark.parametrize("case, name", list(GENERATIONS))
def test_cfg_per_token_matches_official(case, name):
    cfg_scale, schedule, kwargs = GENERATIONS[(case, name)]
    ours = np.asarray(cfg_schedule_values(cfg_scale, 256, schedule, kwargs), dtype=np.float32)
    np.testing.assert_array_equal(ours, vectors(case)[f"{name}_cfg_per_token"])


def compared_lengths(margin: np.ndarray) -> list[int]:
    """Per row: codes up to and including the first near-tie (margin < 1e-3); after it a flip is legitimate."""
    ends = []
    for row in margin:
        small = np.flatnonzero(row < 1e-3)
        ends.append(int(small[0]) + 1 if small.size else len(row))
    return ends


@pytest.mark.slow
@pytest.mark.parametrize("case, name", list(GENERATIONS))
def test_greedy_generation_matches_official(case, name, one_thread):
    """About 12 s per case on one CPU thread (256 decode steps of GPT-B over 2 or 4 rows)."""
    ref = vectors(case)
    cfg_scale, schedule, kwargs = GENERATIONS[(case, name)]
    ends = compared_lengths(ref[f"{name}_margin"])
    # a constant schedule does not depend on the length, so we may stop after the last compared code; other
    # schedules use ratio = t / (num_tokens - 1) and must run all 256
    num_tokens = max(ends) if schedule == "constant" else 256
    gpt = official_model(case)
    codes = generate(gpt, torch.from_numpy(ref["labels"]), num_tokens, cfg_scale=cfg_scale, cfg_schedule=schedule,
                     cfg_schedule_kwargs=kwargs, top_k=1, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, num_tokens) and codes.dtype == torch.int64
    for row, end in enumerate(ends):
        np.testing.assert_array_equal(codes[row, :end].numpy(), ref[name][row, :end], err_msg=f"row {row}")
    assert not gpt.has_caches and not gpt.training
