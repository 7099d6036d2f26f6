"""The GPT's training step and what sizes it: vocabulary K, codes per image L and classes from the code folder.

Each sample is one augmented view of an image's codes; the GPT sees [class token, z_1 .. z_{L-1}] and predicts
z_1 .. z_L (mean cross-entropy), with class dropout for CFG.

Shape letters: B batch; L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G); K codebook
size (= GPT vocabulary).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from gigatok.config import GPTTrainConfig, load_config
from gigatok.data.codes import CodesError, check_meta
from gigatok.infra.logging import NonFiniteGuard
from gigatok.infra.parallel import grad_sync, local_norm
from gigatok.infra.runtime import autocast

logger = logging.getLogger(__name__)


def tokens_of_tok_config(path: str) -> tuple[int, int]:
    """(codebook_size, codes per image) of a tokenizer YAML, without building the model: only to cross-check codes
    against the tokenizer the user names, and to size a GPT on official code folders, which record neither (the
    official trainer reads both from --tok-config)."""
    config = load_config(path)
    args = config.model.init_args
    if config.model.model_cls == "VQVitModelPlus":
        return args.codebook_size, args.num_latent_tokens
    grid = args.image_size // 2 ** (len(args.encoder_ch_mult) - 1)
    return args.codebook_size, grid * grid


def resolve_sizes(config: GPTTrainConfig, meta: dict[str, Any]) -> tuple[int, int, int]:
    """(vocab_size K, block_size L, num_classes) of the GPT for these codes: meta.json decides; explicit flags must
    agree with it.

    Raises:
        CodesError: a flag that contradicts the codes, naming both numbers.
    """
    model, tok = config.model, config.tokenizer
    block_size = int(meta["num_tokens"])
    vocab_size = meta.get("codebook_size")
    if tok.tok_config is not None:
        tok_vocab, tok_tokens = tokens_of_tok_config(tok.tok_config)
        check_meta(meta, tok_vocab, tok_tokens)
        vocab_size = vocab_size or tok_vocab
    if model.vocab_size is not None:
        check_meta(meta, model.vocab_size, None)
        vocab_size = vocab_size or model.vocab_size
    if model.block_size is not None:
        check_meta(meta, None, model.block_size)
    if vocab_size is None:
        vocab_size = 16384
        logger.warning("the official code layout has no codebook size: assuming 16384 (pass --tok-config or "
                       "--vocab-size to set it)")
    if tok.image_size is not None and meta.get("image_size") not in (None, tok.image_size):
        raise CodesError(f"--image-size {tok.image_size} differs from the codes' image_size {meta['image_size']} "
                         f"('{meta['code_path']}'); drop the flag or use codes extracted at {tok.image_size} px.")
    if model.gpt_2d and tok.downsample_size is not None:
        size = tok.image_size or meta.get("image_size")
        if size is not None:
            check_meta(meta, None, (size // tok.downsample_size) ** 2)
    labels_classes = meta.get("num_classes")
    num_classes = model.num_classes or labels_classes or 1000
    if labels_classes is not None and num_classes < labels_classes:
        raise CodesError(f"--num-classes {num_classes} is smaller than the {labels_classes} classes of the codes.")
    return int(vocab_size), block_size, num_classes


def train_step(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
               max_grad_norm: float, guard: NonFiniteGuard, step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimizer step over `batches` (gradient-accumulation micro-batches of (codes (B, L), labels (B,))).

    Returns:
        mean loss over the micro-batches, gradient norm before clipping, whether the update was skipped.
    """
    device = batches[0][0].device
    loss_sum = torch.zeros((), device=device)
    for i, (codes, labels) in enumerate(batches):
        with grad_sync(model, enabled=i == len(batches) - 1):
            with autocast(device, amp_dtype):
                _, loss = model(codes[:, :-1], labels, targets=codes)  # logits (B, L, K) against all L codes
            loss_sum += loss.detach()
            scaler.scale(loss / len(batches)).backward()
    scaler.unscale_(optimizer)  # no-op unless fp16
    grad_norm = local_norm(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                          max_grad_norm if max_grad_norm > 0 else math.inf))
    loss_mean = loss_sum / len(batches)
    # fp16: the scaler itself skips steps with inf gradients, so only the loss decides here.
    watched = loss_mean if scaler.is_enabled() else torch.stack([loss_mean, grad_norm.float()])
    skipped = guard.check(watched, step)
    if not skipped:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_mean, grad_norm, skipped
