"""Make the LlamaGen VQ parity assets from LlamaGen's own code (run once; never imported by the package or tests).

    git --git-dir=<LlamaGen mirror> show HEAD:tokenizer/tokenizer_image/vq_model.py \
        > .official/LlamaGen/llamagen_vq_model.py
    .venv/bin/python tests/assets/llamagen_make_vectors.py [--official .official/LlamaGen/llamagen_vq_model.py]

Writes, next to this script:
- keys/llamagen_VQ-16.txt, keys/llamagen_VQ-8.txt: state_dict keys and shapes of LlamaGen's `VQ_models[name]()`
  built on the meta device (the layout of vq_ds16_c2i.pt / vq_ds8_c2i.pt, key "model");
- llamagen_vq_debug.npz: LlamaGen's `VQModel` with the sizes of configs/vq/LlamaGen_VQ16_debug.yaml (its
  Encoder/Decoder built with ch=32, num_res_blocks=1, z_channels=32; codebook 1024 x 8), batch 2 at 64 px;
- llamagen_vq16_64px.npz: the real VQ-16 (72M parameters, codebook 16384 x 8), batch 1 at 64 px (a 4x4 grid).

Weights are `procedural.procedural_state_dict` (seed 0) of the official keys, so ours get identical tensors from the
same keys. Each npz holds: image (B, 3, S, S) in [-1, 1]; enc (encoder output, B, Cz, G, G); pre_quant
(quant_conv output, B, 8, G, G); quant (quantizer output, B, 8, G, G); codes (B, G*G) int64 raster order; dist_gap
(B, G*G): second-smallest minus smallest squared distance (near-ties may flip between implementations); recon
(decode(quant)); recon_from_codes (decode_code(codes, qzshape=(B, 8, G, G))); vq_loss, commit_loss (train mode).
Runs single-threaded in float32.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from procedural import procedural_state_dict

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("llamagen_vq_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_keys(official, name: str) -> None:
    with torch.device("meta"):
        model = official.VQ_models[name]()
    state = model.state_dict()
    total = sum(p.numel() for p in model.parameters())
    lines = [f"total_params\t{total}\tstate_dict_entries\t{len(state)}\tLlamaGen "
             f"tokenizer/tokenizer_image/vq_model.py VQ_models['{name}']()"]
    lines += [f"{k}\t{tuple(v.shape)}\t{str(v.dtype).removeprefix('torch.')}" for k, v in state.items()]
    (HERE / "keys" / f"llamagen_{name}.txt").write_text("\n".join(lines) + "\n")


def debug_model(official):
    """LlamaGen's VQModel at the sizes of LlamaGen_VQ16_debug.yaml (the official VQModel does not pass `ch`)."""
    model = official.VQModel(official.ModelArgs(codebook_size=1024, z_channels=32))
    model.encoder = official.Encoder(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=32)
    model.decoder = official.Decoder(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=32)
    return model


def run_case(model, batch: int, size: int, seed: int) -> dict[str, np.ndarray]:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(procedural_state_dict(shapes), strict=True)
    g = torch.Generator().manual_seed(seed)
    # A smooth image plus noise, in [-1, 1]: gradients and textures for every level of the CNN.
    ramp = torch.linspace(-1, 1, size)
    phase = 3 * ramp[None, None, :, None] + 2 * ramp[None, None, None, :] + torch.arange(3)[:, None, None]
    noise = 0.4 * torch.rand(batch, 3, size, size, generator=g) - 0.2
    image = (0.5 * torch.sin(phase).expand(batch, 3, size, size) + noise).clamp(-1, 1)
    out: dict[str, np.ndarray] = {"image": image.numpy()}
    model.eval()
    with torch.no_grad():
        enc = model.encoder(image)
        pre_quant = model.quant_conv(enc)
        quant, _, (_, _, codes) = model.quantize(pre_quant)
        # The distances LlamaGen's quantizer argmins over, for the near-tie margin.
        z = torch.nn.functional.normalize(pre_quant.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
        e = torch.nn.functional.normalize(model.quantize.embedding.weight, dim=-1)
        d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.t()
        top2 = d.topk(2, dim=1, largest=False).values
        b, _, h, w = quant.shape
        recon = model.decode(quant)
        recon_from_codes = model.decode_code(codes, shape=(b, 8, h, w))
        model.train()
        model.quantize.show_usage = False  # its nn.Parameter window cannot be written in place under autograd
        _, (vq_loss, commit_loss, _, _), _ = model.quantize(pre_quant)
    out.update(enc=enc.numpy(), pre_quant=pre_quant.numpy(), quant=quant.numpy(), codes=codes.view(b, h * w).numpy(),
               dist_gap=(top2[:, 1] - top2[:, 0]).view(b, h * w).numpy(), recon=recon.numpy(),
               recon_from_codes=recon_from_codes.numpy(), vq_loss=np.float32(vq_loss),
               commit_loss=np.float32(commit_loss))
    assert math.isfinite(float(recon.abs().max()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=ROOT / ".official" / "LlamaGen" / "llamagen_vq_model.py")
    args = parser.parse_args()
    torch.set_num_threads(1)
    official = load_official(args.official)
    for name in ("VQ-16", "VQ-8"):
        write_keys(official, name)
    np.savez_compressed(HERE / "llamagen_vq_debug.npz", **run_case(debug_model(official), batch=2, size=64, seed=0))
    np.savez_compressed(HERE / "llamagen_vq16_64px.npz", **run_case(official.VQ_16(), batch=1, size=64, seed=1))


if __name__ == "__main__":
    main()
