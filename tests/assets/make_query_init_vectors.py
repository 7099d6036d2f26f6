"""Parity vectors for the 1D decoder's 2D query inits -> tests/assets/query_init_vectors.npz.

The reference functions are imported from the official code, never copied (extract it as described in
make_quantizer_vectors.py, then run `.venv/bin/python tests/assets/make_query_init_vectors.py` from the repository
root). Official `tokenizer/tokenizer_image/vq/blocks.py`: `last_level_1d_features_to_2d_maps` (config switch
`last_level_2d_query_init`) and `multi_level_1d_features_to_2d_maps_avg` (`multi_level_2d_query_init`), both with
first_grow="row" as `ViTDecoder` calls them. Each case "{kind}/T{T}_G{G}" holds x (B, T, D), the embedded latent
tokens, and out (B, G*G, D), the queries in raster order (the reference returns (B, D, G, G)).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".official" / "GigaTok"))
from tokenizer.tokenizer_image.vq import blocks  # noqa: E402

CASES = [(2, 4), (4, 4), (8, 4), (16, 4), (16, 8), (64, 8), (256, 16)]  # (T latent tokens, G grid side)


def main() -> None:
    arrays = {}
    for i, (t, g) in enumerate(CASES):
        x = torch.randn(2, t, 6, generator=torch.Generator().manual_seed(100 + i))
        n_level = round(math.log2(t))
        for kind, fn in (("last_level", blocks.last_level_1d_features_to_2d_maps),
                         ("multi_level", blocks.multi_level_1d_features_to_2d_maps_avg)):
            out = fn(x_1d=x.clone(), n_level=n_level, max_h=g, max_w=g, first_grow="row")  # (B, D, G, G)
            arrays[f"{kind}/T{t}_G{g}/x"] = x.numpy()
            arrays[f"{kind}/T{t}_G{g}/out"] = rearrange(out, "b d h w -> b (h w) d").numpy()
    np.savez(ROOT / "tests" / "assets" / "query_init_vectors.npz", **arrays)
    print(f"{len(arrays) // 2} cases -> tests/assets/query_init_vectors.npz")


if __name__ == "__main__":
    main()
