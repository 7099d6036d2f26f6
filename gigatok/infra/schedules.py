"""Learning-rate schedules as pure functions of the global optimizer step.

Every schedule maps `step` (0-based count of optimizer steps already taken) to a learning rate. The training loop
calls `set_lr(optimizer, lr_at(step))` *before* `optimizer.step()`, so step 0 runs at the warm-up start
(`base_lr / 100`), step 1 at `lr(1)`, and so on.

Official quirk, on purpose not reproduced: GigaTok/LlamaGen call their scheduler *after* each optimizer step
with the pre-increment step, so the official step `s` runs at `lr(s - 1)` and the very first step runs at the
constructor LR (`base_lr`, not `base_lr / 100`). Our curve is the official one shifted by one step, which only
matters for the first step of a warm-up (the official run takes one full-LR step before warming up).

Formulas (SPEC_gigatok §6.1, §6.3; W = warmup, N = total steps):
- warm-up (all schedules), s < W:  base * (s/W + (1 - s/W) / 100)
- `cosine_v2`, s >= W:             end + 0.5 (base - end) (1 + cos(pi (s - W) / (N - W)))
- `wsd`, hold = N - int(fract_decay N), anneal = int(fract_decay N):
      W <= s < hold: base;  s >= hold: end + (base - end) * max(1 - f((s - hold) / anneal), 0)
      with f = sqrt (official), or identity ("linear"), or 1 - (1 + cos(pi x)) / 2 ("cosine").
- `constant`, s >= W:              base
Official tokenizer names (`vq_train.py`): `const` is `constant`; `cosine` is `cosine_v2` ending at 0 whatever
`end_lr` says (official `cosine_lr`). The GPT trainer's `cosine` is a different curve (`cosine_v2` to `end_lr`):
`train_c2i` maps its names before calling here.
Past N every schedule stays at its final value (the official cosine would swing back up; runs never get there).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

# Warm-up starts at base_lr / WARMUP_START_DIV (official `init_div_factor`).
WARMUP_START_DIV = 100.0

WSD_DECAYS = ("sqrt", "linear", "cosine")


def _warmup(step: int, base_lr: float, warmup: int) -> float:
    frac = step / warmup
    return base_lr * (frac + (1.0 - frac) / WARMUP_START_DIV)


def cosine_v2(step: int, base_lr: float, end_lr: float, warmup: int, total: int) -> float:
    """Official tokenizer schedule: linear warm-up from base/100, then cosine from `base_lr` to `end_lr`.

    Args:
        step: optimizer steps already taken (>= 0).
        base_lr: peak learning rate (official 1e-4).
        end_lr: final learning rate at `total` (official 1e-5).
        warmup: warm-up steps W (0 = start at `base_lr`).
        total: total optimizer steps N of the run (> warmup).

    Returns:
        The learning rate for this step; `end_lr` for every step >= `total`.
    """
    if step < warmup:
        return _warmup(step, base_lr, warmup)
    if total <= warmup:
        return end_lr
    progress = min((step - warmup) / (total - warmup), 1.0)
    return end_lr + 0.5 * (base_lr - end_lr) * (1.0 + math.cos(math.pi * progress))


def wsd(step: int, base_lr: float, warmup: int, total: int, fract_decay: float = 0.2, decay: str = "sqrt",
        end_lr: float = 0.0) -> float:
    """Official GPT schedule (warmup-stable-decay): warm-up, constant `base_lr`, then decay over the last part.

    Args:
        step: optimizer steps already taken (>= 0).
        base_lr: learning rate of the stable phase.
        warmup: warm-up steps W.
        total: total optimizer steps N.
        fract_decay: fraction of N spent decaying (official 0.2); the decay starts at N - int(fract_decay * N).
        decay: "sqrt" (official), "linear" or "cosine".
        end_lr: learning rate reached at N (official 0).

    Returns:
        The learning rate for this step; `end_lr` for every step >= `total`.
    """
    if decay not in WSD_DECAYS:
        raise ValueError(f"unknown WSD decay '{decay}': use one of {WSD_DECAYS}")
    if step < warmup:
        return _warmup(step, base_lr, warmup)
    anneal = int(fract_decay * total)
    hold = total - anneal
    if step < hold:
        return base_lr
    if anneal <= 0:
        return end_lr
    x = min((step - hold) / anneal, 1.0)
    if decay == "sqrt":
        shrink = math.sqrt(x)
    elif decay == "linear":
        shrink = x
    else:  # cosine: 0 at the start of the decay, 1 at its end
        shrink = 1.0 - 0.5 * (1.0 + math.cos(math.pi * x))
    return end_lr + (base_lr - end_lr) * max(1.0 - shrink, 0.0)


def constant(step: int, base_lr: float, warmup: int = 0) -> float:
    """`base_lr` after the same warm-up as the other schedules (official LlamaGen `train_c2i.py`: warmup 0)."""
    if step < warmup:
        return _warmup(step, base_lr, warmup)
    return base_lr


SCHEDULES = ("cosine_v2", "wsd", "constant", "cosine", "const")


def build_lr_schedule(name: str | None, base_lr: float, *, warmup: int = 0, total_steps: int | None = None,
                      end_lr: float = 0.0, fract_decay: float = 0.2, decay: str = "sqrt") -> Callable[[int], float]:
    """Turn a config's schedule name into a `step -> lr` callable.

    Args:
        name: "cosine_v2", "wsd", "constant" (None and "none" mean "constant", as in LlamaGen), or the official
            tokenizer names "const" (= "constant") and "cosine" (= "cosine_v2" with end_lr 0).
        base_lr: peak learning rate.
        warmup: warm-up steps.
        total_steps: total optimizer steps of the run; required by "cosine_v2" and "wsd".
        end_lr: final learning rate ("cosine_v2": official 1e-5; "wsd": official 0).
        fract_decay: "wsd" only, the fraction of `total_steps` spent decaying.
        decay: "wsd" only, the decay shape.

    Returns:
        A picklable function of the step.

    Raises:
        ValueError: for an unknown name, a missing/too small `total_steps`, or negative values.
    """
    name = "constant" if name in (None, "none", "const") else name
    if name == "cosine":  # official tokenizer `cosine_lr`: decays to 0
        name, end_lr = "cosine_v2", 0.0
    if name not in SCHEDULES:
        raise ValueError(f"unknown lr schedule '{name}': use one of {SCHEDULES}")
    if base_lr < 0 or end_lr < 0 or warmup < 0:
        raise ValueError(f"lr schedule needs base_lr, end_lr, warmup >= 0; got {base_lr}, {end_lr}, {warmup}")
    if name == "constant":
        return partial(constant, base_lr=base_lr, warmup=warmup)
    if total_steps is None or total_steps <= warmup:
        raise ValueError(f"lr schedule '{name}' needs total_steps > warmup ({warmup}); got {total_steps}. "
                         "total_steps is epochs * steps_per_epoch (or the configured number of iterations).")
    if name == "cosine_v2":
        return partial(cosine_v2, base_lr=base_lr, end_lr=end_lr, warmup=warmup, total=total_steps)
    if not 0.0 <= fract_decay <= 1.0:
        raise ValueError(f"wsd fract_decay must lie in [0, 1]; got {fract_decay}")
    if decay not in WSD_DECAYS:
        raise ValueError(f"unknown WSD decay '{decay}': use one of {WSD_DECAYS}")
    return partial(wsd, base_lr=base_lr, warmup=warmup, total=total_steps, fract_decay=fract_decay,
                   decay=decay, end_lr=end_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every param group (call before `optimizer.step()`; also overrides a resumed group's lr).

    A group may carry an `lr_scale` entry (e.g. a layer-wise decay); its lr becomes `lr * lr_scale`.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
