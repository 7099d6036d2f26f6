"""The quantizer zoo: parity with each reference (tests/assets/quantizer_vectors.*, made by
tests/assets/make_quantizer_vectors.py), the common contract for every registered quantizer, and the registry.

Tolerances: codes are equal; quantized values, losses and gradients agree to atol 1e-5 / rtol 1e-4 (fp32 sums in
another order: matmul instead of einsum, F.mse_loss instead of mean((a - b)**2)).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gigatok.errors import UserError
from gigatok.tokenizer.quantizer import Quantizer, QuantizerLosses, VectorQuantizer
from gigatok.tokenizer.quantizer_zoo import (
    FSQ,
    LFQ,
    QUANTIZERS,
    QuantizerConfigError,
    SimVQ,
    build_quantizer,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SETTINGS = json.loads((ASSETS / "quantizer_vectors.json").read_text())
VECTORS = np.load(ASSETS / "quantizer_vectors.npz")
TOL = {"atol": 1e-5, "rtol": 1e-4}


def _vec(case: str, name: str) -> torch.Tensor:
    return torch.from_numpy(VECTORS[f"{case}/{name}"])


def _case_names(case: str, prefix: str) -> list[str]:
    return [k[len(case) + len(prefix) + 2:] for k in VECTORS.files if k.startswith(f"{case}/{prefix}/")]


@pytest.mark.parametrize("case", sorted(SETTINGS["cases"]))
def test_matches_reference(case: str) -> None:
    setting = SETTINGS["cases"][case]
    quantizer = build_quantizer(setting["quantizer"], **setting["params"]).train()
    params = {name: _vec(case, f"param/{name}") for name in _case_names(case, "param")}
    quantizer.load_state_dict({**quantizer.state_dict(), **params})
    z = _vec(case, "z").requires_grad_(True)

    quant, losses, codes = quantizer(z)
    assert torch.equal(codes, _vec(case, "codes"))
    torch.testing.assert_close(quant, _vec(case, "quant"), **TOL)
    ref_losses = {name: _vec(case, f"loss/{name}") for name in _case_names(case, "loss")}
    ours = {"vq": losses.vq, "commit": losses.commit, "entropy": losses.entropy}
    if "quant_loss" in ref_losses:  # ibq: one double-quantization loss, split in two here
        ours["quant_loss"] = ours.pop("vq") + ours.pop("commit")
    for name in ("vq", "commit", "entropy", "quant_loss"):
        if name in ref_losses:
            torch.testing.assert_close(ours[name], ref_losses[name], **TOL, msg=f"{case} loss {name}")
        elif name in ours:
            assert ours[name].item() == 0.0, f"{case}: the reference has no {name} loss"

    scalar = (quant * _vec(case, "w")).sum() + losses.vq + losses.commit + losses.entropy
    scalar.backward()
    torch.testing.assert_close(z.grad, _vec(case, "grad/z"), **TOL)
    named = dict(quantizer.named_parameters())
    for name in _case_names(case, "grad"):
        if name != "z":
            torch.testing.assert_close(named[name].grad, _vec(case, f"grad/{name}"), **TOL, msg=f"{case} {name}")
    for name, p in named.items():  # nothing learns that the reference keeps fixed
        if f"{case}/grad/{name}" not in VECTORS.files:
            assert p.grad is None or not p.requires_grad, f"{case}: {name} gets a gradient the reference lacks"


SMALL = {
    "vq": {"codebook_size": 16, "code_dim": 4, "entropy_loss_ratio": 0.1},
    "simvq": {"codebook_size": 16, "code_dim": 4, "entropy_loss_ratio": 0.1},
    "ibq": {"codebook_size": 16, "code_dim": 4, "entropy_loss_ratio": 0.1},
    "lfq": {"codebook_size": 16, "code_dim": 4, "entropy_loss_ratio": 0.1},
    "fsq": {"levels": [5, 4, 3, 2]},
}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
@pytest.mark.parametrize("latent", [(1, 6), (3, 3)])  # 1D tokens (H = 1, W = L) and a 2D grid
def test_contract(name: str, latent: tuple[int, int]) -> None:
    torch.manual_seed(0)
    quantizer = build_quantizer(name, **SMALL[name]).train()
    assert isinstance(quantizer, Quantizer)
    k, dc = quantizer.codebook_size, quantizer.code_dim
    z = torch.randn(3, dc, *latent, dtype=torch.bfloat16, requires_grad=True)

    quant, losses, codes = quantizer(z)
    assert quant.shape == (3, dc, *latent) and quant.dtype == torch.float32
    assert codes.shape == (3, latent[0] * latent[1]) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < k
    assert isinstance(losses, QuantizerLosses) and 0.0 < losses.usage <= 1.0
    # codes alone give the same codes, and decoding them gives the quantized output
    assert torch.equal(quantizer.quantize_to_codes(z), codes)
    torch.testing.assert_close(quantizer.lookup(codes, latent), quant.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(quantizer.lookup(codes.reshape(-1), latent), quant.detach(), atol=1e-6, rtol=0)

    (quant.square().sum() + losses.vq + losses.commit + losses.entropy).backward()
    assert z.grad is not None and z.grad.dtype == torch.bfloat16 and z.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in quantizer.parameters() if p.grad is not None)

    quantizer.eval()
    quant_eval, eval_losses, eval_codes = quantizer(z.detach())
    assert torch.equal(eval_codes, codes) and torch.equal(quant_eval, quant.detach())
    assert eval_losses.vq.item() == eval_losses.commit.item() == eval_losses.entropy.item() == 0.0


def test_vq_is_the_existing_quantizer() -> None:
    assert QUANTIZERS["vq"] is VectorQuantizer
    torch.manual_seed(0)
    built = build_quantizer("vq", codebook_size=8, code_dim=4, beta=0.5)
    torch.manual_seed(0)
    direct = VectorQuantizer(8, 4, beta=0.5)
    assert built.state_dict().keys() == direct.state_dict().keys() == {"embedding.weight", "codebook_used"}
    assert torch.equal(built.embedding.weight, direct.embedding.weight)


def test_state_dict_keys_follow_the_references() -> None:
    assert set(SimVQ(8, 4).state_dict()) == {"embedding.weight", "codebook_used", "codebook_transform.weight"}
    assert set(SimVQ(8, 4, codebook_transform="mlp").state_dict()) == {
        "embedding.weight", "codebook_used", *(f"codebook_transform.{i}.{p}" for i in (0, 2) for p in ("weight", "bias"))}
    assert not SimVQ(8, 4).embedding.weight.requires_grad
    assert set(LFQ(16, 4).state_dict()) == {"codebook_used"}
    fsq = FSQ([8, 5, 5, 5])
    assert fsq.codebook_size == 1000 and fsq.code_dim == 4 and fsq.state_dict()["codebook_used"].shape == (4000,)


def test_implicit_codebooks_enumerate_every_code() -> None:
    lfq, fsq = LFQ(16, 4), FSQ([3, 4, 2])
    # every point of the implicit grid quantizes to itself, and its code is its index
    for quantizer in (lfq, fsq):
        k = quantizer.codebook_size
        values = quantizer.lookup(torch.arange(k), (1, k))  # (1, Dc, 1, K)
        assert torch.unique(values[0, :, 0].t(), dim=0).shape[0] == k
        if quantizer is lfq:
            z = values
        else:  # the inverse of FSQ's bound maps each grid value to a point that rounds back to it
            half_l = (fsq._levels - 1) * (1 + 1e-3) / 2
            offset = torch.where(fsq._levels % 2 == 0, 0.5, 0.0)
            bounded = values[0, :, 0].t() * (fsq._levels // 2)  # (K, Dc) rounded levels
            z = (torch.atanh((bounded + offset) / half_l) - torch.atanh(offset / half_l)).t()[None, :, None, :]
        assert torch.equal(quantizer.quantize_to_codes(z), torch.arange(k)[None])


def test_ibq_gradient_reaches_every_code() -> None:
    torch.manual_seed(0)
    ibq = build_quantizer("ibq", codebook_size=32, code_dim=4).train()
    quant, losses, codes = ibq(torch.randn(2, 4, 2, 2))
    (quant.sum() + losses.vq + losses.commit).backward()
    assert torch.unique(codes).numel() < 32
    assert (ibq.embedding.weight.grad.abs().sum(dim=1) > 0).all()  # unselected codes learn too


def test_registry_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown quantizer 'pq'"):
        build_quantizer("pq", codebook_size=8, code_dim=4)
    with pytest.raises(QuantizerConfigError, match="takes no parameter levels"):
        build_quantizer("vq", codebook_size=8, code_dim=4, levels=[2, 2])
    with pytest.raises(QuantizerConfigError, match="missing"):
        build_quantizer("vq", code_dim=4)
    with pytest.raises(QuantizerConfigError, match="2\\*\\*code_dim = 16"):
        build_quantizer("lfq", codebook_size=8, code_dim=4)
    with pytest.raises(QuantizerConfigError, match="codebook_size 60, not 64"):
        build_quantizer("fsq", levels=[5, 4, 3], codebook_size=64)
    with pytest.raises(QuantizerConfigError, match="'linear' or 'mlp'"):
        build_quantizer("simvq", codebook_size=8, code_dim=4, codebook_transform="conv")
