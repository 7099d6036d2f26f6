"""The library entry points behind `gigatok.*`: load released or own models, images in and out, sampling.

`load_tokenizer(source)` / `load_gpt(source)` accept, in this order:
1. a folder written by `save_pretrained` / `gigatok export` (model.safetensors + config.yaml);
2. `hf://owner/repo` or `owner/repo`: a saved folder on the Hugging Face Hub;
3. a released name (`gigatok.list_pretrained()`: `VQ_SS256`, `GPT_B256_e300_VQ_SS`, LlamaGen's `vq_ds16_c2i`,
   `c2i_L_384`, or the official file names), fetched once into the torch-hub cache
   (`$TORCH_HOME/hub/checkpoints/<file>`) from the official link (Google Drive, or LlamaGen's Hub files), or from
   `GIGATOK_WEIGHTS_BASE_URL/<file>`; a file already there is used as is. `GIGATOK_OFFLINE=1` / `HF_HUB_OFFLINE=1`
   never download: the error names the file, its link and where to put it;
4. a checkpoint file (`.pt` official or ours, `.safetensors`) or `hf://owner/repo/file`.

Models come back in eval mode with frozen parameters (`requires_grad_(True)` to fine-tune), so inference needs no
`torch.no_grad()`. For a checkpoint file the architecture comes from `config=` when given, else from what the file
records (our training runs), else from the registry when the file has an official name, else (GPTs) from the
weights' shapes.

Shape letters: B batch; S image side; L codes per image; K codebook size.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gigatok import hub
from gigatok.builders import load_gpt as load_gpt_checkpoint
from gigatok.builders import load_tokenizer as load_tokenizer_checkpoint
from gigatok.builders import (
    read_safetensors,
    read_tokenizer_checkpoint,
    resolve_checkpoint_gpt,
)
from gigatok.config import ConfigError, GPTModelConfig, VQConfig, config_from_dict
from gigatok.data.transforms import center_crop_arr, to_tensor_normalized, to_uint8
from gigatok.errors import UserError
from gigatok.gpt.config import GPTConfig
from gigatok.gpt.generate import generate
from gigatok.gpt.model import GPT, GPT_MODELS
from gigatok.infra.checkpoint import read_checkpoint, resolve_checkpoint_path
from gigatok.infra.download import (
    WeightsDownloadError,
    fetch_weights,
    hub_checkpoint_path,
)
from gigatok.zoo import Pretrained, find_pretrained, get_pretrained, load_config, tokenizer_config_of

Source = str | os.PathLike
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def _is_folder_source(source: Source) -> bool:
    text = str(source)
    if Path(text).expanduser().is_dir():
        return True
    if not text.startswith("hf://") and Path(text).suffix in _CHECKPOINT_SUFFIXES:
        return False  # a missing checkpoint path, not a Hub id: let the file loaders say it is missing
    # hf://owner/repo is a saved folder; hf://owner/repo/file is a checkpoint file
    return hub.is_hub_id(text) and text.removeprefix("hf://").strip("/").count("/") == 1


def released_file(entry: Pretrained) -> Path:
    """The local file of a released checkpoint: the torch-hub cache copy, downloaded first when missing.

    Raises:
        WeightsDownloadError: not cached and cannot be downloaded; the message says where to put it by hand.
    """
    dest = hub_checkpoint_path(entry.filename)
    try:
        path = fetch_weights(entry.download_url, dest, what=f"{entry.name} ({entry.filename})")
    except WeightsDownloadError as err:
        raise WeightsDownloadError(
            f"The released {entry.kind} '{entry.name}' needs the file {entry.filename}, which is not at {dest}. "
            f"Download it from {entry.url} and put it there (or pass its path instead of the name).\n{err}") from None
    with open(path, "rb") as f:
        head = f.read(64).lstrip().lower()
    if head.startswith((b"<!doctype", b"<html")):  # a web page (Google Drive quota or sign-in, a proxy's error)
        path.unlink()
        raise WeightsDownloadError(f"{entry.download_url} returned a web page instead of {entry.filename} (Google "
                                   f"Drive quota, sign-in or an error page); download it from {entry.url} by hand and "
                                   f"put it at {dest}.")
    return path


def _is_released_name(source: Source) -> bool:
    """A registry name or official file name that is not an existing path or an hf:// reference."""
    text = str(source)
    return (find_pretrained(text) is not None and not text.startswith("hf://")
            and not Path(text).expanduser().exists())


def _as_vq_config(config: VQConfig | Source) -> VQConfig:
    return config if isinstance(config, VQConfig) else load_config(config)


def load_tokenizer(source: Source, config: VQConfig | Source | None = None,
                   device: str | torch.device = "cpu") -> torch.nn.Module:
    """A tokenizer with its weights, in eval mode on `device` (see the module docstring for `source`).

    Args:
        source: saved folder, Hub id, released name (`VQ_SS256`), checkpoint file or `hf://owner/repo/file`.
        config: the tokenizer config (`VQConfig`, a shipped name such as "VQ_SS256", or a YAML path); needed only for
            a checkpoint file that records none and has no official name.
        device: where the model goes.

    Raises:
        UserError: the source cannot be found or fetched, no config can be determined, or the weights do not fit.
    """
    if _is_folder_source(source):
        model = hub.from_pretrained(source, device=device)
        if hub.model_kind(model) != "tokenizer":
            raise UserError(f"'{source}' holds a GPT, not a tokenizer: use gigatok.load_gpt.")
        return model
    if _is_released_name(source):
        entry = get_pretrained(str(source), kind="tokenizer")
        tokenizer = load_tokenizer_checkpoint(released_file(entry), _as_vq_config(config or entry.config),
                                              device=device)
        return tokenizer.requires_grad_(False)
    if config is None:
        config = _recorded_tokenizer_config(source)
    return load_tokenizer_checkpoint(source, _as_vq_config(config), device=device).requires_grad_(False)


def _recorded_tokenizer_config(source: Source) -> VQConfig:
    """The config a tokenizer checkpoint file records, or the registry's for an official file name."""
    _, recorded = read_tokenizer_checkpoint(source)
    if recorded is not None:
        try:
            return config_from_dict({k: recorded[k] for k in ("model", "trainer", "loss") if k in recorded},
                                    source=f"the config recorded in '{source}'")
        except ConfigError:
            pass  # a run config of another schema: fall back to the name, then ask for config=
    entry = find_pretrained(str(source))
    if entry is not None and entry.kind == "tokenizer":
        return load_config(entry.config)
    beside = Path(str(source)).parent / hub.CONFIG_NAME
    if Path(str(source)).suffix == ".safetensors" and beside.is_file():  # an exported folder's weights
        return load_config(beside)
    raise ConfigError(f"'{source}' records no config: pass config= (a shipped name such as 'VQ_SS256', or a YAML "
                      "path) that it was trained with.")


def load_gpt(source: Source, config: GPTConfig | str | None = None, device: str | torch.device = "cpu",
             use_ema: bool = False) -> GPT:
    """A class-conditional GPT with its weights, in eval mode on `device` (float32).

    Args:
        source: saved folder, Hub id, released name (`GPT_B256_e300_VQ_SS`), checkpoint file or
            `hf://owner/repo/file`.
        config: a complete `GPTConfig`, or a registry size ("GPT-B", ..., "debug") for a checkpoint file (the
            vocabulary, codes per image and classes are then read from its weights); default: what the file
            records, else the registry's size for an official file name, else GPT-B.
        use_ema: take the checkpoint's "ema" weights when it has them (checkpoint files only).
    """
    if _is_folder_source(source):
        model = hub.from_pretrained(source, device=device)
        if hub.model_kind(model) != "gpt":
            raise UserError(f"'{source}' holds a tokenizer, not a GPT: use gigatok.load_tokenizer.")
        return model
    if _is_released_name(source):
        source = released_file(get_pretrained(str(source), kind="gpt"))
    entry = find_pretrained(str(source))  # an official file name tells the size and the tokenizer it models
    entry = entry if entry is not None and entry.kind == "gpt" else None
    vocab_size = block_size = None
    if entry is not None:  # released GPTs: their tokenizer's K codes, L per image at the file's image size
        args = tokenizer_config_of(entry.name).model.init_args
        vocab_size, block_size = args.codebook_size, args.num_latent_tokens
    if str(source).endswith(".safetensors"):
        ckpt = {"model": read_safetensors(resolve_checkpoint_path(source))}
    else:
        ckpt = read_checkpoint(source)
    if not isinstance(config, GPTConfig):
        if config is not None and config not in GPT_MODELS:
            raise UserError(f"config must be a GPTConfig or a GPT size {sorted(GPT_MODELS)}, got {config!r}")
        model = GPTModelConfig(gpt_model=config or (entry.gpt_model if entry is not None else None),
                               gpt_ckpt=str(source), gpt_2d=entry is not None and entry.gpt_2d)
        config = resolve_checkpoint_gpt(model, ckpt, vocab_size=vocab_size, block_size=block_size,
                                        source=f"'{source}'")
    return load_gpt_checkpoint(ckpt, config, use_ema=use_ema, device=device).requires_grad_(False)


# ---- images in and out ----

def _to_pil_list(images: Any) -> list[Image.Image]:
    """PIL image(s) or uint8 arrays (H, W, 3) / (B, H, W, 3) (numpy or torch) -> list of RGB PIL images."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise UserError(f"preprocess takes uint8 arrays of shape (H, W, 3) or (B, H, W, 3), got {images.dtype} "
                            f"{images.shape}")
        return [Image.fromarray(a) for a in (images[None] if images.ndim == 3 else images)]
    if isinstance(images, Sequence) and not isinstance(images, str | bytes):
        return [pil for item in images for pil in _to_pil_list(item)]
    raise UserError(f"preprocess takes PIL images or uint8 arrays, got {type(images).__name__}")


def preprocess(images: Any, image_size: int = 256) -> torch.Tensor:
    """Images for a tokenizer: the official evaluation transform (ADM center crop to `image_size`, then [-1, 1]).

    Args:
        images: a PIL image, a uint8 array (H, W, 3) or (B, H, W, 3) (numpy or torch), or a list of those.
        image_size: S, the tokenizer's image side (`tokenizer.image_size`).

    Returns:
        (B, 3, S, S) float32 in [-1, 1].
    """
    pils = _to_pil_list(images)
    if not pils:
        raise UserError("preprocess got no images")
    return torch.stack([to_tensor_normalized(center_crop_arr(p, image_size)) for p in pils])


def postprocess(images: torch.Tensor, output: str = "pil") -> list[Image.Image] | np.ndarray:
    """Decoder output back to pictures, with the official rounding (`clamp(127.5 x + 128, 0, 255)`, truncated).

    Args:
        images: (B, 3, S, S) or (3, S, S) float, about [-1, 1] (unclamped decoder output is fine).
        output: "pil" for a list of B PIL images, "numpy" for a (B, S, S, 3) uint8 array.
    """
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"postprocess takes (B, 3, S, S) images, got shape {tuple(images.shape)}")
    images_uint8 = to_uint8(images.detach()).numpy()  # (B, S, S, 3) uint8
    if output == "numpy":
        return images_uint8
    if output != "pil":
        raise UserError(f"output must be 'pil' or 'numpy', got {output!r}")
    return [Image.fromarray(a) for a in images_uint8]


@torch.no_grad()
def sample(gpt: GPT, tokenizer: torch.nn.Module, classes: Sequence[int] | torch.Tensor, cfg_scale: float = 4.0,
           cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           seed: int | None = 0, sampler: str = "plain", sjd_window: int = 16) -> torch.Tensor:
    """Generate one image per class: the GPT samples codes (KV cache, classifier-free guidance), the tokenizer
    decodes them. Runs on the GPT's device; defaults are the official visualisation settings (CFG 4.0, constant).

    Args:
        classes: B ImageNet class indices (e.g. [22, 388, 90, 978]).
        seed: seeds the sampling generator (None: the global RNG).
        sampler: "plain" or "sjd" (speculative Jacobi decoding: the same distribution in fewer forward passes;
            `sjd_window` drafts verified per pass).

    Returns:
        (B, 3, S, S) float, about [-1, 1] (pass it to `postprocess`).
    """
    device = gpt.tok_embeddings.weight.device
    labels = torch.as_tensor(classes, dtype=torch.long, device=device).reshape(-1)  # (B,)
    c = gpt.config
    if c.vocab_size != tokenizer.codebook_size or c.block_size != tokenizer.num_tokens:
        raise UserError(f"the GPT models {c.block_size} codes from {c.vocab_size}, the tokenizer gives "
                        f"{tokenizer.num_tokens} codes from {tokenizer.codebook_size}: pair the GPT with the tokenizer "
                        "it was trained on.")
    if labels.numel() == 0 or labels.min() < 0 or labels.max() >= c.num_classes:
        raise UserError(f"classes must be in [0, {c.num_classes}), got {labels.tolist()}")
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    codes = generate(gpt, labels, tokenizer.num_tokens, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule,
                     temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, sampler=sampler,
                     sjd_window=sjd_window)  # (B, L) int64
    tok_device = next(tokenizer.parameters()).device
    return tokenizer.decode_code(codes.to(tok_device)).float()  # (B, 3, S, S)

