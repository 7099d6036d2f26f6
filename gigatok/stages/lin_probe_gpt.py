"""Linear probe of a frozen class-conditional GPT (official `autoregressive/lin_probe/lin_probe.py`).

Features (SPEC_evaluation §5): the frozen tokenizer turns each image into codes; the frozen GPT runs, in eval mode,
on [null class token, the first num_code - 1 codes] (the true label never enters); the feature is the residual
stream after block `--n-layer` (default n_layer // 2, i.e. block 6 of 12 for GPT-B; official
`ret_inner_feat_layer`), before any final norm, averaged over all num_code positions (class slot included).
A BatchNorm + linear head is trained on top with LARS (gigatok.engine.linear_probe), then scored on the val set.

Differences from the official script, on purpose: the GPT runs in eval mode during probe training too (officially
it is left in train mode, so its dropout perturbs the training features); the tokenizer encodes in float32
outside autocast (as code extraction does); `--train-path` / `--val-path` accept any ImageFolder pair; a training
run ends with the val evaluation (officially a second `--eval` call, which works here too).

Run it with torchrun (scripts/train_lin_probe_gpt.sh) or as one process.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from gigatok.builders import (
    check_gpt_flags,
    load_gpt,
    load_tokenizer,
    resolve_checkpoint_gpt,
)
from gigatok.config import GPTModelConfig, GPTSampleConfig
from gigatok.config.flags import add_config_flags, given_flags, resolve_config
from gigatok.engine.probe_run import (
    add_probe_arguments,
    run_probe,
    start_probe_stage,
)
from gigatok.errors import UserError
from gigatok.gpt.model import GPT
from gigatok.infra.checkpoint import (
    read_checkpoint,
    resolve_checkpoint_path,
)
from gigatok.infra.cli import run_stage


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, str]]:
    """The probe flags, the GPT's (`model:` section of the GPT config: --gpt-ckpt, --gpt-model, --rope, ...) and
    --n-layer / --ema. Returns (args, flag table of the GPT's)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_probe_arguments(parser)
    table = add_config_flags(parser.add_argument_group("the GPT (config section 'model')"), GPTSampleConfig, "model")
    parser.add_argument("--n-layer", type=int, default=None, help="features after this block (default n_layer // 2)")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights (official: 'model')")
    return parser.parse_args(argv), table


def gpt_model_config(args: argparse.Namespace, table: dict[str, str]) -> GPTModelConfig:
    """The `model:` section from the GPT flags given on the command line."""
    config, _ = resolve_config(GPTSampleConfig, None, given_flags(args, table), [])
    return config.model


def load_frozen_gpt(model: GPTModelConfig, vocab_size: int, block_size: int, device: torch.device,
                    ema: bool = False, tok_config: str | None = None) -> GPT:
    """The GPT of `model.gpt_ckpt` in eval mode, sized by its own record (our runs) or its flags and weights
    (official files); it must model the tokenizer's codes and have a null class."""
    ckpt = read_checkpoint(model.gpt_ckpt)
    source = f"the GPT '{model.gpt_ckpt}'"
    gpt_config = resolve_checkpoint_gpt(model, ckpt, vocab_size=vocab_size, block_size=block_size, source=source)
    if (gpt_config.vocab_size, gpt_config.block_size) != (vocab_size, block_size):
        raise UserError(f"{source} models {gpt_config.block_size} codes from a vocabulary of {gpt_config.vocab_size}, "
                        f"but the tokenizer '{tok_config}' gives {block_size} codes from {vocab_size}: pass the "
                        "tokenizer the GPT was trained on.")
    gpt = load_gpt(ckpt, gpt_config, use_ema=ema, device=device)
    if not gpt.has_null_class:
        raise UserError(f"{source} has no null class (class_dropout_prob 0), which the probe feeds instead of the "
                        "label; train it with class dropout > 0.")
    return gpt.eval().requires_grad_(False)


def gpt_features_fn(tokenizer: torch.nn.Module, gpt: GPT, num_code: int, n_layer: int):
    """images (B, 3, S, S) in [-1, 1] -> mean residual stream after block `n_layer`, (B, D) float32."""

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            codes = tokenizer.encode_to_codes(images.float())[:, :num_code]  # (B, num_code) int64
        null = torch.full((codes.shape[0],), gpt.num_classes, dtype=torch.long, device=codes.device)  # (B,)
        hidden = gpt.forward_hidden(codes[:, :-1], null, n_layer)  # (B, num_code, D): class + num_code - 1 codes
        return hidden.float().mean(dim=1)

    return features


def probe(args: argparse.Namespace, model: GPTModelConfig) -> dict[str, Any]:
    """The GPT linear-probe stage; returns the val results."""
    check_gpt_flags(model)
    if model.gpt_ckpt is None:
        raise UserError("--gpt-ckpt is required: the GPT to probe (a train_c2i or official checkpoint).")
    resolve_checkpoint_path(model.gpt_ckpt)  # a missing file fails before any model is built
    dist_info, config, image_size = start_probe_stage(args)
    tokenizer = load_tokenizer(args.vq_ckpt, config, device=dist_info.device).requires_grad_(False)
    for name in ("decoder", "s1to2decoder", "s2ddecoder"):  # only the encoder is used: free the decoders
        if hasattr(tokenizer, name):
            delattr(tokenizer, name)
    gpt = load_frozen_gpt(model, tokenizer.codebook_size, tokenizer.num_tokens, dist_info.device, args.ema,
                          args.model_config)
    num_code = args.num_code or tokenizer.num_tokens
    n_layer = gpt.config.n_layer // 2 if args.n_layer is None else args.n_layer
    if not 1 <= num_code <= tokenizer.num_tokens:
        raise UserError(f"--num-code {num_code} must be in [1, {tokenizer.num_tokens}] (codes per image).")
    if not 0 <= n_layer <= gpt.config.n_layer:
        raise UserError(f"--n-layer {n_layer} must be in [0, {gpt.config.n_layer}] (GPT blocks).")
    describe = {"trunk": "gpt", "gpt_ckpt": model.gpt_ckpt, "vq_ckpt": args.vq_ckpt, "layer": n_layer,
                "n_layer": gpt.config.n_layer, "num_code": num_code, "dim": gpt.config.dim, "ema": args.ema,
                "pooling": "mean over class slot + num_code - 1 codes, null class"}
    logging.getLogger("gigatok").info(f"GPT '{model.gpt_ckpt}': {gpt.config.n_layer} blocks x {gpt.config.dim}; "
                                      f"features after block {n_layer}, {num_code} positions")
    return run_probe(args, gpt_features_fn(tokenizer, gpt, num_code, n_layer), dist_info, image_size=image_size,
                     trunk_label="LM", describe=describe)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. User errors print one paragraph and exit with code 2 (no traceback)."""
    args, table = parse_args(argv)
    run_stage(lambda: probe(args, gpt_model_config(args, table)))


if __name__ == "__main__":
    main()
