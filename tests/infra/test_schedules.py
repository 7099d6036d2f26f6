"""LR schedules: the official formulas at hand-computed points, the builder, and how the loop applies them."""
from __future__ import annotations

import math
import pickle

import pytest
import torch

from gigatok.infra.schedules import build_lr_schedule, constant, cosine_v2, set_lr, wsd


@pytest.mark.parametrize("step, expected", [
    (0, 1e-6),                       # warm-up starts at base / 100
    (50, 1e-4 * (0.5 + 0.5 / 100)),  # 5.05e-5
    (99, 1e-4 * (0.99 + 0.01 / 100)),
    (100, 1e-4),                     # cosine starts at base
    (600, 5.5e-5),                   # half way: (base + end) / 2
    (850, 1e-5 + 4.5e-5 * (1 - math.sqrt(0.5))),  # cos(3 pi / 4) = -1/sqrt(2)
    (1100, 1e-5),                    # end
    (5000, 1e-5),                    # stays at end past total
])
def test_cosine_v2_points(step, expected):
    assert cosine_v2(step, base_lr=1e-4, end_lr=1e-5, warmup=100, total=1100) == pytest.approx(expected, rel=1e-12)


def test_cosine_v2_without_warmup_starts_at_base():
    assert cosine_v2(0, 1e-4, 1e-5, warmup=0, total=1000) == pytest.approx(1e-4)
    assert cosine_v2(500, 1e-4, 1e-5, warmup=0, total=1000) == pytest.approx(5.5e-5)


@pytest.mark.parametrize("step, expected", [
    (0, 1e-6), (5, 5.05e-5), (10, 1e-4), (50, 1e-4), (79, 1e-4),
    (80, 1e-4),                            # decay starts at hold = 100 - int(0.2 * 100) = 80
    (85, 5e-5),                            # 1 - sqrt(0.25) = 0.5
    (95, 1e-4 * (1 - math.sqrt(0.75))),    # 1.3397e-5
    (100, 0.0), (250, 0.0),
])
def test_wsd_sqrt_points(step, expected):
    assert wsd(step, base_lr=1e-4, warmup=10, total=100, fract_decay=0.2) == pytest.approx(expected, abs=1e-18)


def test_wsd_variants():
    assert wsd(90, 1e-4, 10, 100, decay="linear") == pytest.approx(5e-5)
    assert wsd(85, 1e-4, 10, 100, decay="cosine") == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert wsd(85, 1e-4, 10, 100, end_lr=1e-5) == pytest.approx(1e-5 + 9e-5 * 0.5)
    # int(0.2 * 1001) = 200 decay steps, so the hold ends at 801
    assert wsd(800, 1e-4, 0, 1001) == 1e-4 and wsd(801, 1e-4, 0, 1001) == pytest.approx(1e-4)
    assert wsd(901, 1e-4, 0, 1001) == pytest.approx(1e-4 * (1 - math.sqrt(0.5)))
    assert wsd(50, 1e-4, 0, 100, fract_decay=0.0) == 1e-4
    with pytest.raises(ValueError, match="decay"):
        wsd(5, 1e-4, 0, 100, decay="exp")


def test_constant():
    assert constant(0, 2e-4, warmup=4) == pytest.approx(2e-6)
    assert constant(2, 2e-4, warmup=4) == pytest.approx(2e-4 * 0.505)
    assert constant(4, 2e-4, warmup=4) == 2e-4 and constant(0, 2e-4) == 2e-4


def test_build_lr_schedule():
    fn = build_lr_schedule("cosine_v2", 1e-4, warmup=100, total_steps=1100, end_lr=1e-5)
    assert fn(600) == pytest.approx(5.5e-5)
    assert pickle.loads(pickle.dumps(fn))(0) == pytest.approx(1e-6)  # picklable (DataLoader workers, spawn)
    assert build_lr_schedule("wsd", 1e-4, warmup=10, total_steps=100)(85) == pytest.approx(5e-5)
    assert build_lr_schedule(None, 3e-4)(10_000) == 3e-4
    assert build_lr_schedule("none", 3e-4, warmup=2)(0) == pytest.approx(3e-6)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        build_lr_schedule("cosine_v3", 1e-4, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        build_lr_schedule("wsd", 1e-4, warmup=10)
    with pytest.raises(ValueError, match="total_steps"):
        build_lr_schedule("cosine_v2", 1e-4, warmup=10, total_steps=10)
    with pytest.raises(ValueError, match="fract_decay"):
        build_lr_schedule("wsd", 1e-4, total_steps=10, fract_decay=1.5)


def test_lr_applied_before_each_step():
    """Our convention: set_lr(lr(step)) before optimizer.step(), so step 0 runs at the warm-up start."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param]}, {"params": [], "lr_scale": 0.5}], lr=123.0)
    lr_at = build_lr_schedule("cosine_v2", 1e-4, warmup=10, total_steps=20, end_lr=1e-5)
    used = []
    for step in range(3):
        set_lr(opt, lr_at(step))
        used.append(opt.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        opt.step()
    assert used == pytest.approx([1e-6, 1e-4 * (0.1 + 0.9 / 100), 1e-4 * (0.2 + 0.8 / 100)])
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * lr_at(2))
    assert param.item() == pytest.approx(-sum(used))


def test_official_tokenizer_schedule_names():
    # vq_train.py `cosine`: the official cosine_lr, warm-up then 0.5 (1 + cos(pi e / es)) base, 0 from `steps` on,
    # whatever end_lr says; `const`: warm-up then base.
    base, warmup, total = 1e-4, 10, 110
    cosine = build_lr_schedule("cosine", base, warmup=warmup, total_steps=total, end_lr=1e-5)
    for step in (0, 5, 10, 35, 60, 109, 110, 500):
        if step < warmup:
            expected = base * (step / warmup + (1 - step / warmup) / 100)
        elif step >= total:
            expected = 0.0
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) * base
        assert cosine(step) == pytest.approx(expected, abs=1e-15)
    const = build_lr_schedule("const", base, warmup=warmup)
    assert [const(s) for s in (0, 10, 10_000)] == [pytest.approx(base / 100), base, base]
