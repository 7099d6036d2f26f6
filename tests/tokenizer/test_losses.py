"""Training objective: GAN losses, gating by step, adaptive weight, LeCam, semantic loss precision, end to end."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from gigatok.builders import build_tokenizer
from gigatok.config import LossParams, load_config
from gigatok.tokenizer.losses import (
    TokenizerLoss,
    adaptive_weight,
    hinge_d_loss,
    hinge_gen_loss,
    lecam_reg,
    non_saturating_d_loss,
    non_saturating_gen_loss,
    semantic_loss,
    vanilla_d_loss,
)
from gigatok.tokenizer.quantizer import QuantizerLosses
from gigatok.tokenizer.vq_model import TokenizerOutput

REAL = [2.0, -0.5, 0.3, 1.0]
FAKE = [-2.0, 0.5, 1.5, -1.0]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# -- GAN loss formulas against hand computations ---------------------------------------------------------------------
def test_gan_losses_match_hand_computation():
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    hinge = 0.5 * (_mean(max(0.0, 1 - r) for r in REAL) + _mean(max(0.0, 1 + f) for f in FAKE))
    vanilla = 0.5 * (_mean(_softplus(-r) for r in REAL) + _mean(_softplus(f) for f in FAKE))
    assert hinge_d_loss(real, fake).item() == pytest.approx(hinge, rel=1e-6)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(vanilla, rel=1e-6)
    assert non_saturating_d_loss(real, fake).item() == pytest.approx(vanilla, rel=1e-6)  # BCE(real,1)+BCE(fake,0)
    assert hinge_gen_loss(fake).item() == pytest.approx(-_mean(FAKE), rel=1e-6)
    assert non_saturating_gen_loss(fake).item() == pytest.approx(_mean(_softplus(-f) for f in FAKE), rel=1e-6)
    # LeCam: ReLU(D(x) - ema_fake)^2 and ReLU(ema_real - D(x_hat))^2
    ema_real, ema_fake = 0.5, -0.2
    expected = _mean(max(0.0, r - ema_fake) ** 2 for r in REAL) + _mean(max(0.0, ema_real - f) ** 2 for f in FAKE)
    assert lecam_reg(real, fake, ema_real, ema_fake).item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_weight_formula_and_clamp():
    w = nn.Parameter(torch.ones(3, 4))
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    weight = adaptive_weight((w * a).sum(), (w * b).sum(), w)  # gradients at w are exactly a and b
    assert weight.item() == pytest.approx((a.norm() / (b.norm() + 1e-4)).item(), rel=1e-5)
    assert not weight.requires_grad
    assert adaptive_weight((w * a * 10).sum(), (w * 0).sum(), w).item() == pytest.approx(1e4)  # clamped


# -- the generator / discriminator objectives with a transparent stub critic -------------------------------------------
class FirstChannelCritic(nn.Module):
    """Stub discriminator whose logits are the first image channel: tests choose the logits through the images."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1]


class L1Perceptual(nn.Module):
    """Stub perceptual distance: per-image mean absolute difference, (B,)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean(dim=(1, 2, 3))


def _stub_loss(**overrides) -> TokenizerLoss:
    params = LossParams(disc_start=10, aux_loss_end=5, use_direct_rec_loss=True, perceptual_weight=0.0, disc_dim=4,
                        **overrides)
    loss = TokenizerLoss(params)
    loss.discriminator = FirstChannelCritic()
    loss.perceptual_loss = L1Perceptual()
    loss.params = dataclasses.replace(params, perceptual_weight=2.0)
    return loss


def _fake_output(seed: int = 0, with_direct: bool = True) -> tuple[torch.Tensor, TokenizerOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images, recon, recon_direct = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1 for _ in range(3))
    out = TokenizerOutput(
        recon=recon,
        quant_losses=QuantizerLosses(torch.tensor(0.1), torch.tensor(0.02), torch.tensor(-0.003), 0.25),
        codes=torch.zeros(2, 4, dtype=torch.long),
        recon_direct=recon_direct if with_direct else None,
        fea_rec_loss=torch.tensor(0.3),
        inner_feat=torch.randn(2, 4, 6, generator=g),
    )
    teacher_feats = torch.randn(2, 4, 6, generator=g)
    return images, out, teacher_feats


def _hand_terms(images, out, teacher_feats):
    mse = lambda a, b: ((a - b) ** 2).mean().item()  # noqa: E731
    lp = lambda a, b: (a - b).abs().mean().item()  # noqa: E731
    cos = torch.nn.functional.cosine_similarity(out.inner_feat, teacher_feats, dim=-1)
    return {
        "rec": mse(images, out.recon), "rec_direct": mse(images, out.recon_direct),
        "perceptual": lp(images, out.recon), "perceptual_direct": lp(images, out.recon_direct),
        "gen_adv": -out.recon[:, 0].mean().item(), "semantic": -cos.mean().item(),
    }


def test_generator_objective_and_step_gating():
    loss = _stub_loss(entropy_loss_end=7)
    images, out, teacher_feats = _fake_output()
    h = _hand_terms(images, out, teacher_feats)
    quant = 0.1 + 0.02 - 0.003
    base = h["rec"] + 2.0 * h["perceptual"] + 0.5 * h["semantic"]

    total, terms = loss.generator_loss(images, out, step=1, teacher_feats=teacher_feats)  # shortcut losses on
    expected = base + h["rec_direct"] + 2.0 * h["perceptual_direct"] + 0.3 + quant
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert terms["gen_adv"] == 0 and terms["disc_weight"] == 0 and terms["fea_rec"].item() == pytest.approx(0.3)
    assert terms["codebook_usage"].item() == pytest.approx(0.25)
    assert terms["semantic"].item() == pytest.approx(h["semantic"], rel=1e-5)

    # step == aux_loss_end: shortcut terms off (and recon_direct may be absent)
    _, out_no_direct, _ = _fake_output(with_direct=False)
    total, terms = loss.generator_loss(images, out_no_direct, step=5, teacher_feats=teacher_feats)
    assert total.item() == pytest.approx(base + quant, rel=1e-5)
    assert terms["rec_direct"] == 0 and terms["fea_rec"] == 0

    # step >= entropy_loss_end: entropy dropped; step 9 < disc_start: still no GAN term
    total, terms = loss.generator_loss(images, out_no_direct, step=9, teacher_feats=teacher_feats)
    assert total.item() == pytest.approx(base + 0.1 + 0.02, rel=1e-5) and terms["entropy"] == 0

    # step == disc_start: 0.5 * hinge generator loss joins
    total, terms = loss.generator_loss(images, out_no_direct, step=10, teacher_feats=teacher_feats)
    assert terms["gen_adv"].item() == pytest.approx(h["gen_adv"], rel=1e-5)
    assert total.item() == pytest.approx(base + 0.12 + 0.5 * h["gen_adv"], rel=1e-5)
    assert terms["disc_weight"].item() == 0.5
    assert all(not v.requires_grad and v.dtype == torch.float32 for v in terms.values())


def test_generator_errors_are_explicit():
    loss = _stub_loss()
    images, out, teacher_feats = _fake_output(with_direct=False)
    with pytest.raises(ValueError, match="rec_loss=loss.aux_active"):
        loss.generator_loss(images, out, step=1, teacher_feats=teacher_feats)
    out.inner_feat = None
    with pytest.raises(ValueError, match="ret_inner_feat=True"):
        loss.generator_loss(images, out, step=6, teacher_feats=teacher_feats)
    adaptive = _stub_loss(disc_adaptive_weight=True)
    _, out, _ = _fake_output(with_direct=False)
    with pytest.raises(ValueError, match="last_layer"):
        adaptive.generator_loss(images, out, step=10, teacher_feats=teacher_feats)
    for bad in ({"disc_type": "stylegan"}, {"disc_loss": "r3gan"}, {"gen_adv_loss": "vanilla"},
                {"reconstruction_loss": "l3"}, {"blur_ds": True}, {"perceptual_model": "resnet50"}):
        with pytest.raises(ValueError):
            TokenizerLoss(LossParams(perceptual_weight=0.0, **bad))


def test_adaptive_weight_inside_the_objective():
    loss = _stub_loss(disc_adaptive_weight=True)
    loss.params = dataclasses.replace(loss.params, perceptual_weight=0.0)
    images, out, teacher_feats = _fake_output(with_direct=False)
    w = nn.Parameter(torch.ones(()))  # "last layer": recon = w * base
    base = out.recon.clone()
    out.recon = w * base
    _, terms = loss.generator_loss(images, out, step=10, teacher_feats=teacher_feats, last_layer=w)
    d_rec = (-2 * base * (images - base)).mean()  # d/dw mean((x - w b)^2) at w = 1
    d_gen = -base[:, 0].mean()  # d/dw of -mean(w b[:, 0])
    assert terms["adaptive_weight"].item() == pytest.approx((d_rec.abs() / (d_gen.abs() + 1e-4)).item(), rel=1e-4)


def test_discriminator_objective_gating_and_lecam():
    loss = _stub_loss(lecam=True, lecam_weight=0.1)
    images = torch.zeros(2, 3, 2, 2)
    images[:, 0] = torch.tensor(REAL).view(2, 2)
    recon = torch.zeros(2, 3, 2, 2)
    recon[:, 0] = torch.tensor(FAKE).view(2, 2)
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)

    d, terms = loss.discriminator_loss(images, recon, step=9)  # before disc_start: nothing
    assert d.item() == 0 and not loss.disc_active(9) and loss.lecam_ema_real.item() == 1000.0

    d, terms = loss.discriminator_loss(images, recon, step=10)  # first D step: EMA = current means, no LeCam yet
    assert d.item() == pytest.approx(0.5 * hinge_d_loss(real, fake).item(), rel=1e-6)
    assert terms["lecam"] == 0 and terms["logits_real"].item() == pytest.approx(_mean(REAL))
    assert loss.lecam_ema_real.item() == pytest.approx(_mean(REAL)) and loss.lecam_ema_fake.item() == _mean(FAKE)

    d, terms = loss.discriminator_loss(images, recon, step=11)  # step > disc_start: LeCam on
    reg = 0.1 * lecam_reg(real, fake, _mean(REAL), _mean(FAKE)).item()
    assert terms["lecam"].item() == pytest.approx(reg, rel=1e-6)
    assert d.item() == pytest.approx(0.5 * hinge_d_loss(real, fake).item() + reg, rel=1e-6)

    shifted = recon.clone()
    shifted[:, 0] += 1.0
    loss.discriminator_loss(images, shifted, step=1010)  # after disc_start + 1000 warm-up steps: decay 0.99
    assert loss.lecam_ema_fake.item() == pytest.approx(0.99 * _mean(FAKE) + 0.01 * (_mean(FAKE) + 1), rel=1e-6)


def test_dino_disc_objective_uses_diffaug_on_real_and_fake():
    loss = TokenizerLoss(LossParams(disc_type="dinodisc", disc_start=1, perceptual_weight=0.0),
                         dino_disc_random_init=True)
    assert all(k.startswith(("discriminator.heads.", "lecam_ema")) for k in loss.state_dict())
    calls = []
    daug = loss.daug
    loss.daug = lambda x: calls.append(x.shape) or daug(x, generator=torch.Generator().manual_seed(len(calls)))
    loss.discriminator = FirstChannelCritic()
    images, out, _ = _fake_output(with_direct=False)
    out.inner_feat = None
    loss.generator_loss(images, out, step=1)
    assert len(calls) == 1  # the fake
    loss.discriminator_loss(images, out.recon, step=1)
    assert len(calls) == 3  # fake and real


# -- semantic loss and precision ----------------------------------------------------------------------------------------
def test_semantic_loss_is_negative_mean_cosine():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, L=2, D=2)
    teacher = torch.tensor([[[2.0, 0.0], [3.0, 3.0]]])
    expected = -(1.0 + 3 / math.sqrt(18)) / 2
    assert semantic_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert semantic_loss(student * 1e3, teacher).item() == pytest.approx(expected, rel=1e-6)  # scale invariant
    with pytest.raises(ValueError, match="teacher_grid_size"):
        semantic_loss(torch.zeros(1, 64, 768), torch.zeros(1, 256, 768))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semantic_loss_finite_under_autocast_with_large_features(dtype):
    g = torch.Generator().manual_seed(0)
    student = (300 * torch.randn(2, 256, 768, generator=g)).to(dtype)
    teacher = (300 * torch.randn(2, 256, 768, generator=g) + 0.5 * student.float()).to(dtype)
    naive = (student.half() * student.half()).sum(-1)  # what a half-precision l2 norm computes first
    assert torch.isinf(naive).any()  # 768 * 300^2 > 65504: fp16 overflows
    reference = torch.nn.functional.cosine_similarity(student.double(), teacher.double(), dim=-1).mean().neg()
    with torch.autocast(device_type="cpu", dtype=dtype):
        got = semantic_loss(student, teacher)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(reference.item(), abs=1e-5)
    # Through the whole objective: the half-precision distill features give a finite float32 total.
    loss = _stub_loss()
    images, out, _ = _fake_output(with_direct=False)
    out.inner_feat = student
    with torch.autocast(device_type="cpu", dtype=dtype):
        total, terms = loss.generator_loss(images, out, step=6, teacher_feats=teacher)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert terms["semantic"].item() == pytest.approx(reference.item(), abs=1e-5)


# -- end to end on the tiny config -----------------------------------------------------------------------------------
def test_end_to_end_debug_config_backward():
    torch.manual_seed(0)
    config = load_config("configs/vq/VQ_debug.yaml")
    tokenizer = build_tokenizer(config).train()
    loss = TokenizerLoss(config.loss.params, config.trainer, teacher_grid_size=tokenizer.grid_size,
                         teacher_random_init=True, lpips_random_backbone=True)
    assert loss.teacher is not None and not any(k.startswith("_teacher") for k in loss.state_dict())
    assert not any(p is q for p in loss.teacher.parameters() for q in loss.parameters())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    disc_start = config.loss.params.disc_start
    for step in (1, disc_start):
        out = tokenizer(images, rec_loss=loss.aux_active(step), ret_inner_feat=True)
        total, terms = loss.generator_loss(images, out, step, last_layer=tokenizer.decoder.conv_out.weight)
        tokenizer.zero_grad(set_to_none=True)
        total.backward()
        grads = [p.grad for p in tokenizer.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(grad).all() for grad in grads)
        assert tokenizer.s1to2decoder.distill_mlp[0].weight.grad.abs().sum() > 0  # semantic loss reaches the MLP
        assert torch.isfinite(total) and terms["semantic"] != 0
        assert (terms["rec_direct"] > 0) == (step == 1) and (terms["gen_adv"] != 0) == (step == disc_start)
    d_loss, d_terms = loss.discriminator_loss(images, out.recon.detach(), disc_start)
    d_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in loss.discriminator.parameters())
    assert set(d_terms) == {"disc", "disc_direct", "lecam", "logits_real", "logits_fake"}
