"""EMA: the official constant-decay update, buffer handling, warm-up mode, wrappers and state round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gigatok.infra.ema import EMA, OFFICIAL_EMA_DECAY


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_official_update_formula():
    model = _model()
    ema = EMA(model, decay=0.9)
    assert ema.decay == 0.9 and EMA(model).decay == OFFICIAL_EMA_DECAY == 0.9999
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in ema.state_dict().items())  # starts as a copy
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, p in ema.module.named_parameters():
        assert torch.allclose(p, 0.9 * start[name] + 0.1 * (start[name] + 1.0), atol=1e-6)
    assert ema.num_updates == 1 and ema.current_decay() == 0.9  # no warm-up: constant decay


def test_buffers_copied_not_averaged_and_non_float_skipped():
    model = _model()
    ema = EMA(model, decay=0.5)
    model.train()
    model(torch.randn(8, 3))  # updates BN running stats and num_batches_tracked (int64)
    ema.update(model)
    bn, ema_bn = model[1], ema.module[1]
    assert torch.equal(ema_bn.running_mean, bn.running_mean)
    assert ema_bn.num_batches_tracked.item() == 1 and ema_bn.num_batches_tracked.dtype == torch.int64

    averaged = EMA(_model(), decay=0.5, average_buffers=True)
    old_mean = averaged.module[1].running_mean.clone()
    averaged.update(model)
    assert torch.allclose(averaged.module[1].running_mean, 0.5 * old_mean + 0.5 * bn.running_mean)
    assert averaged.module[1].num_batches_tracked.item() == 1  # integer buffers are always copied


def test_warmup_mode():
    ema = EMA(_model(), decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.num_updates = 90
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.num_updates = 10**7
    assert ema.current_decay() == 0.9999


def test_frozen_eval_and_wrapped_source():
    model = _model()
    compiled = torch.compile(model)  # wrapper only; no compilation happens until a forward
    ema = EMA(compiled, decay=0.0)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert all(not k.startswith("_orig_mod.") for k in ema.state_dict())
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(compiled)  # decay 0: exact copy, through the wrapper
    assert torch.equal(ema.module[0].weight, model[0].weight)


def test_state_round_trip():
    ema = EMA(_model(), decay=0.9)
    with torch.no_grad():
        ema.module[0].weight.fill_(7.0)
    other = EMA(_model(), warmup=True)
    other.load_state_dict({f"module.{k}": v for k, v in ema.state_dict().items()}, num_updates=42)
    assert torch.equal(other.module[0].weight, ema.module[0].weight) and other.num_updates == 42
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"0.weight": ema.state_dict()["0.weight"]})
    with pytest.raises(ValueError):
        EMA(_model(), decay=1.5)
