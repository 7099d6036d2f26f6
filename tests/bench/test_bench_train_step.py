"""`gigatok.bench gpt --mode train --optimizer-step`: the step split and the two sides' AdamW."""
from __future__ import annotations

import json

import pytest
import torch

from gigatok.bench import (
    TRAIN_BETAS,
    TRAIN_LR,
    TRAIN_WEIGHT_DECAY,
    _official_gpt_adamw,
    main,
)
from gigatok.builders import build_gpt
from gigatok.infra.optim import build_adamw


@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("optimizer_step", [False, True])
def test_train_split(optimizer_step, capsys):
    argv = ["gpt", "--gpt-model", "debug", "--mode", "train", "--batch-size", "2", "--num-tokens", "16",
            "--vocab-size", "256", "--num-classes", "10", "--repeat", "2", "--threads", "1"]
    assert main(argv + ["--optimizer-step"] * optimizer_step) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    split = result["split_s"]
    assert result["optimizer_step"] is optimizer_step and set(split) == {"forward", "backward", "optimizer"}
    assert split["forward"] > 0 and split["backward"] > 0
    assert (split["optimizer"] > 0) is optimizer_step
    # the parts are measured inside each timed call, so they cannot add up to more than the call
    assert sum(split.values()) <= max(result["times_s"]) + 1e-3


def test_official_adamw_groups_match_ours():
    """The official trainer's grouping (>= 2-D decays) puts the same tensors in each group as our
    `matrices_only` policy, with the same settings: the optimizer steps compare like for like."""
    gpt = build_gpt("debug", vocab_size=64, block_size=16, num_classes=10)
    theirs = _official_gpt_adamw(gpt, TRAIN_LR, TRAIN_BETAS, TRAIN_WEIGHT_DECAY)
    ours = build_adamw(gpt, TRAIN_LR, betas=TRAIN_BETAS, weight_decay=TRAIN_WEIGHT_DECAY,
                       decay_policy="matrices_only")
    assert len(theirs.param_groups) == len(ours.param_groups) == 2
    for a, b in zip(theirs.param_groups, ours.param_groups):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert (a["weight_decay"], a["lr"], a["betas"], a["fused"]) == (b["weight_decay"], b["lr"], b["betas"],
                                                                        b["fused"])
    assert ours.param_groups[0]["weight_decay"] == TRAIN_WEIGHT_DECAY and ours.param_groups[1]["weight_decay"] == 0
