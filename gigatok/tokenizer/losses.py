"""Tokenizer training objective: the official `VQLoss` (reconstruction, LPIPS, GAN, quantizer, semantic, shortcut).

Generator objective at 1-indexed step t (official `global_step = train_steps + 1`):

    L = w_rec * (rec(x, x_hat) + a_t * u * rec(x, x_dir))
      + w_p * (LPIPS(x, x_hat) + a_t * u * LPIPS(x, x_dir))
      + 1[t >= disc_start] * w_disc * lambda_ad * (G_adv(D(x_hat)) + a_t * u * G_adv(D(x_dir)))
      + vq + commit + entropy (already weighted by the quantizer; entropy dropped once t >= entropy_loss_end)
      + a_t * fea_rec_loss + proj_weight * L_sem

with a_t = 1[t < aux_loss_end], u = use_direct_rec_loss, lambda_ad = 1 unless `disc_adaptive_weight` (VQGAN's
gradient-norm ratio at the decoder's last layer) and L_sem = -mean cosine(student tokens, teacher tokens).
`codebook_weight` is read but, as in the official code, not applied. The discriminator objective is
w_disc * D_loss(D(x), D(sg(x_hat))) (+ the same on x_dir while shortcut losses are on) + lecam_weight * LeCam,
from step disc_start on. With the DINO discriminator both real and fake go through DiffAug in both steps.

`loss.params.official_compat: True` reproduces the official trainer's loss exactly, including its quirks (each is
listed in `TokenizerLoss`): LPIPS dropout, the swapped BCE arguments of the non-saturating losses, the DINO critic
scoring the main reconstruction in place of the shortcut one, and LeCam's EMA fed twice per step while the shortcut
losses are on. tests/tokenizer/test_loss_parity.py checks both settings against the official `VQLoss`, term by term.

Precision: the semantic loss, the GAN losses and the pixel reconstruction losses are computed in float32 with
autocast disabled; quantizer losses arrive in float32 from the quantizer. Half-precision norms of 768-d features
overflow (official GigaTok issue #6: NaN semantic loss under fp16).

Shape letters: B batch; H, W height and width of an image or feature map; G latent grid side (G*G 2D tokens);
Dt teacher width. The student (distill-MLP) features and the teacher tokens are both (B, G*G, Dt). In the formulas
above, L is a loss, D the discriminator and G_adv the generator's adversarial loss, not shape letters.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import ConfigError, LossParams, TrainerConfig
from gigatok.tokenizer.diffaug import DiffAug
from gigatok.tokenizer.discriminator import NLayerDiscriminator
from gigatok.tokenizer.discriminator_dino import DinoDisc
from gigatok.tokenizer.perceptual import LPIPS, random_backbone_requested
from gigatok.tokenizer.teacher import DinoV2Teacher
from gigatok.tokenizer.vq_model import TokenizerOutput

logger = logging.getLogger(__name__)

LECAM_INIT = 1000.0  # official ema_losses(init=1000., decay=0.99, start_itr=disc_start + 1000)
LECAM_DECAY = 0.99
LECAM_WARMUP = 1000
OFFICIAL_LPIPS_DROPOUT = 0.5  # nn.Dropout() in front of each official LPIPS lin layer, live in the trainer


# -- GAN losses: logits are float tensors of any shape; each returns a float32 scalar -------------------------------
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean ReLU(1 - D(x)) + mean ReLU(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat))), the logistic GAN loss."""
    return 0.5 * (F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean())


def non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (BCE(D(x), 1) + BCE(D(x_hat), 0)); equal to `vanilla_d_loss` (the official version swaps the BCE
    arguments, see the module notes in `TokenizerLoss`)."""
    real, fake = logits_real.float(), logits_fake.float()
    return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def hinge_gen_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean D(x_hat)."""
    return -logits_fake.float().mean()


def non_saturating_gen_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """BCE(D(x_hat), 1) = mean softplus(-D(x_hat))."""
    fake = logits_fake.float()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


DISC_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "non-saturating": non_saturating_d_loss}
GEN_ADV_LOSSES = {"hinge": hinge_gen_loss, "non-saturating": non_saturating_gen_loss}


def official_non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The official `non_saturating_d_loss`, which passes BCE(target, logits) instead of BCE(logits, target):
    0.5 * (softplus(1) - mean D(x) + log 2); the fake term is a constant, so D gets no gradient from fakes."""
    real, fake = logits_real.float(), logits_fake.float()
    return 0.5 * (F.binary_cross_entropy_with_logits(torch.ones_like(real), real)
                  + F.binary_cross_entropy_with_logits(torch.zeros_like(fake), fake))


def official_non_saturating_gen_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The official `non_saturating_gen_loss` (same swap): softplus(1) - mean D(x_hat), the hinge loss + a constant."""
    fake = logits_fake.float()
    return F.binary_cross_entropy_with_logits(torch.ones_like(fake), fake)


def lecam_reg(logits_real: torch.Tensor, logits_fake: torch.Tensor, ema_real: torch.Tensor | float,
              ema_fake: torch.Tensor | float) -> torch.Tensor:
    """LeCam regulariser (Tseng et al. 2021): mean ReLU(D(x) - ema_fake)^2 + mean ReLU(ema_real - D(x_hat))^2."""
    return (F.relu(logits_real.float() - ema_fake).pow(2).mean()
            + F.relu(ema_real - logits_fake.float()).pow(2).mean())


def semantic_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Negative mean per-token cosine similarity, in float32 whatever the autocast state.

    Args:
        student: (B, G*G, Dt) distill-MLP features, any float dtype.
        teacher: (B, G*G, Dt) teacher patch tokens, any float dtype.

    Returns:
        float32 scalar in [-1, 1]; -1 means perfectly aligned.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"semantic regularisation: student features {tuple(student.shape)} and teacher features "
                         f"{tuple(teacher.shape)} differ. The teacher token grid must equal the tokenizer's latent "
                         "grid (teacher_grid_size = tokenizer.grid_size) and out_inner_dim the teacher's width.")
    with torch.autocast(device_type=student.device.type, enabled=False):
        s = F.normalize(student.float(), dim=-1)  # fp16 squares of ~300-magnitude features would overflow
        t = F.normalize(teacher.float(), dim=-1)
        return -(s * t).sum(dim=-1).mean()  # (B, G*G) cosines -> scalar; equals the official per-image loop


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance: ||grad nll|| / (||grad g|| + 1e-4) at `last_layer`, clamped to [0, 1e4], detached."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads.float()) / (torch.norm(g_grads.float()) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach()


class TokenizerLoss(nn.Module):
    """The official `VQLoss`: holds the discriminator, LPIPS and (optionally) the frozen semantic teacher.

    Only the discriminator is a registered submodule with parameters; LPIPS is frozen and the teacher is held
    outside the module tree (like the official code), so neither reaches an optimizer or DDP's gradient buckets.

    Deviations from the official trainer, each undone by `params.official_compat: True` unless marked (crash), where
    the official code cannot run and there is nothing to reproduce:
    - LPIPS is deterministic. The official trainer calls `vq_loss.train()`, which also puts its LPIPS in train mode:
      the Dropout(0.5) in front of each lin layer is then live and the perceptual terms are noisy (unbiased). This is
      the one deviation that touches the released configs. (compat: the same dropout, from the global RNG, while
      this module is in train mode.)
    - `non-saturating` losses use BCE(logits, target); the official code calls BCE(target, logits), which turns the
      generator loss into the hinge loss plus a constant and makes the fake-logit term of D constant (no gradient).
      (compat: `official_non_saturating_*`.)
    - with the DINO discriminator, the shortcut GAN terms (GAN on while t < aux_loss_end) score the shortcut
      reconstruction; the official code scores the main reconstruction a second time (with a fresh DiffAug draw),
      in both the generator and the discriminator objective. (compat: the same.)
    - LeCam's EMA is fed once per discriminator step; the official code feeds it again with the shortcut fakes while
      the shortcut terms are on, so the EMA of the fake logits ends on the shortcut logits. (compat: the same.)
    - (crash) `vanilla`/`non-saturating` discriminator losses run; the official D step always passes ema=/iter= to
      them and stops with a TypeError.
    - (crash) the adaptive weight is 1 before disc_start; the official code differentiates the int 0 there and stops.
    - `perceptual_weight: 0` skips LPIPS entirely (no VGG weights needed); same value.
    The official trainer also never passes `disc_adaptive_weight` and `lecam_weight` to its `VQLoss` (adaptive weight
    off, LeCam weight 0.001 whatever the config says); both are honoured here, in both settings.

    Args:
        params: `loss.params`.
        trainer: `trainer` section; with `distill_loss: True` a `DinoV2Teacher(distill_model)` is built unless one is
            passed as `teacher`.
        teacher_grid_size: the tokenizer's latent grid side G (`tokenizer.grid_size`; 16 for 256 px); the teacher
            yields G*G tokens to match the distill features.
        teacher: a prebuilt teacher (any module mapping images to (B, G*G, Dt) float features).
        teacher_weights / teacher_random_init: weights file / random test mode of the built teacher.
        lpips_random_backbone: random VGG for LPIPS (tests only; also enabled by GIGATOK_LPIPS_RANDOM_BACKBONE=1).
        vgg_path / lin_path: LPIPS weight files (defaults: torch-hub cache / the lpips package).
        dino_disc_weights / dino_disc_random_init: weights file / random test mode of the DINO discriminator.
    """

    def __init__(self, params: LossParams, trainer: TrainerConfig | None = None, *, teacher_grid_size: int = 16,
                 teacher: nn.Module | None = None, teacher_weights: str | os.PathLike | None = None,
                 teacher_random_init: bool = False, lpips_random_backbone: bool = False,
                 vgg_path: str | os.PathLike | None = None, lin_path: str | os.PathLike | None = None,
                 dino_disc_weights: str | os.PathLike | None = None, dino_disc_random_init: bool = False) -> None:
        super().__init__()
        _validate(params)
        self.params = params
        self.disc_type = params.disc_type
        if params.disc_type == "patchgan":
            self.discriminator: nn.Module = NLayerDiscriminator(3, params.disc_dim, params.disc_num_layers, params.kw,
                                                               params.norm)
            self.daug = None
        else:  # dinodisc
            self.discriminator = DinoDisc(dino_disc_weights, random_init=dino_disc_random_init)
            self.daug = DiffAug(prob=1.0, cutout=0.2)
        self.official_compat = params.official_compat
        self.disc_loss_fn = DISC_LOSSES[params.disc_loss]
        self.gen_adv_loss_fn = GEN_ADV_LOSSES[params.gen_adv_loss]
        if self.official_compat and params.disc_loss == "non-saturating":
            self.disc_loss_fn = official_non_saturating_d_loss
        if self.official_compat and params.gen_adv_loss == "non-saturating":
            self.gen_adv_loss_fn = official_non_saturating_gen_loss
        self.rec_loss_fn = F.mse_loss if params.reconstruction_loss == "l2" else F.l1_loss

        self.perceptual_loss: LPIPS | None = None
        if params.perceptual_weight != 0:
            self.perceptual_loss = LPIPS(vgg_path, lin_path,
                                         random_backbone=lpips_random_backbone or random_backbone_requested())
            if self.official_compat:
                for lin in self.perceptual_loss.lins:  # taps in order: the official dropout draws, in its order
                    lin.register_forward_pre_hook(self._official_lin_dropout)
        if self.official_compat and (params.disc_adaptive_weight or (params.lecam and params.lecam_weight != 0.001)):
            logger.warning("loss.params.official_compat: the official trainer ignores disc_adaptive_weight and "
                           "lecam_weight (it runs without the adaptive weight and with LeCam weight 0.001); they are "
                           f"applied here as configured ({params.disc_adaptive_weight}, {params.lecam_weight})")

        if teacher is None and trainer is not None and trainer.distill_loss:
            teacher = DinoV2Teacher(trainer.distill_model, teacher_grid_size, teacher_weights, teacher_random_init)
        self._teacher = (teacher,)  # a tuple keeps the frozen teacher out of state_dict / parameters / DDP

        # LeCam EMA of the mean real / fake logits (buffers, so a trainer may checkpoint them with this module).
        self.register_buffer("lecam_ema_real", torch.tensor(LECAM_INIT))
        self.register_buffer("lecam_ema_fake", torch.tensor(LECAM_INIT))

    # -- helpers ----------------------------------------------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def drop_teacher(self) -> None:
        """Switch the semantic loss off for the rest of the run (official `freeze_but_decoder_iter` stage)."""
        self._teacher = (None,)

    def disc_active(self, step: int) -> bool:
        """Whether the GAN terms (and the discriminator update) are on at 1-indexed `step`."""
        return step >= self.params.disc_start

    def aux_active(self, step: int) -> bool:
        """Whether the shortcut losses are on at `step`; call the tokenizer with `rec_loss=loss.aux_active(step)`."""
        return step < self.params.aux_loss_end

    def _critic(self, images: torch.Tensor) -> torch.Tensor:
        """Discriminator logits, with DiffAug in front of the DINO critic."""
        if self.daug is not None:
            images = self.daug(images)
        return self.discriminator(images.contiguous())

    def _official_lin_dropout(self, lin: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """Forward pre-hook of each LPIPS lin layer under `official_compat`: Dropout(0.5) on its input (B, C, H, W),
        active while this loss module is in train mode, as in the official trainer."""
        return (F.dropout(args[0], OFFICIAL_LPIPS_DROPOUT, training=self.training),)

    def _perceptual(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if self.perceptual_loss is None:
            return images.new_zeros((), dtype=torch.float32)
        return self.perceptual_loss(images.contiguous(), recon.contiguous()).float().mean()

    def _rec(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.rec_loss_fn(images.float(), recon.float())

    def compute_teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, G*G, Dt) float32 teacher tokens (no grad)."""
        teacher = self.teacher
        if teacher is None:
            raise ValueError("no semantic teacher: set trainer.distill_loss: True or pass teacher_feats")
        weight = next(teacher.parameters(), None)
        if weight is not None and weight.device != images.device:
            teacher.to(images.device)  # the hidden teacher does not follow .to() of this module
        with torch.no_grad():
            return teacher(images).float()

    def _semantic(self, images: torch.Tensor, out: TokenizerOutput,
                  teacher_feats: torch.Tensor | None) -> torch.Tensor:
        if teacher_feats is None and self.teacher is None:
            return images.new_zeros((), dtype=torch.float32)  # distillation off
        if out.inner_feat is None:
            raise ValueError("semantic regularisation is on but the tokenizer returned no distill features: call "
                             "it with ret_inner_feat=True (and a config with distill_depth set)")
        if teacher_feats is None:
            teacher_feats = self.compute_teacher_features(images)
        return semantic_loss(out.inner_feat, teacher_feats.detach())

    # -- objectives -------------------------------------------------------------------------------------------------
    def generator_loss(self, images: torch.Tensor, out: TokenizerOutput, step: int,
                       teacher_feats: torch.Tensor | None = None, last_layer: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Tokenizer (generator) objective.

        Args:
            images: (B, 3, H, W) targets in [-1, 1].
            out: training output of the tokenizer, called with `rec_loss=self.aux_active(step)` and
                `ret_inner_feat=True` when distilling.
            step: 1-indexed global step (the first optimiser step is 1).
            teacher_feats: (B, G*G, Dt) precomputed teacher tokens; default: computed by the held teacher.
            last_layer: weight of the decoder's last layer; required with `disc_adaptive_weight` (under
                torch.no_grad(), a step that does not train the generator, the adaptive weight is 1).

        Returns:
            total: float32 scalar with grad.
            terms: detached float32 scalars, raw (unweighted) values: rec, perceptual, rec_direct, perceptual_direct,
                fea_rec, gen_adv, gen_adv_direct, semantic, vq, commit, entropy (these three as weighted by the
                quantizer), codebook_usage, disc_weight (effective, 0 before disc_start), adaptive_weight, total.
        """
        p = self.params
        aux = self.aux_active(step)
        direct = aux and p.use_direct_rec_loss
        zero = images.new_zeros((), dtype=torch.float32)

        rec = self._rec(images, out.recon)
        perceptual = self._perceptual(images, out.recon)
        rec_direct = perceptual_direct = zero
        if direct:
            if out.recon_direct is None:
                raise ValueError(f"step {step} < aux_loss_end {p.aux_loss_end} with use_direct_rec_loss, but the "
                                 "tokenizer output has no recon_direct: call it with rec_loss=loss.aux_active(step)")
            rec_direct = self._rec(images, out.recon_direct)
            perceptual_direct = self._perceptual(images, out.recon_direct)
        fea_rec = torch.as_tensor(out.fea_rec_loss, device=images.device).float() if aux else zero

        disc_weight = p.disc_weight if self.disc_active(step) else 0.0
        gen_adv = gen_adv_direct = zero
        ad_weight = torch.ones((), device=images.device)
        if self.disc_active(step):
            gen_adv = self.gen_adv_loss_fn(self._critic(out.recon))
            if direct:
                gen_adv_direct = self.gen_adv_loss_fn(self._critic(self._direct_fake(out.recon, out.recon_direct)))
            if p.disc_adaptive_weight and torch.is_grad_enabled():
                if last_layer is None:
                    raise ValueError("disc_adaptive_weight: True needs last_layer (the decoder's last conv weight)")
                nll = p.reconstruction_weight * (rec + rec_direct) + p.perceptual_weight * perceptual
                ad_weight = adaptive_weight(nll, gen_adv, last_layer)

        q = out.quant_losses
        vq, commit = q.vq.float(), q.commit.float()
        entropy = q.entropy.float()
        if p.entropy_loss_end is not None and step >= p.entropy_loss_end:
            entropy = zero
        semantic = self._semantic(images, out, teacher_feats)

        with torch.autocast(device_type=images.device.type, enabled=False):
            total = (p.reconstruction_weight * (rec + rec_direct)
                     + p.perceptual_weight * (perceptual + perceptual_direct)
                     + ad_weight * disc_weight * (gen_adv + gen_adv_direct)
                     + vq + commit + entropy + fea_rec + p.proj_weight * semantic)
        terms = {
            "rec": rec, "perceptual": perceptual, "rec_direct": rec_direct, "perceptual_direct": perceptual_direct,
            "fea_rec": fea_rec, "gen_adv": gen_adv, "gen_adv_direct": gen_adv_direct, "semantic": semantic,
            "vq": vq, "commit": commit, "entropy": entropy,
            "codebook_usage": torch.tensor(float(q.usage), device=images.device),
            "disc_weight": torch.tensor(float(disc_weight), device=images.device), "adaptive_weight": ad_weight,
            "total": total,
        }
        return total, {k: v.detach().float() for k, v in terms.items()}

    def _direct_fake(self, recon: torch.Tensor, recon_direct: torch.Tensor) -> torch.Tensor:
        """What the shortcut GAN terms score: the shortcut reconstruction; under `official_compat` with the DINO
        critic the main one again (official quirk)."""
        return recon if self.official_compat and self.daug is not None else recon_direct

    def discriminator_loss(self, images: torch.Tensor, recon_detached: torch.Tensor, step: int,
                           recon_direct_detached: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator objective (call only when `disc_active(step)`; before that it returns a constant 0).

        Args:
            images: (B, 3, H, W) real images in [-1, 1].
            recon_detached: (B, 3, H, W) reconstructions (detached here anyway).
            step: 1-indexed global step.
            recon_direct_detached: shortcut reconstructions; adds their term while `aux_active(step)` and
                `use_direct_rec_loss` (never the case in the released configs: aux_loss_end < disc_start).

        Returns:
            loss: float32 scalar (grad w.r.t. the discriminator).
            terms: detached scalars disc (weighted adversarial loss), disc_direct, lecam (weighted), logits_real,
                logits_fake (mean logits).
        """
        p = self.params
        zero = images.new_zeros((), dtype=torch.float32)
        if not self.disc_active(step):
            return zero, {"disc": zero, "disc_direct": zero, "lecam": zero, "logits_real": zero, "logits_fake": zero}
        real, fake = images.detach(), recon_detached.detach()
        if self.daug is not None:
            # Official order: the fake batch is augmented and scored first.
            logits_fake = self._critic(fake).float()
            logits_real = self._critic(real).float()
        else:
            logits_real = self._critic(real).float()
            logits_fake = self._critic(fake).float()
        disc = p.disc_weight * self.disc_loss_fn(logits_real, logits_fake)

        disc_direct, logits_direct = zero, None
        if self.aux_active(step) and p.use_direct_rec_loss and recon_direct_detached is not None:
            logits_direct = self._critic(self._direct_fake(fake, recon_direct_detached.detach())).float()
            disc_direct = p.disc_weight * self.disc_loss_fn(logits_real, logits_direct)

        lecam = zero
        if p.lecam:
            self._update_lecam_ema(logits_real, logits_fake, step)
            if self.official_compat and logits_direct is not None:  # official: the shortcut D loss feeds it again
                self._update_lecam_ema(logits_real, logits_direct, step)
            if step > p.disc_start:
                lecam = p.lecam_weight * lecam_reg(logits_real, logits_fake, self.lecam_ema_real, self.lecam_ema_fake)

        loss = disc + disc_direct + lecam
        terms = {"disc": disc, "disc_direct": disc_direct, "lecam": lecam,
                 "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return loss, {k: v.detach().float() for k, v in terms.items()}

    @torch.no_grad()
    def _update_lecam_ema(self, logits_real: torch.Tensor, logits_fake: torch.Tensor, step: int) -> None:
        """EMA (decay 0.99) of the mean logits; plain copies until disc_start + 1000 (official warm-up)."""
        decay = LECAM_DECAY if step >= self.params.disc_start + LECAM_WARMUP else 0.0
        self.lecam_ema_fake.mul_(decay).add_((1 - decay) * logits_fake.mean())
        self.lecam_ema_real.mul_(decay).add_((1 - decay) * logits_real.mean())


def _validate(params: LossParams) -> None:
    """Reject loss settings that the official code has but this re-implementation does not build."""
    if params.disc_type not in ("patchgan", "dinodisc"):
        raise ValueError(f"loss.params.disc_type '{params.disc_type}' is not supported; use 'patchgan' or 'dinodisc' "
                         "(the official stylegan/patchganv2/patchgan_SeD/patchvit options are unused experiments)")
    if params.disc_loss not in DISC_LOSSES:
        raise ValueError(f"loss.params.disc_loss '{params.disc_loss}' is not supported; choose one of "
                         f"{sorted(DISC_LOSSES)} (r3gan is not implemented)")
    if params.gen_adv_loss not in GEN_ADV_LOSSES:
        raise ValueError(f"loss.params.gen_adv_loss '{params.gen_adv_loss}' is not supported; choose one of "
                         f"{sorted(GEN_ADV_LOSSES)} (r3gan is not implemented)")
    if params.reconstruction_loss not in ("l1", "l2"):
        raise ValueError(f"loss.params.reconstruction_loss must be 'l1' or 'l2', got '{params.reconstruction_loss}'")
    if params.perceptual_model != "vgg" or params.resnet_perceptual:
        raise ValueError("only the LPIPS-VGG perceptual loss is implemented (perceptual_model: vgg, "
                         "resnet_perceptual: False)")
    if params.blur_ds:
        raise ValueError("loss.params.blur_ds: True (BlurPool PatchGAN) is not implemented; no released config uses it")
    if params.use_semantic_input:
        raise ConfigError("loss.params.use_semantic_input: True (the semantic PatchGAN-V2 discriminator, deprecated in "
                          "the official code) is not implemented; set it to False (no released config uses it)")
