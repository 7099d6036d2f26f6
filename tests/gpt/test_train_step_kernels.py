"""The GPT train step's hand-written pieces against autograd of the official formulas.

RMSNorm in float32 training runs a custom backward (gigatok.layers.norm._RMSNormFp32): its forward must stay
bit-identical to LlamaGen's ops (the parity vectors and sampled codes depend on it), its gradients must agree with
autograd's to float32 rounding, and every other case (bf16, no grad) must keep taking the reference path.
"""
from __future__ import annotations

import pytest
import torch

from gigatok.builders import build_gpt
from gigatok.layers.norm import RMSNorm, _rms_norm_reference


def _official_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaGen/GigaTok gpt_1d RMSNorm: `_norm(x.float()).type_as(x) * weight` (written out here on purpose)."""
    xf = x.float()
    return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)).type_as(x) * weight


@pytest.mark.parametrize("shape", [(2, 7, 64), (3, 5, 768), (11, 1280)])
def test_rmsnorm_fp32_training_forward_bitwise_and_grads_match_autograd(shape):
    gen = torch.Generator().manual_seed(0)
    d = shape[-1]
    norm = RMSNorm(d, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(d, generator=gen))
    x = (3 * torch.randn(shape, generator=gen)).requires_grad_()
    g = torch.randn(shape, generator=gen)

    out = norm(x)
    assert out.grad_fn is not None and "_RMSNormFp32" in type(out.grad_fn).__name__
    ref_x = x.detach().clone().requires_grad_()
    ref_w = norm.weight.detach().clone().requires_grad_()
    ref = _official_rmsnorm(ref_x, ref_w, 1e-5)
    assert torch.equal(out, ref)  # same ops, same order: bit-identical
    out.backward(g)
    ref.backward(g)
    # float64 autograd as the judge: ours is as close to it as autograd's own float32 gradients are (or closer)
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    _official_rmsnorm(x64, w64, 1e-5).backward(g.double())
    for ours, autograd32, exact in ((x.grad, ref_x.grad, x64.grad), (norm.weight.grad, ref_w.grad, w64.grad)):
        scale = exact.abs().max().item()
        err_ours = (ours.double() - exact).abs().max().item()
        err_autograd = (autograd32.double() - exact).abs().max().item()
        assert err_ours <= max(4 * err_autograd, 1e-6 * scale), (err_ours, err_autograd)


def test_rmsnorm_other_cases_take_the_reference_path():
    norm = RMSNorm(16)
    x = torch.randn(2, 3, 16)
    assert norm(x.bfloat16()).grad_fn is not None  # weight requires grad: the autograd formula
    assert "_RMSNormFp32" not in type(norm(x.bfloat16()).grad_fn).__name__
    with torch.no_grad():
        assert torch.equal(norm(x), _rms_norm_reference(x, norm.weight, norm.eps))
    norm.weight.requires_grad_(False)
    assert norm(x).grad_fn is None  # nothing to differentiate


def test_gpt_training_gradients_match_the_reference_norm(monkeypatch):
    """A whole teacher-forced step of a small GPT (dropouts off): the loss is bit-identical and every
    parameter gradient agrees with the step through the autograd formula."""
    def step(use_custom: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        gpt = build_gpt("debug", vocab_size=128, block_size=16, num_classes=10, token_dropout_p=0.0,
                        resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.0).train()
        torch.nn.init.normal_(gpt.output.weight, std=0.02)  # a non-zero head, so every gradient is non-zero
        if not use_custom:
            monkeypatch.setattr(RMSNorm, "forward", lambda self, x: _rms_norm_reference(x, self.weight, self.eps))
        gen = torch.Generator().manual_seed(1)
        codes = torch.randint(0, 128, (3, 16), generator=gen)
        _, loss = gpt(codes[:, :-1], torch.tensor([1, 2, 3]), targets=codes)
        loss.backward()
        monkeypatch.undo()
        return loss.detach(), {n: p.grad for n, p in gpt.named_parameters()}

    loss, grads = step(True)
    ref_loss, ref_grads = step(False)
    assert torch.equal(loss, ref_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
