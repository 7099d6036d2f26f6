"""Tokenizer-loss parity vectors from the official GigaTok `VQLoss` -> tests/assets/loss_vectors.{npz,json}.

The official code is imported, never copied. Extract it first (from the repository root):

    mkdir -p .official/GigaTok && cd .official/GigaTok
    G="git --git-dir=/work/.mirror/SilentView+GigaTok/repo"
    for f in $($G ls-tree -r --name-only HEAD tokenizer/tokenizer_image utils dataset | grep -v __pycache__); do
        mkdir -p "$(dirname "$f")"; $G show "HEAD:$f" > "$f"; done
    cd ../.. && .venv/bin/python .official/make_loss_vectors.py

What runs is the official trainer's loss in the trainer's mode (`vq_loss.train()`: the LPIPS lin-layer dropout is
active, see gigatok/tokenizer/losses.py), on the inputs, weights and cases of tests/assets/loss_inputs.py:
- stubs: modules the official files import but that play no part here (requests, wandb when absent;
  `utils.model_init`, whose real file imports the missing `vq_model.py`); `torch.distributed` reads rank 0;
  the frozen DINO ViT of the DINO discriminator and the LPIPS VGG16 are built without downloads and given
  procedural weights (as are the PatchGAN, the DINO heads and the LPIPS lin layers);
- the teacher: the official preprocessing (`vq_train.preprocess_raw_image`) in front of timm's DINOv2 ViT-S/14 with
  procedural hub-file weights and the official 16 x 16 positional-table resampling (the hub's DINOv2 code is not in
  the mirror; timm builds the same network);
- spies record the arguments and results of the official calls (reconstruction, LPIPS, GAN, LeCam and adaptive
  weight functions) without changing them; the official logging cache gives the semantic and quantizer terms;
- each DiffAug call draws from its own seeded generator (`daug_seed`) and the global RNG is reseeded before every
  generator call (`step_seed`), in both implementations.

Saved per case and step, as "{case}/s{step}/..." (official values under our term names, weighted as `TokenizerLoss`
reports them): gen/{rec, rec_direct, perceptual, perceptual_direct, gen_adv, gen_adv_direct, adaptive_weight,
disc_weight, semantic, vq, commit, entropy, total}, gen/grad_last_layer (PatchGAN cases), disc/{disc, disc_direct,
lecam, logits_real, logits_fake, lecam_ema_real, lecam_ema_fake, total}; the same under "lpips_eval/{case}/..." from
a second run with the official LPIPS in eval mode (no dropout); fn/* the GAN loss functions on fixed logits;
teacher/* a slice and the mean |.| of the teacher tokens. Crashes of the official code are recorded in the json.
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch


def repo_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise SystemExit("run from inside the gigatok checkout")


ROOT = repo_root()
ASSETS = ROOT / "tests" / "assets"
OFFICIAL = ROOT / ".official" / "GigaTok"
sys.path[:0] = [str(OFFICIAL), str(ASSETS)]

from loss_inputs import (  # noqa: E402
    CASES,
    GRID,
    case_params,
    daug_seed,
    dino_backbone_state,
    discriminator_weight,
    distill_features,
    gan_logits,
    lpips_weight,
    make_inputs,
    quantizer_terms,
    reconstructions,
    step_seed,
    teacher_state,
)
from procedural import procedural_tensor  # noqa: E402


def stub_module(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


for _name in ("requests", "wandb", "tqdm"):
    try:
        __import__(_name)
    except ImportError:
        stub_module(_name, tqdm=None)
stub_module("utils.model_init", load_encoders=None, load_model_from_config=None, custom_load=None)

import torchvision  # noqa: E402
from tokenizer.tokenizer_image import discriminator_dino as official_dino  # noqa: E402
from tokenizer.tokenizer_image import lpips as official_lpips  # noqa: E402
from tokenizer.tokenizer_image.vq import vq_loss as official  # noqa: E402
from tokenizer.tokenizer_image.vq import vq_train as official_train  # noqa: E402

official.dist = types.SimpleNamespace(get_rank=lambda: 0)  # single process: rank 0 without a process group
# LPIPS VGG16 without the ImageNet download; procedural weights are loaded below.
official_lpips.models = types.SimpleNamespace(vgg16=lambda pretrained=True: torchvision.models.vgg16(weights=None))
# The DINO discriminator's frozen ViT: procedural weights instead of the download, on the CPU.
_DINO_STATE = dino_backbone_state()
torch.hub.load_state_dict_from_url = lambda *args, **kwargs: {k: v.clone() for k, v in _DINO_STATE.items()}
official.DINODiscriminator = functools.partial(official_dino.DinoDisc, device="cpu")

LOG = logging.getLogger("official")
LOG.addHandler(logging.NullHandler())
LOG.propagate = False


def teacher_features(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, G*G, 384): official preprocessing + DINOv2 ViT-S/14 with the official table resampling."""
    import timm
    from timm.layers import resample_abs_pos_embed

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224).eval()
    state = {k: v for k, v in teacher_state().items() if k != "mask_token"}
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [GRID, GRID])  # official load_encoders
    vit.load_state_dict(state, strict=True)
    with torch.no_grad():
        x = official_train.preprocess_raw_image(images, "dinov2")  # encoder_type of "dinov2-vit-s"
        return vit.forward_features(x)[:, 1:]  # x_norm_patchtokens


def spy(fn, calls: list):
    """Wrap `fn`: record (args, kwargs, result) and return the result unchanged (exceptions propagate)."""
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result
    return wrapper


def load_procedural(module: torch.nn.Module, keep=lambda key: True, rule=procedural_tensor) -> None:
    state = module.state_dict()
    new = {k: rule(k, tuple(v.shape)) for k, v in state.items() if keep(k)}
    module.load_state_dict({**state, **new}, strict=True)


def build_official(name: str, lpips_train: bool = True) -> tuple[official.VQLoss, dict[str, list]]:
    vq = official.VQLoss(**case_params(name))
    load_procedural(vq.discriminator, rule=discriminator_weight)
    load_procedural(vq.perceptual_loss, keep=lambda k: k.startswith(("net.", "lin")), rule=lpips_weight)
    vq.train()  # the official trainer: vq_loss.train() (LPIPS dropout on)
    if not lpips_train:
        vq.perceptual_loss.eval()  # as VQLoss.__init__ leaves it: no dropout
    calls: dict[str, list] = {k: [] for k in ("rec", "perceptual", "gen", "disc", "lecam", "adaptive", "daug")}
    vq.rec_loss = spy(vq.rec_loss, calls["rec"])
    vq.gen_adv_loss = spy(vq.gen_adv_loss, calls["gen"])
    vq.disc_loss = spy(vq.disc_loss, calls["disc"])
    vq.calculate_adaptive_weight = spy(vq.calculate_adaptive_weight, calls["adaptive"])
    official.lecam_reg = spy(_LECAM_REG, calls["lecam"])
    vq.perceptual_loss.register_forward_hook(lambda m, args, out: calls["perceptual"].append(out.detach()))
    if hasattr(vq, "daug"):
        counter, aug = itertools.count(), vq.daug.aug

        def seeded_aug(x, blur=0.0):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(daug_seed(name, next(counter)))
                return aug(x, blur)
        vq.daug.aug = seeded_aug
    return vq, calls


_LECAM_REG = official.lecam_reg


def scalar(value) -> np.ndarray:
    return np.asarray(float(value), dtype=np.float32)


def run_case(name: str, inputs: dict, teacher_feats: torch.Tensor, inner_feat: torch.Tensor, out: dict,
             notes: dict, lpips_train: bool = True) -> None:
    params, steps, distill = CASES[name]
    p = case_params(name)
    vq, calls = build_official(name, lpips_train)
    last_layer = torch.nn.Parameter(inputs["last_layer"].clone())
    images = inputs["images"]
    for step in steps:
        key = f"{'' if lpips_train else 'lpips_eval/'}{name}/s{step}"
        for c in calls.values():
            c.clear()
        q = quantizer_terms(step)
        recon, recon_direct = reconstructions(inputs, last_layer, step)
        torch.manual_seed(step_seed(name, step))
        total = vq([[q["vq"], q["commit"], q["entropy"], q["usage"]], q["fea_rec"]], images, [recon, recon_direct],
                   optimizer_idx=0, global_step=step, exp_dir=None, last_layer=last_layer, logger=LOG, log_every=1,
                   ckpt_every=10**9, inner_feat=inner_feat if distill else None,
                   sem_enc_feat=teacher_feats if distill else None)
        info = vq.log_update_cache_generator[-1]
        direct = p["use_direct_rec_loss"] and step < p["aux_loss_end"]
        gan = step >= p["disc_start"]
        g = {
            "rec": calls["rec"][0][2], "rec_direct": calls["rec"][1][2] if direct else 0.0,
            "perceptual": calls["perceptual"][0].mean(),
            "perceptual_direct": calls["perceptual"][1].mean() if direct else 0.0,
            "gen_adv": calls["gen"][0][2] if gan else 0.0,
            "gen_adv_direct": calls["gen"][1][2] if gan and direct else 0.0,
            "adaptive_weight": calls["adaptive"][0][2] if calls["adaptive"] else 1.0,
            "disc_weight": info["(Generator)disc_weight"], "semantic": info["(Generator)proj_loss"],
            "vq": info["(Generator)vq_loss"], "commit": info["(Generator)commit_loss"],
            "entropy": info["(Generator)entropy_loss"], "total": total,
        }
        for term, value in g.items():
            out[f"{key}/gen/{term}"] = scalar(value)
        if p["disc_type"] == "patchgan":
            total.backward()
            out[f"{key}/gen/grad_last_layer"] = last_layer.grad.numpy().copy()
            last_layer.grad = None
        vq.discriminator.zero_grad(set_to_none=True)
        if not gan:
            continue
        for c in calls.values():
            c.clear()
        try:
            d_total = vq([[q["vq"], q["commit"], q["entropy"], q["usage"]], q["fea_rec"]], images,
                         [recon.detach(), recon_direct.detach()], optimizer_idx=1, global_step=step, exp_dir=None,
                         logger=LOG, log_every=1, ckpt_every=10**9)
        except Exception as err:  # the official D step of some settings cannot run
            notes.setdefault("crashes", {})[f"{key}/disc"] = f"{type(err).__name__}: {err}"
            continue
        (real, fake), _, raw = calls["disc"][0]
        d = {"disc": p["disc_weight"] * raw, "logits_real": real.mean(), "logits_fake": fake.mean(),
             "disc_direct": p["disc_weight"] * calls["disc"][1][2] if direct else 0.0,
             "lecam": p["lecam_weight"] * calls["lecam"][0][2] if calls["lecam"] else 0.0, "total": d_total}
        if vq.ema_logits is not None:
            d["lecam_ema_real"], d["lecam_ema_fake"] = vq.ema_logits.D_real, vq.ema_logits.D_fake
        for term, value in d.items():
            out[f"{key}/disc/{term}"] = scalar(value)


def crash_probe(name: str, step: int, inputs: dict, notes: dict) -> None:
    """Record the official failure of a generator call (e.g. the adaptive weight before disc_start)."""
    vq, _ = build_official(name)
    last_layer = torch.nn.Parameter(inputs["last_layer"].clone())
    recon, recon_direct = reconstructions(inputs, last_layer, step)
    q = quantizer_terms(step)
    try:
        vq([[q["vq"], q["commit"], q["entropy"], q["usage"]], q["fea_rec"]], inputs["images"], [recon, recon_direct],
           optimizer_idx=0, global_step=step, exp_dir=None, last_layer=last_layer, logger=LOG, log_every=1,
           ckpt_every=10**9)
    except Exception as err:
        notes.setdefault("crashes", {})[f"{name}/s{step}/gen"] = f"{type(err).__name__}: {err}"
    else:
        raise AssertionError(f"{name} step {step} was expected to fail in the official code")


def gan_functions(out: dict) -> None:
    real, fake = gan_logits()
    out["fn/logits_real"], out["fn/logits_fake"] = real.numpy(), fake.numpy()
    out["fn/hinge_d"] = scalar(official.hinge_d_loss(real, fake))
    out["fn/vanilla_d"] = scalar(official.vanilla_d_loss(real, fake))
    out["fn/non_saturating_d"] = scalar(official.non_saturating_d_loss(real, fake))
    out["fn/hinge_gen"] = scalar(official.hinge_gen_loss(fake))
    out["fn/non_saturating_gen"] = scalar(official.non_saturating_gen_loss(fake))
    ema = official.ema_losses(start_itr=3)
    for itr in range(1, 6):  # copies before start_itr, then decay 0.99
        ema.update((fake.mean() + 0.1 * itr).item(), "D_fake", itr)
        ema.update((real.mean() - 0.1 * itr).item(), "D_real", itr)
    out["fn/ema_real"], out["fn/ema_fake"] = scalar(ema.D_real), scalar(ema.D_fake)
    out["fn/lecam"] = scalar(_LECAM_REG(real, fake, ema))


def official_commit() -> str:
    """The SilentView/GigaTok commit the official files were extracted from (OFFICIAL_GIT_DIR: its git directory)."""
    git_dir = os.environ.get("OFFICIAL_GIT_DIR", "/work/.mirror/SilentView+GigaTok/repo")
    try:
        return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    torch.set_num_threads(1)
    inputs = make_inputs()
    teacher_feats = teacher_features(inputs["images"])
    inner_feat = distill_features(teacher_feats)
    out: dict[str, np.ndarray] = {"teacher/slice": teacher_feats[:, :4, :8].numpy().copy(),
                                  "teacher/abs_mean": scalar(teacher_feats.abs().mean())}
    notes: dict = {}
    for name in CASES:
        print(f"case {name}", flush=True)
        run_case(name, inputs, teacher_feats, inner_feat, out, notes)
        run_case(name, inputs, teacher_feats, inner_feat, out, notes, lpips_train=False)
    crash_probe("patchgan_adaptive", 1, inputs, notes)
    gan_functions(out)
    np.savez_compressed(ASSETS / "loss_vectors.npz", **out)
    meta = {
        "made_by": "tests/assets/make_loss_vectors.py (official GigaTok VQLoss)", "official_commit": official_commit(),
        "torch": torch.__version__, "images": list(inputs["images"].shape),
        "cases": {name: {"params": case_params(name), "steps": steps, "semantic": distill}
                  for name, (_, steps, distill) in CASES.items()},
        "teacher": "official preprocess_raw_image + timm vit_small_patch14_dinov2, procedural hub weights, 16x16",
        "lpips": "official trainer mode (Dropout(0.5) before each lin layer active); lpips_eval/*: the same runs "
                 "with the official LPIPS in eval mode (no dropout)",
        **notes,
    }
    (ASSETS / "loss_vectors.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(out)} arrays; crashes: {json.dumps(notes.get('crashes', {}), indent=1)}")


if __name__ == "__main__":
    main()
