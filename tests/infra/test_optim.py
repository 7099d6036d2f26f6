"""AdamW builder: which parameters get weight decay under each official policy, and the fused switch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gigatok.infra.optim import (
    build_adamw,
    load_optimizer_state,
    split_decay_parameters,
    summarize_param_groups,
)
from gigatok.layers.conv import AdaptiveGroupNorm


class RMSNorm(nn.Module):  # stands in for our own norm class: matched by class name, not by type
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(10, 8)          # 2-D
        self.proj = nn.Linear(8, 8)                        # weight 2-D, bias 1-D
        self.ln_pre = nn.LayerNorm(8)                      # norm by type, name without "norm"
        self.gn = nn.GroupNorm(2, 8)
        self.attention_norm = RMSNorm(8)                   # norm by class name (and by "norm" in the name)
        self.adaptive = AdaptiveGroupNorm(4, 32)           # gamma/beta Linear: style projections, not norm params
        self.positional_embedding = nn.Parameter(torch.zeros(5, 8))
        self.scale = nn.Parameter(torch.ones(8))           # 1-D, not a norm, not a bias
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def _names(items):
    return sorted(name for name, _ in items)


def test_policy_all_is_one_group():
    model = Toy()
    decay, no_decay = split_decay_parameters(model, "all")
    assert not no_decay and "frozen" not in _names(decay)
    opt = build_adamw(model, lr=1e-4, weight_decay=1e-4, decay_policy="all")
    assert len(opt.param_groups) == 1  # official tokenizer optimizers have one group: their state dicts load
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_policy_matrices_only_matches_official_gpt():
    decay, no_decay = split_decay_parameters(Toy(), "matrices_only")
    assert _names(decay) == ["adaptive.beta.weight", "adaptive.gamma.weight", "positional_embedding",
                             "proj.weight", "tok_embeddings.weight"]
    assert all(p.dim() < 2 for _, p in no_decay) and "scale" in _names(no_decay)


def test_policy_no_norm_bias():
    decay, no_decay = split_decay_parameters(Toy(), "no_norm_bias")
    assert _names(no_decay) == ["adaptive.beta.bias", "adaptive.gamma.bias", "attention_norm.weight",
                                "gn.bias", "gn.weight", "ln_pre.bias", "ln_pre.weight", "proj.bias"]
    assert "scale" in _names(decay) and "adaptive.gamma.weight" in _names(decay)


def test_groups_summary_and_order():
    opt = build_adamw(Toy(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, decay_policy="matrices_only")
    summary = summarize_param_groups(opt)
    assert [g["name"] for g in summary] == ["decay", "no_decay"]
    assert [g["weight_decay"] for g in summary] == [0.05, 0.0]
    total = sum(p.numel() for p in Toy().parameters() if p.requires_grad)
    assert sum(g["num_params"] for g in summary) == total
    assert opt.defaults["fused"]  # plain fp32 CPU parameters: torch's fused CPU kernel


def test_wrapped_model_and_decay_applied():
    model = Toy()
    opt = build_adamw(torch.compile(model), lr=0.1, weight_decay=0.5, decay_policy="no_norm_bias")
    with torch.no_grad():
        before = {n: p.clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decoupled weight decay moves a parameter
    opt.step()
    assert not torch.equal(model.proj.weight, before["proj.weight"])
    assert torch.equal(model.proj.bias, before["proj.bias"])
    assert torch.equal(model.ln_pre.weight, before["ln_pre.weight"])


def test_errors():
    with pytest.raises(ValueError, match="policy"):
        build_adamw(Toy(), lr=1e-4, decay_policy="everything")
    with pytest.raises(ValueError, match="no trainable"):
        build_adamw(nn.Linear(2, 2).requires_grad_(False), lr=1e-4)


def _loss(model: nn.Module, seed: int) -> torch.Tensor:
    """A smooth loss of every trainable parameter (Toy has no forward)."""
    g = torch.Generator().manual_seed(seed)
    return sum(((p - torch.randn(p.shape, generator=g)) ** 2).sum() for p in model.parameters() if p.requires_grad)


def test_fused_cpu_kernel_matches_the_loop_and_survives_a_resume_from_an_unfused_state():
    torch.manual_seed(0)
    fused_model, loop_model = Toy(), Toy()
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_adamw(fused_model, lr=1e-2, weight_decay=0.1)
    loop = build_adamw(loop_model, lr=1e-2, weight_decay=0.1, fused=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for i in range(10):
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            _loss(model, seed=i).backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # An unfused checkpoint (the official tokenizer's plain AdamW) loaded into the fused optimizer keeps the
    # fused kernel, so a GradScaler step (fp16 runs) still works; torch's plain load_state_dict would switch it.
    load_optimizer_state(fused, loop.state_dict())
    assert all(group["fused"] for group in fused.param_groups)
    torch.testing.assert_close(fused.state_dict()["state"][0]["exp_avg"], loop.state_dict()["state"][0]["exp_avg"])
    scaler = torch.amp.GradScaler("cpu")
    fused.zero_grad()
    scaler.scale(_loss(fused_model, seed=10)).backward()
    scaler.step(fused)
    scaler.update()
    assert int(fused.state_dict()["state"][0]["step"]) == 11


def test_no_fused_kernel_for_parameters_it_does_not_take():
    meta = Toy().to("meta")
    assert not build_adamw(meta, lr=1e-3).defaults["fused"]
    double = Toy().to(torch.float64)
    assert not build_adamw(double, lr=1e-3).defaults["fused"]


def test_adam_couples_weight_decay_into_the_gradient_as_the_official_adam_option():
    # One step from the same state: `algorithm="Adam"` equals torch.optim.Adam (L2 decay through the moments),
    # which moves a zero-gradient parameter by lr * sign(wd * p), unlike AdamW's lr * wd * p.
    model_a, model_b = Toy(), Toy()
    model_b.load_state_dict(model_a.state_dict())
    ours = build_adamw(model_a, lr=0.1, weight_decay=0.5, algorithm="Adam", fused=False)
    reference = torch.optim.Adam([p for p in model_b.parameters() if p.requires_grad], lr=0.1,
                                 betas=(0.9, 0.95), weight_decay=0.5)
    assert isinstance(ours, torch.optim.Adam) and not isinstance(ours, torch.optim.AdamW)
    for opt, model in ((ours, model_a), (reference, model_b)):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_adamw(Toy(), lr=1e-4, algorithm="SGD")
