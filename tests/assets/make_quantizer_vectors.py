"""Quantizer parity vectors from the reference code -> tests/assets/quantizer_vectors.{npz,json}.

The reference code is imported, never copied. Extract it first (from the repository root):

    mkdir -p .official/GigaTok && cd .official/GigaTok
    G="git --git-dir=/work/.mirror/SilentView+GigaTok/repo"
    for f in $($G ls-tree -r --name-only HEAD tokenizer/tokenizer_image utils | grep -v __pycache__); do
        mkdir -p "$(dirname "$f")"; $G show "HEAD:$f" > "$f"; done
    cd ../.. && mkdir -p .official/SEED-Voken/src/IBQ/modules/vqvae
    git --git-dir=/work/.mirror/TencentARC+SEED-Voken/repo show HEAD:src/IBQ/modules/vqvae/quantize.py \
        > .official/SEED-Voken/src/IBQ/modules/vqvae/quantize.py
    .venv/bin/python tests/assets/make_quantizer_vectors.py

References:
- simvq: GigaTok `tokenizer/tokenizer_image/vq/vq_vit_model.py` `VectorQuantizer(simvq=True, codebook_transform=
  "linear" | "mlp", freeze_codebook=True)`, l2-normalised, entropy loss on;
- lfq: GigaTok `tokenizer/tokenizer_image/vq/lfq.py` `LFQ(dim, beta, entropy_loss_ratio, n_e)`;
- fsq: GigaTok `tokenizer/tokenizer_image/fsq/fsq_model.py` `FSQ(levels)`;
- ibq: SEED-Voken `src/IBQ/modules/vqvae/quantize.py` `IndexPropagationQuantize(n_e, e_dim, beta,
  use_entropy_loss=True, entropy_temperature)`; its entropy term is weighted by `entropy_loss_ratio` here, as
  SEED-Voken's `VQLPIPSWithDiscriminator` weights it by `entropy_loss_weight`.

Each case runs the reference in train mode on a procedural input z (B, Dc, H, W) with procedural weights and saves,
under "{case}/": z, w (the weight of the fixed scalar loss), param/<name> (the reference's parameters, under our
state_dict names), quant, codes (B, H*W), loss/<term> (our term names: vq, commit, entropy; ibq also quant_loss, the
reference's single double-quantization loss, in place of vq and commit), grad/z and grad/<param> of the scalar
loss sum(quant * w) + the sum of the loss terms. The json holds each case's quantizer name and our constructor parameters.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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
IBQ_FILE = ROOT / ".official" / "SEED-Voken" / "src" / "IBQ" / "modules" / "vqvae" / "quantize.py"
sys.path.insert(0, str(OFFICIAL))


def procedural(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """A fixed float32 tensor: N(0, scale^2) from a seeded generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def mirror_commit(name: str) -> str:
    return subprocess.run(["git", f"--git-dir=/work/.mirror/{name}/repo", "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()


def run_case(module: torch.nn.Module, z: torch.Tensor, call, params: dict[str, torch.nn.Parameter]
             ) -> dict[str, np.ndarray]:
    """Run `call(module, z) -> (quant, codes, losses dict)` and backprop sum(quant * w) + the loss terms."""
    module.train()
    used = getattr(module, "codebook_used", None)
    if used is not None:
        # the official buffer is an nn.Parameter (requires grad), whose in-place window update fails on CPU;
        # a plain buffer of the same size and values changes nothing else
        module.register_buffer("codebook_used", used.detach().clone())
    z = z.clone().requires_grad_(True)
    quant, codes, losses = call(module, z)
    w = procedural(99, *quant.shape)
    scalar = (quant * w).sum() + sum(losses.values())
    scalar.backward()
    out = {"z": z.detach(), "w": w, "quant": quant.detach(), "codes": codes.reshape(z.shape[0], -1).long(),
           "grad/z": z.grad}
    out.update({f"loss/{k}": torch.as_tensor(v).detach().float() for k, v in losses.items()})
    for name, p in params.items():
        out[f"param/{name}"] = p.detach()
        if p.grad is not None:
            out[f"grad/{name}"] = p.grad
    return {k: v.numpy() for k, v in out.items()}


def simvq_cases() -> tuple[dict, dict]:
    from tokenizer.tokenizer_image.vq.vq_vit_model import VectorQuantizer as OfficialVQ

    arrays, settings = {}, {}
    for case, transform, shape, seed in (("simvq_linear", "linear", (2, 8, 3, 3), 1),
                                         ("simvq_mlp", "mlp", (2, 8, 1, 6), 2)):
        k, dc = 32, shape[1]
        torch.manual_seed(seed)
        ref = OfficialVQ(k, dc, 0.25, 0.1, True, True, simvq=True, codebook_transform=transform,
                         freeze_codebook=True)
        params = {name: p for name, p in ref.named_parameters()}
        with torch.no_grad():  # procedural weights (the transform near identity so codes spread)
            for i, (name, p) in enumerate(sorted(params.items())):
                p.copy_(procedural(100 + i, *p.shape, scale=0.3) + (torch.eye(dc) if p.shape == (dc, dc) else 0))

        def call(m, z):
            quant, (vq, commit, entropy, _), (_, _, idx) = m(z)
            return quant, idx, {"vq": vq, "commit": commit, "entropy": entropy}

        arrays.update({f"{case}/{n}": v for n, v in run_case(ref, procedural(seed, *shape), call, params).items()})
        settings[case] = {"quantizer": "simvq", "params": {
            "codebook_size": k, "code_dim": dc, "beta": 0.25, "entropy_loss_ratio": 0.1, "l2_norm": True,
            "codebook_transform": transform, "freeze_codebook": True},
            "reference": f"vq_vit_model.VectorQuantizer({k}, {dc}, 0.25, 0.1, True, True, simvq=True, "
                         f"codebook_transform={transform!r}, freeze_codebook=True)"}
    return arrays, settings


def lfq_cases() -> tuple[dict, dict]:
    from tokenizer.tokenizer_image.vq.lfq import LFQ as OfficialLFQ

    dc, shape = 6, (2, 6, 1, 8)
    ref = OfficialLFQ(dim=dc, beta=0.25, entropy_loss_ratio=0.1, n_e=2**dc)

    def call(m, z):
        quant, (commit, entropy, _), (_, _, idx) = m(z)
        return quant, idx, {"commit": commit, "entropy": entropy}

    arrays, settings = {}, {}
    # "lfq_soft": z small enough that softmax(2 z.c / 0.01) is not one-hot, so the entropy term has a gradient
    for case, scale, seed in (("lfq", 1.0, 3), ("lfq_soft", 0.01, 7)):
        arrays.update({f"{case}/{n}": v for n, v in run_case(ref, procedural(seed, *shape, scale=scale), call,
                                                              {}).items()})
        settings[case] = {"quantizer": "lfq", "params": {"codebook_size": 2**dc, "code_dim": dc, "beta": 0.25,
                                                          "entropy_loss_ratio": 0.1},
                          "reference": f"lfq.LFQ(dim={dc}, beta=0.25, entropy_loss_ratio=0.1, n_e={2**dc})"}
    return arrays, settings


def fsq_cases() -> tuple[dict, dict]:
    from tokenizer.tokenizer_image.fsq.fsq_model import FSQ as OfficialFSQ

    arrays, settings = {}, {}
    for case, levels, shape, seed in (("fsq_8555", [8, 5, 5, 5], (2, 4, 3, 3), 4), ("fsq_764", [7, 6, 4], (2, 3, 2, 4), 5)):
        ref = OfficialFSQ(levels=levels)

        def call(m, z):
            quant, idx, _ = m(z)
            return quant, idx, {}

        z = procedural(seed, *shape, scale=1.5)
        arrays.update({f"{case}/{n}": v for n, v in run_case(ref, z, call, {}).items()})
        settings[case] = {"quantizer": "fsq", "params": {"levels": levels},
                          "reference": f"fsq_model.FSQ(levels={levels})"}
    return arrays, settings


def ibq_cases() -> tuple[dict, dict]:
    spec = importlib.util.spec_from_file_location("seed_voken_ibq_quantize", IBQ_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    k, dc, shape, ratio = 32, 8, (2, 8, 3, 3), 0.05
    ref = module.IndexPropagationQuantize(k, dc, 0.25, use_entropy_loss=True, entropy_temperature=0.01)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        params["embedding.weight"].copy_(procedural(200, k, dc, scale=0.5))

    def call(m, z):
        quant, (quant_loss, _, _, entropy), (_, _, idx) = m(z)
        return quant, idx, {"quant_loss": quant_loss, "entropy": ratio * entropy}  # quant_loss = our vq + commit

    arrays = {f"ibq/{n}": v for n, v in run_case(ref, procedural(6, *shape), call, params).items()}
    settings = {"ibq": {"quantizer": "ibq", "params": {"codebook_size": k, "code_dim": dc, "beta": 0.25,
                                                        "entropy_loss_ratio": ratio, "entropy_temperature": 0.01},
                        "reference": f"IndexPropagationQuantize({k}, {dc}, 0.25, use_entropy_loss=True, "
                                     f"entropy_temperature=0.01); entropy term times {ratio}",
                        "note": "loss/quant_loss is the reference's double quantization loss = our vq + commit"}}
    return arrays, settings


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    settings: dict = {"torch": torch.__version__,
                      "gigatok_commit": mirror_commit("SilentView+GigaTok"),
                      "seed_voken_commit": mirror_commit("TencentARC+SEED-Voken"),
                      "scalar_loss": "sum(quant * w) + the sum of the case's loss terms",
                      "cases": {}}
    for make in (simvq_cases, lfq_cases, fsq_cases, ibq_cases):
        a, s = make()
        arrays.update(a)
        settings["cases"].update(s)
    np.savez_compressed(ASSETS / "quantizer_vectors.npz", **arrays)
    (ASSETS / "quantizer_vectors.json").write_text(json.dumps(settings, indent=1) + "\n")
    print(f"wrote {len(arrays)} arrays for {sorted(settings['cases'])}")


if __name__ == "__main__":
    main()
