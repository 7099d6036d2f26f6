"""Make the official FSQ tokenizer parity assets from the official GigaTok code (run once; never imported by the
package or tests).

    git --git-dir=<GigaTok mirror> show HEAD:tokenizer/tokenizer_image/fsq/fsq_model.py > .official/fsq_model.py
    .venv/bin/python tests/assets/fsq_make_vectors.py --official .official/fsq_model.py

Writes, next to this script:
- keys/fsq_FSQ-16.txt, keys/fsq_FSQ-8.txt: state_dict keys and shapes of the official `FSQ_models[name](levels=
  [8, 8, 8, 6, 5])` (the reconstruction script's default levels), the layout `--fsq-ckpt` files have;
- fsq16_64px.npz: the official FSQ-16 with `procedural.procedural_state_dict` (seed 0) weights, batch 1 at 64 px
  (a 4x4 grid): image (B, 3, S, S) in [-1, 1]; quant (B, 5, G, G) the quantizer output; codes (B, G*G) int64 raster
  order; recon_from_codes (decode_code(codes)), all from the official `encode` / `decode_code`.
Runs single-threaded in float32.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from procedural import procedural_state_dict

HERE = Path(__file__).resolve().parent
LEVELS = [8, 8, 8, 6, 5]


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_fsq_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def write_keys(official, name: str) -> None:
    model = official.FSQ_models[name](levels=LEVELS)
    state = model.state_dict()
    total = sum(p.numel() for p in model.parameters())
    lines = [f"total_params\t{total}\tstate_dict_entries\t{len(state)}\tGigaTok "
             f"tokenizer/tokenizer_image/fsq/fsq_model.py FSQ_models['{name}'](levels={LEVELS})"]
    lines += [f"{k}\t{tuple(v.shape)}\t{str(v.dtype).replace('torch.', '')}" for k, v in state.items()]
    (HERE / "keys" / f"fsq_{name}.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    official = load_official(args.official)
    for name in ("FSQ-16", "FSQ-8"):
        write_keys(official, name)
    model = official.FSQ_models["FSQ-16"](levels=LEVELS).eval()
    model.load_state_dict(procedural_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        quant, indices, _ = model.encode(image)
        recon = model.decode_code(indices)
    np.savez_compressed(HERE / "fsq16_64px.npz", image=image.numpy(), quant=quant.numpy(),
                        codes=indices.reshape(1, -1).numpy(), recon_from_codes=recon.numpy())


if __name__ == "__main__":
    main()
