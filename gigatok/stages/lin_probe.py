"""Linear probe of a frozen tokenizer (official `tokenizer/lin_probe/lin_probe.py`).

Features: the mean over latent tokens of the Q-Former encoder output before `conv_out` (the pre-quantisation latent
tokens at the transformer width D); with `--fix-dim`, the same after `conv_out` (z_channels wide, still before
`quant_conv` and the quantizer; for CNN tokenizers such as LlamaGen's VQ-16, the only mode: their encoder's grid);
with `--from-decoder`, the decoder states after layer `distill_depth` (the input of the semantic-regularisation
MLP, from the quantized codes), averaged over the G*G 2D queries. The head and
recipe are those of the GPT probe (gigatok.engine.linear_probe). GigaTok's README: this probe "does not necessarily
reflect downstream AR performance" (it overfits while generation keeps improving, paper Fig. 13).

Run it with torchrun (scripts/train_lin_probe.sh) or as one process.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from gigatok.builders import load_tokenizer
from gigatok.engine.probe_run import (
    add_probe_arguments,
    run_probe,
    start_probe_stage,
)
from gigatok.errors import UserError
from gigatok.infra.cli import run_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_probe_arguments(parser)
    parser.add_argument("--fix-dim", action="store_true", help="encoder features after conv_out (z_channels wide)")
    parser.add_argument("--from-decoder", action="store_true", help="decoder layer distill_depth features")
    return parser.parse_args(argv)


def tokenizer_features_fn(tokenizer: torch.nn.Module, mode: str, num_code: int | None):
    """images (B, 3, S, S) in [-1, 1] -> (B, D) float32 mean-pooled features; mode "encoder"/"fix_dim"/"decoder"."""

    def features(images: torch.Tensor) -> torch.Tensor:
        if mode == "decoder":
            states = tokenizer.decoder_features(tokenizer.encode_to_codes(images))  # (B, G*G, D)
            return states.float().mean(dim=1)
        grid = tokenizer.encoder(images)  # (B, Cz, G, G)
        # CNN tokenizers (LlamaGen VQ-16/VQ-8, FSQ) have no token encoder: their fix_dim features are the grid itself
        tokens = grid if tokenizer.token_encoder is None else tokenizer.token_encoder(
            grid, return_feat=mode == "encoder")  # (B, D, h, w)
        tokens = tokens.flatten(2)  # (B, D, L): 1D tokens in query order, 2D ones in raster order
        if num_code is not None:
            tokens = tokens[:, :, :num_code]
        return tokens.float().mean(dim=-1)

    return features


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """The tokenizer linear-probe stage; returns the val results."""
    if args.fix_dim and args.from_decoder:
        raise UserError("--fix-dim (encoder features) and --from-decoder exclude each other; pass one.")
    dist_info, config, image_size = start_probe_stage(args)
    mode = "decoder" if args.from_decoder else "fix_dim" if args.fix_dim else "encoder"
    if mode == "decoder" and config.model.init_args.distill_depth is None:
        raise UserError(f"--from-decoder probes decoder layer distill_depth, but '{args.model_config}' sets no "
                         "model.init_args.distill_depth.")
    tokenizer = load_tokenizer(args.vq_ckpt, config, device=dist_info.device).requires_grad_(False)
    if mode == "encoder" and tokenizer.token_encoder is None:
        raise UserError(f"'{args.model_config}' is a CNN tokenizer ({config.model.model_cls}) without a Q-Former "
                        "encoder, so it has no transformer-width encoder features: pass --fix-dim to probe its CNN "
                        "encoder's output (z_channels wide, before quant_conv), mean-pooled over the grid.")
    if mode != "decoder":
        del tokenizer.decoder  # the pixel decoder is never used by encoder features
    one_d = config.model.model_cls == "VQVitModelPlus"
    if args.num_code is not None and not (one_d and mode != "decoder" and 1 <= args.num_code <= tokenizer.num_tokens):
        raise UserError(f"--num-code selects the first 1..{tokenizer.num_tokens} latent tokens of a 1D tokenizer's "
                         "encoder features; it does not apply to 2D tokenizers or --from-decoder.")
    describe = {"trunk": "tokenizer", "vq_ckpt": args.vq_ckpt, "model_config": args.model_config, "mode": mode,
                "num_code": args.num_code or tokenizer.num_tokens, "pooling": "mean over tokens"}
    return run_probe(args, tokenizer_features_fn(tokenizer, mode, args.num_code), dist_info, image_size=image_size,
                     trunk_label="Tokenizer", describe=describe)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args = parse_args(argv)
    run_stage(lambda: probe(args))


if __name__ == "__main__":
    main()
