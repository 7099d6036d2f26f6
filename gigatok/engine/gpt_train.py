"""The GPT's training data, step and what sizes it: vocabulary K, codes per image L and classes.

Data (`build_gpt_data`): pre-extracted codes (`--dataset imagenet_code`, the fast path), or an ImageFolder tree whose
batches the frozen tokenizer turns into codes inside the loop (`--dataset imagenet`, official `train_c2i.py`'s
default): encoder half only, eval mode, "ema" weights when the checkpoint has them, float32 and no autograd (the
official loop encodes outside autocast, under no_grad). Either way the step sees (codes, labels) batches.

Each sample is one augmented view of an image's codes; the GPT sees [class token, z_1 .. z_{L-1}] and predicts
z_1 .. z_L (mean cross-entropy), with class dropout for CFG.

Shape letters: B batch; S image side; L latent tokens = codes per image (1D tokenizer: num_latent_tokens; 2D: G*G);
K codebook size (= GPT vocabulary).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from gigatok.builders import load_frozen_encoder, resolve_tokenizer_ref
from gigatok.config import GPTTrainConfig, TokenizerRef, VQConfig
from gigatok.data.codes import CodeDataset, CodesError, check_meta
from gigatok.data.onthefly import GPTImageDataset
from gigatok.errors import UserError
from gigatok.infra.dist import get_world_size
from gigatok.infra.logging import NonFiniteGuard, reduce_metrics
from gigatok.infra.parallel import grad_sync, local_norm
from gigatok.infra.runtime import autocast

logger = logging.getLogger(__name__)


def tokens_of_config(config: VQConfig) -> tuple[int, int]:
    """(codebook_size, codes per image) of a tokenizer config, without building the model: only to cross-check codes
    against the tokenizer the user names, and to size a GPT on official code folders, which record neither (the
    official trainer reads both from --tok-config)."""
    args = config.model.init_args
    if config.model.model_cls == "VQVitModelPlus":
        return args.codebook_size, args.num_latent_tokens
    grid = args.image_size // 2 ** (len(args.encoder_ch_mult) - 1)
    return args.codebook_size, grid * grid


def named_tokenizer(tok: TokenizerRef, image_size: int | None) -> VQConfig | None:
    """The tokenizer config the flags name, for cross-checks: --tok-config (vq), or the official FSQ tokenizer when
    --levels or --codebook-size-fsq say its levels (fsq, at --image-size, else the codes' `image_size`; without
    those flags the codes alone decide)."""
    if tok.quant_way == "fsq":
        if tok.levels is None and tok.codebook_size_fsq is None:
            return None
        tok = dataclasses.replace(tok, image_size=tok.image_size or image_size)
    return resolve_tokenizer_ref(tok)[0]


def resolve_sizes(config: GPTTrainConfig, meta: dict[str, Any]) -> tuple[int, int, int]:
    """(vocab_size K, block_size L, num_classes) of the GPT for these codes: meta.json decides; explicit flags must
    agree with it.

    Raises:
        CodesError: a flag that contradicts the codes, naming both numbers.
    """
    model, tok = config.model, config.tokenizer
    block_size = int(meta["num_tokens"])
    vocab_size = meta.get("codebook_size")
    tok_config = named_tokenizer(tok, meta.get("image_size"))
    if tok_config is not None:
        tok_vocab, tok_tokens = tokens_of_config(tok_config)
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


def check_data_config(config: GPTTrainConfig) -> None:
    """The data settings of a training run, refused before any work when they cannot run.

    Raises:
        UserError: no --code-path for codes; no --data-path, --tok-config or --vq-ckpt for images, or an --image-size
            other than the tokenizer's.
    """
    data, tok = config.data, config.tokenizer
    if data.dataset == "imagenet_code":
        if not data.code_path:
            raise UserError("no codes: pass --code-path (a folder written by `gigatok extract_codes`, or the official "
                            "layout), or train on images with --dataset imagenet --data-path <image folder>.")
        return
    checkpoint_flag = "--fsq-ckpt" if tok.quant_way == "fsq" else "--vq-ckpt"
    vq_config, checkpoint, name = resolve_tokenizer_ref(tok)
    missing = [flag for flag, value in (("--data-path", data.data_path), ("--tok-config", vq_config),
                                        (checkpoint_flag, checkpoint)) if not value]
    if missing:
        raise UserError(f"--dataset imagenet tokenizes the training images on the fly and needs {', '.join(missing)}: "
                        "the ImageFolder tree (--data-path), the tokenizer's YAML (--tok-config, e.g. "
                        "configs/vq/VQ_BL256.yaml; with --quant-way fsq: --fsq-model and --levels) and its checkpoint "
                        f"({checkpoint_flag}). Or train on pre-extracted codes with --dataset imagenet_code "
                        "--code-path <codes>.")
    image_size = vq_config.model.init_args.image_size
    if tok.image_size is not None and tok.image_size != image_size:
        raise UserError(f"--image-size {tok.image_size} differs from the tokenizer's image_size {image_size} "
                        f"('{name}'): the images are cropped to the size the tokenizer encodes. Pass "
                        f"--image-size {image_size}, or drop the flag.")


@dataclasses.dataclass
class GPTData:
    """What the training loop reads: a dataset of codes or of images, and how its batches become codes.

    Attributes:
        dataset: `CodeDataset` (items: codes (L,) int64, label) or `GPTImageDataset` (items: images (3, S, S) float
            in [-1, 1], label, num_unreadable); both have `set_epoch`.
        meta: what sizes the GPT, as a code folder's meta.json: codebook_size, num_tokens, image_size, num_classes,
            code_path (where the codes come from, for messages), tokenizer.
        description: one log line about the data.
        tokenizer: the frozen encoder for images, None for codes.
        num_unreadable: unreadable image files replaced so far on this rank.
    """

    dataset: Dataset
    meta: dict[str, Any]
    description: str
    tokenizer: torch.nn.Module | None = None
    num_unreadable: int = 0

    def to_codes(self, batch: Sequence[torch.Tensor], vocab_size: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch -> (codes (B, L) int64 in [0, K), labels (B,) int64), both on `device`.

        Raises:
            CodesError: stored codes at or above `vocab_size` (codes of another tokenizer).
        """
        labels = batch[1].to(device, non_blocking=True)
        if self.tokenizer is None:
            codes = batch[0]  # (B, L) int64 on the CPU
            if int(codes.max()) >= vocab_size:
                raise CodesError(f"the codes hold index {int(codes.max())} >= vocab_size {vocab_size}: they come "
                                 "from another tokenizer (pass the matching --tok-config / --vocab-size)")
            return codes.to(device, non_blocking=True), labels
        self.num_unreadable += int(batch[2].sum())
        with torch.no_grad():  # frozen, float32: the official loop encodes outside autocast
            codes = self.tokenizer.encode_to_codes(batch[0].to(device, non_blocking=True))  # (B, 3, S, S) -> (B, L)
        return codes, labels

    def metrics(self) -> dict[str, float]:
        """Images: `train/corrupt_images`, the unreadable files replaced since this process started, summed over
        ranks; codes: nothing. COLLECTIVE (every rank calls it at the same step)."""
        if self.tokenizer is None:
            return {}
        return {"train/corrupt_images": round(reduce_metrics({"n": self.num_unreadable})["n"] * get_world_size())}


def build_gpt_data(config: GPTTrainConfig, device: torch.device) -> GPTData:
    """The training data of `config` (checked by `check_data_config`): codes, one random stored view per sample and
    epoch; or images, one augmented view (`data.image_aug`) per sample and epoch, encoded by the frozen tokenizer
    (built on `device`, same weights on every rank)."""
    data, tok, seed = config.data, config.tokenizer, config.trainer.global_seed
    if data.dataset == "imagenet_code":
        codes = CodeDataset(data.code_path, seed=seed, view="random", image_size=tok.image_size)
        return GPTData(codes, codes.meta, f"codes '{data.code_path}': {len(codes)} images x "
                                          f"{codes.sources[0].num_aug} views ({len(codes.sources)} source(s))")
    vq_config, checkpoint, name = resolve_tokenizer_ref(tok)
    image_size = vq_config.model.init_args.image_size
    images = GPTImageDataset(data.data_path, image_size, seed=seed, augmentation=data.image_aug)
    tokenizer = load_frozen_encoder(checkpoint, vq_config, device=device)
    short_name = Path(name).name if tok.quant_way == "vq" else name
    meta = {"code_path": f"{data.data_path} (tokenized by {short_name})",
            "codebook_size": tokenizer.codebook_size, "num_tokens": tokenizer.num_tokens, "image_size": image_size,
            "num_classes": len(images.classes), "tokenizer": {"checkpoint": checkpoint, "config": name}}
    description = (f"images '{data.data_path}': {len(images)} in {len(images.classes)} classes, {data.image_aug} "
                   f"views at {image_size} px, tokenized on the fly by '{checkpoint}' ({short_name}, "
                   f"float32, encoder only)")
    return GPTData(images, meta, description, tokenizer)


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
