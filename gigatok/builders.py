"""Level 2: turn config names and checkpoint files into ready modules, for tokenizers and GPTs.

Tokenizers: `build_tokenizer` builds from a config; `load_tokenizer` also loads weights from an official checkpoint
(`"ema"`, else `"model"`, else `"state_dict"`), one of ours, an exported safetensors file or an `hf://` reference.

GPTs: `build_gpt_config` / `build_gpt` from a registry size; `load_gpt` loads official GigaTok / LlamaGen (or our)
checkpoints. The only key ever dropped is a stray `freqs_cis` (never a parameter; some LlamaGen-derived files carry
it).

Loading is always strict: any missing, unexpected or mis-shaped key is a `CheckpointError` that lists them.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gigatok.config import (
    TEACHER_DIMS,
    ConfigError,
    GPTModelConfig,
    GPTTrainConfig,
    TokenizerRef,
    VQConfig,
    config_from_dict,
    load_config,
    to_dict,
)
from gigatok.errors import UserError
from gigatok.gpt.config import GPTConfig
from gigatok.gpt.model import GPT, GPT_MODELS
from gigatok.infra.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_state_dict_strict,
    read_checkpoint,
    resolve_checkpoint_path,
)
from gigatok.infra.parallel import restore_memory_format
from gigatok.infra.run_dir import config_changes
from gigatok.tokenizer.llamagen_vq import LLAMAGEN_VQ_MODELS
from gigatok.tokenizer.vq_model import TOKENIZER_MODELS as HYBRID_TOKENIZER_MODELS
from gigatok.tokenizer.vq_model import build_tokenizer_quantizer

# Tokenizer classes by `model.model_cls`: GigaTok's hybrid tokenizers and LlamaGen's CNN VQ-16 / VQ-8.
TOKENIZER_MODELS = {**HYBRID_TOKENIZER_MODELS, **LLAMAGEN_VQ_MODELS}

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}

# Tables laid out on the 2D latent grid: resampled when a checkpoint is used at another resolution (opt-in).
_GRID_TABLES = ("positional_embedding", "q_2d")


def build_tokenizer(config: VQConfig | str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the tokenizer of `config` (a VQConfig or a YAML path) with freshly initialised weights.

    Pass device="meta" to build the large configs without allocating memory.
    """
    if not isinstance(config, VQConfig):
        config = load_config(config)
    name = config.model.model_cls
    if name not in TOKENIZER_MODELS:
        raise ConfigError(f"unknown model.model_cls '{name}'; choose one of {sorted(TOKENIZER_MODELS)}")
    args = config.model.init_args
    if args.out_inner_dim is None:
        # Official rule: the distill MLP outputs the teacher's width (768 for the default DINOv2-B).
        teacher = config.trainer.distill_model if config.trainer.distill_loss else "dinov2-vit-b"
        if teacher not in TEACHER_DIMS:
            raise ConfigError(f"unknown trainer.distill_model '{teacher}'; choose one of {sorted(TEACHER_DIMS)}")
        args = dataclasses.replace(args, out_inner_dim=TEACHER_DIMS[teacher])
    try:
        with torch.device(device):
            return TOKENIZER_MODELS[name](args, causal_type=config.model.causal_settings.causal_type)
    except ValueError as err:  # invalid combinations of model options are config errors
        raise ConfigError(f"model.init_args: {err}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file (our exports); a damaged file is a `CheckpointError` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for truncated or garbage files
        raise CheckpointError(f"cannot read '{path}' ({type(err).__name__}: {err}): the file is truncated or not a "
                              "safetensors file. Export it again (gigatok export) or download it again.") from None


def read_tokenizer_checkpoint(checkpoint: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, the config it records or None) of a tokenizer checkpoint (see `read_tokenizer_weights`)."""
    path = resolve_checkpoint_path(checkpoint)
    if path.suffix == ".safetensors":
        return read_safetensors(path), None
    ckpt = read_checkpoint(path)
    recorded = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else None
    return extract_state_dict(ckpt, prefer=("ema", "model", "state_dict"), source=str(path)), recorded


def read_tokenizer_weights(checkpoint: str | os.PathLike) -> dict[str, torch.Tensor]:
    """State dict of a tokenizer checkpoint: `.safetensors` export, or a torch file with "ema"/"model"/"state_dict"."""
    path = resolve_checkpoint_path(checkpoint)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return extract_state_dict(read_checkpoint(path), prefer=("ema", "model", "state_dict"), source=str(path))


def resample_grid_table(table: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Bicubically resample a (G*G, 1, D) positional table to (grid_size**2, 1, D)."""
    old = round(table.shape[0] ** 0.5)
    if old * old != table.shape[0]:
        raise CheckpointError(f"cannot resample a positional table of {table.shape[0]} rows: not a square grid")
    grid = table[:, 0].t().reshape(1, -1, old, old).float()  # (G*G, 1, D) -> (1, D, G, G)
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    return grid.reshape(-1, grid_size * grid_size).t().unsqueeze(1).to(table.dtype)  # -> (G'*G', 1, D)


def _adapt_resolution(state: dict[str, torch.Tensor], model: torch.nn.Module, interpolate: bool, source: str,
                      recorded: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """Resample the grid tables of a checkpoint trained at another resolution (opt-in), or say so. Only when the grid
    tables are the sole difference: a checkpoint of another architecture is left to the strict load, which lists
    every mismatch."""
    own = model.state_dict()
    grid_keys = [k for k, v in state.items() if k.endswith(_GRID_TABLES) and k in own and own[k].shape != v.shape]
    others = [k for k in own if k not in grid_keys and (k not in state or own[k].shape != state[k].shape)]
    if not grid_keys or others or set(state) - set(own):
        return state
    if not interpolate:
        key, rows = grid_keys[0], state[grid_keys[0]].shape[0]
        old = ((recorded or {}).get("model", {}).get("init_args", {}).get("image_size")
               or round(rows ** 0.5) * model.image_size // model.grid_size)  # same architecture: same downsampling
        raise CheckpointError(
            f"{source} was trained at {old}x{old} px but the config asks for {model.image_size}x{model.image_size} "
            f"('{key}' has {rows} grid positions, the model {own[key].shape[0]}). Absolute positional embeddings do "
            f"not transfer between resolutions by themselves: use the checkpoint's image_size ({old}), or opt into "
            "bicubic resampling with --interpolate-pos-embed (interpolate_pos_embed=True); expect some quality loss.")
    for key in grid_keys:
        state[key] = resample_grid_table(state[key], model.grid_size)
    return state


def _config_hint(checkpoint: str | os.PathLike, config: VQConfig, recorded: Mapping[str, Any] | None) -> str:
    """The last line of a key/shape mismatch: what differs between the config and the one the checkpoint records,
    and the run's own config.yaml when it lies beside the checkpoint."""
    beside = Path(str(checkpoint)).parent.parent / "config.yaml"
    run_config = f" Pass --model-config {beside} (the run's own resolved config)." if beside.is_file() else ""
    if not recorded:
        return ("Check that the config matches the checkpoint (e.g. VQ_SS256.yaml for VQ_SS256_e100.pt)."
                + run_config)
    current = to_dict(config)
    changes = [c for c in config_changes({k: recorded.get(k, {}) for k in ("model", "trainer")},
                                         {k: current[k] for k in ("model", "trainer")})
               if c.startswith(("model.", "trainer.distill"))]
    shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
    return (f"The checkpoint records the config it was trained with, which differs from this one in: "
            f"{shown or 'nothing that shapes the model'} (checkpoint -> given).{run_config}")


def load_tokenizer(checkpoint: str | os.PathLike | None, config: VQConfig | str | os.PathLike,
                   device: str | torch.device = "cpu", interpolate_pos_embed: bool = False,
                   overrides: list[str] | None = None) -> torch.nn.Module:
    """Build the tokenizer of `config` and load `checkpoint` strictly; returns it in eval mode on `device`.

    Args:
        checkpoint: local path, `hf://owner/repo/file.pt`, or None for random weights (tests only).
        config: VQConfig or YAML path (e.g. configs/vq/VQ_XLXXL256.yaml).
        interpolate_pos_embed: allow using a checkpoint at another image_size by resampling its 2D positional
            tables (official issue #4); without it a resolution mismatch is a clear error.
        overrides: `--key=value` config overrides (e.g. ['--model.init_args.image_size=512']).
    """
    if not isinstance(config, VQConfig):
        config = load_config(config, overrides)
    if checkpoint is None:
        return build_tokenizer(config).to(device).eval()
    source = str(checkpoint)
    state, recorded = read_tokenizer_checkpoint(checkpoint)
    # Build on the meta device and adopt the (memory-mapped) checkpoint tensors: no random init of billions of
    # parameters and no second copy of the weights in RAM.
    tokenizer = build_tokenizer(config, device="meta")
    state = _adapt_resolution(state, tokenizer, interpolate_pos_embed, source, recorded)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_dict_strict(tokenizer, state, source=source, assign=True,
                           hint=_config_hint(checkpoint, config, recorded))
    restore_memory_format(tokenizer)  # adopted tensors keep the checkpoint's layout
    _materialize_quantizer_constants(tokenizer, config)
    return tokenizer.to(device).eval()


def _materialize_quantizer_constants(tokenizer: torch.nn.Module, config: VQConfig) -> None:
    """Give the quantizer's non-persistent constant buffers (lfq's bit values, fsq's levels and basis), which no
    checkpoint holds and the meta build left without data, their values from a quantizer built on the CPU."""
    quantize = tokenizer.quantize
    missing = [name for name, buf in quantize.named_buffers() if buf.is_meta]
    if missing:
        fresh = dict(build_tokenizer_quantizer(config.model.init_args).named_buffers())
        for name in missing:
            module_name, _, buffer_name = name.rpartition(".")
            quantize.get_submodule(module_name).register_buffer(buffer_name, fresh[name], persistent=False)


# The official FSQ tokenizers (tokenizer/tokenizer_image/fsq/fsq_model.py `FSQ_models`, `--fsq-model`): LlamaGen's
# CNN VQ model (128 base channels, 2 ResnetBlocks per level, z_channels 256) with an FSQ quantizer, so they are our
# LlamaGen classes with `quantizer: fsq`. name -> (model_cls, ch_mult).
FSQ_MODELS: dict[str, tuple[str, list[int]]] = {"FSQ-16": ("VQ-16", [1, 1, 2, 2, 4]), "FSQ-8": ("VQ-8", [1, 2, 2, 4])}
DEFAULT_FSQ_LEVELS = [8, 8, 8, 6, 5]  # the official reconstruction_ddp.py --levels default


def parse_fsq_levels(levels: str | list[int] | None, codebook_size_fsq: str | None = None) -> list[int]:
    """The FSQ levels from the official flags: `--levels "8, 8, 8, 6, 5"` (reconstruction; a list also works) or
    `--codebook-size-fsq 8^6` (samplers: six levels of 8); neither: `DEFAULT_FSQ_LEVELS`.

    Raises:
        ConfigError: both flags disagree, or either cannot be read.
    """
    parsed = None
    if levels is not None:
        try:
            parsed = [int(v) for v in (levels.replace("[", "").replace("]", "").split(",")
                                       if isinstance(levels, str) else levels)]
        except ValueError:
            raise ConfigError(f"--levels {levels!r}: expected integers separated by commas, e.g. '8,8,8,6,5'") from None
    if codebook_size_fsq is not None:
        base, sep, exponent = str(codebook_size_fsq).partition("^")
        if not (sep and base.strip().isdigit() and exponent.strip().isdigit()):
            raise ConfigError(f"--codebook-size-fsq {codebook_size_fsq!r}: expected 'a^b' (b levels of a), e.g. 8^6")
        from_size = [int(base)] * int(exponent)
        if parsed is not None and parsed != from_size:
            raise ConfigError(f"--levels {parsed} and --codebook-size-fsq {codebook_size_fsq} ({from_size}) disagree; "
                              "pass one of them")
        parsed = from_size
    return parsed if parsed is not None else list(DEFAULT_FSQ_LEVELS)


def fsq_tokenizer_config(fsq_model: str, levels: list[int], image_size: int) -> VQConfig:
    """The VQConfig of the official FSQ tokenizer `fsq_model` ("FSQ-16" | "FSQ-8") with these levels at
    `image_size` px; its checkpoints (keys encoder.*, decoder.*, quant_conv, post_quant_conv,
    quantize.codebook_used) load strictly into it."""
    if fsq_model not in FSQ_MODELS:
        raise ConfigError(f"--fsq-model {fsq_model!r} is not one of {sorted(FSQ_MODELS)}")
    model_cls, ch_mult = FSQ_MODELS[fsq_model]
    init_args = {"quantizer": "fsq", "levels": list(levels), "codebook_size": math.prod(levels),
                 "codebook_embed_dim": len(levels), "encoder_ch_mult": ch_mult, "decoder_ch_mult": ch_mult,
                 "cnn_ch": 128, "num_res_blocks": 2, "z_channels": 256, "dropout_p": 0.0, "image_size": image_size,
                 "model_size": None, "num_latent_tokens": (image_size // 2 ** (len(ch_mult) - 1)) ** 2}
    return config_from_dict({"model": {"model_cls": model_cls, "init_args": init_args}},
                            source=f"--fsq-model {fsq_model} --levels {list(levels)}")


def resolve_tokenizer_ref(tok: TokenizerRef) -> tuple[VQConfig | None, str | None, str]:
    """(config, checkpoint, name) of the tokenizer a GPT stage's `tokenizer:` section names: with --quant-way vq the
    YAML of --tok-config (None when not given) and --vq-ckpt; with fsq the official FSQ tokenizer of --fsq-model
    (default FSQ-16) with --levels / --codebook-size-fsq at --image-size (default 256) and --fsq-ckpt (--tok-config,
    which the official scripts pass along, is not read). `name` is for messages and records.

    Raises:
        UserError: unreadable FSQ flags.
    """
    if tok.quant_way != "fsq":
        return (load_config(tok.tok_config) if tok.tok_config else None), tok.vq_ckpt, str(tok.tok_config)
    fsq_model = tok.fsq_model or "FSQ-16"
    try:
        levels = parse_fsq_levels(tok.levels, tok.codebook_size_fsq)
        config = fsq_tokenizer_config(fsq_model, levels, tok.image_size or 256)
    except ConfigError as err:
        raise UserError(str(err)) from None
    return config, tok.fsq_ckpt, f"{fsq_model} levels {levels}"


def load_frozen_encoder(checkpoint: str | os.PathLike | None, config: VQConfig | str | os.PathLike,
                        device: str | torch.device = "cpu") -> torch.nn.Module:
    """The tokenizer of `load_tokenizer` ("ema" weights first) without its decoding half, frozen, for turning images
    into codes inside a training loop (official `create_local_tokenizer`, which deletes the decoders too).

    Only `encode_to_codes` (and `encode`) may be called on it. The decoders are dropped before the move to `device`,
    so the GPU never holds them (most of an XL-XXL tokenizer's 2.9B parameters).
    """
    tokenizer = load_tokenizer(checkpoint, config, device="cpu")
    decoding = {id(tokenizer.decoder), id(tokenizer.token_decoder), id(tokenizer.post_quant_conv)}
    for name, child in list(tokenizer.named_children()):
        if id(child) in decoding:
            delattr(tokenizer, name)
    return tokenizer.requires_grad_(False).to(device).eval()


# --------------------------------------------------------------------------------------------------------------
# GPTs
# --------------------------------------------------------------------------------------------------------------


def build_gpt_config(gpt_model: str, **overrides: Any) -> GPTConfig:
    """`GPTConfig` of registry size `gpt_model` (e.g. "GPT-B") with field overrides.

    Raises:
        ValueError: unknown size name or unknown field.
    """
    if gpt_model not in GPT_MODELS:
        raise ValueError(f"unknown gpt_model '{gpt_model}', expected one of {sorted(GPT_MODELS)}")
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown GPT config field(s) {unknown}; valid fields: {sorted(_CONFIG_FIELDS)}")
    return GPTConfig(**{**GPT_MODELS[gpt_model], **overrides})


def recorded_gpt_fields(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The GPT config fields our training runs record in their checkpoints (`extra.gpt_config`), or None for
    official files, which must be sized from flags, weights and data."""
    recorded = (ckpt.get("extra") or {}).get("gpt_config")
    if recorded is None:
        return None
    return {k: v for k, v in recorded.items() if k in _CONFIG_FIELDS}


def recorded_gpt_model(ckpt: Mapping[str, Any]) -> str | None:
    """The registry size our runs record ("config" entry: `model.gpt_model`, or `gpt_model` in older runs)."""
    config = ckpt.get("config") or {}
    model = config.get("model") if isinstance(config.get("model"), Mapping) else config
    return model.get("gpt_model") if isinstance(model, Mapping) else None


def run_record_beside(checkpoint: str | os.PathLike | None) -> tuple[str | None, dict[str, Any] | None]:
    """(size, GPTConfig fields) from the run folder a checkpoint file sits in, for files that record nothing themselves
    (bare state dicts, `--from-fsdp` files): `<run>/config.yaml` of a train_c2i run (the resolved `model:` section),
    or the `config.json` older runs wrote (its `derived.gpt_config`). (None, None) when there is neither."""
    if checkpoint is None or str(checkpoint).startswith("hf://"):
        return None, None
    path = Path(checkpoint)
    for folder in (path.parent.parent, path.parent):  # <run>/checkpoints/<step>.pt, or <run>/<file>
        if (folder / "config.yaml").is_file():
            try:
                config = load_config(folder / "config.yaml", schema=GPTTrainConfig)
            except ConfigError:
                continue  # another kind of run (a tokenizer's config.yaml)
            m = config.model
            if None in (m.vocab_size, m.block_size, m.num_classes):
                continue
            return m.gpt_model, dataclasses.asdict(gpt_config_from(
                m, vocab_size=m.vocab_size, block_size=m.block_size, num_classes=m.num_classes))
        if (folder / "config.json").is_file():
            import json

            old = json.loads((folder / "config.json").read_text())
            fields = (old.get("derived") or {}).get("gpt_config")
            if isinstance(fields, dict):
                return old.get("gpt_model"), {k: v for k, v in fields.items() if k in _CONFIG_FIELDS}
    return None, None


def gpt_pos_type(model: GPTModelConfig) -> str:
    """The position encoding the official flags select: --gpt-2d (LlamaGen 2D RoPE), --rope (1D RoPE), else learned."""
    return "rope_2d" if model.gpt_2d else "rope_1d" if model.rope else "learned_1d"


def check_gpt_flags(model: GPTModelConfig) -> None:
    """The official model flags we cannot honour, refused before any work."""
    if model.gpt_type != "c2i":
        raise UserError("--gpt-type t2i is not supported: GigaTok trains and samples class-conditional GPTs "
                        "(--gpt-type c2i).")
    if model.adaLN or model.simple_adaLN:
        raise UserError("--adaLN / --simple-adaLN are not supported: no released GPT uses adaptive LayerNorm; drop "
                        "the flag.")
    if model.rope and model.gpt_2d:
        raise UserError("--rope (GigaTok 1D RoPE) and --gpt-2d (LlamaGen 2D RoPE) exclude each other; pass one.")


def gpt_config_from(model: GPTModelConfig, *, vocab_size: int, block_size: int, num_classes: int) -> GPTConfig:
    """THE mapping of a run config's `model:` section onto the GPT architecture, for the given data sizes.

    Raises:
        ConfigError: an unknown registry size, or a combination the architecture refuses (e.g. --gpt-2d with a
            non-square number of codes).
    """
    name = model.gpt_model or "GPT-B"
    try:
        return build_gpt_config(
            name, pos_type=gpt_pos_type(model), vocab_size=vocab_size, block_size=block_size,
            num_classes=num_classes, cls_token_num=model.cls_token_num, class_dropout_prob=model.class_dropout_p,
            token_dropout_p=model.token_dropout_p, resid_dropout_p=model.dropout_p, ffn_dropout_p=model.dropout_p,
            drop_path_rate=model.drop_path_rate, use_qk_norm=model.qk_norm)
    except ValueError as err:
        raise ConfigError(f"cannot build {name} (K={vocab_size}, L={block_size}, {num_classes} classes): "
                          f"{err}") from None


def infer_gpt_fields(state: Mapping[str, torch.Tensor], class_dropout: bool = True) -> dict[str, Any]:
    """What a GPT's weights say about its shape (official files record nothing else): vocabulary, classes (the
    label table has a null row when trained with class dropout), width, depth, and for learned positions the number
    of codes."""
    fields: dict[str, Any] = {}
    if "tok_embeddings.weight" in state:
        fields["vocab_size"], fields["dim"] = state["tok_embeddings.weight"].shape
    if "cls_embedding.embedding_table.weight" in state:
        fields["num_classes"] = state["cls_embedding.embedding_table.weight"].shape[0] - int(class_dropout)
    fields["n_layer"] = len({key.split(".")[1] for key in state if key.startswith("layers.")})
    if "positional_embedding" in state:
        fields["block_size"] = state["positional_embedding"].shape[0] - 1  # one class position first
    return fields


def resolve_checkpoint_gpt(model: GPTModelConfig, ckpt: Mapping[str, Any] | None, *, vocab_size: int | None,
                           block_size: int | None, source: str) -> GPTConfig:
    """The architecture of the GPT in `ckpt`: recorded by our runs (in the file, else in its run folder's
    config.yaml / config.json: `model.gpt_ckpt` is the file's path), else from the flags, the weights' shapes and the
    data (`vocab_size`, `block_size`: what the tokenizer or the codes give).

    Raises:
        UserError: an explicit flag contradicts the checkpoint (a --gpt-model other than the recorded size, another
            vocabulary or class count).
    """
    recorded = recorded_gpt_fields(ckpt) if ckpt is not None else None
    size = recorded_gpt_model(ckpt) if recorded is not None else None
    if recorded is None and ckpt is not None:
        size, recorded = run_record_beside(model.gpt_ckpt)
    if recorded is not None:
        if model.gpt_model is not None and size is not None and model.gpt_model != size:
            raise UserError(f"{source} is a {size} (recorded in the checkpoint) but --gpt-model is "
                            f"{model.gpt_model}: pass --gpt-model {size}, or drop the flag.")
        for flag, key, given in (("--vocab-size", "vocab_size", model.vocab_size),
                                 ("--num-classes", "num_classes", model.num_classes)):
            if given is not None and given != recorded.get(key):
                raise UserError(f"{source} was trained with {key} {recorded.get(key)} but {flag} is {given}: pass "
                                f"{flag} {recorded.get(key)}, or drop the flag.")
        if (model.gpt_2d or model.rope) and recorded.get("pos_type") != gpt_pos_type(model):
            raise UserError(f"{source} was trained with pos_type {recorded.get('pos_type')}, but the flags ask for "
                            f"{gpt_pos_type(model)}: drop --gpt-2d / --rope.")
        return GPTConfig(**recorded)
    state = extract_state_dict(ckpt, source=source) if ckpt is not None else {}
    inferred = infer_gpt_fields(state, class_dropout=model.class_dropout_p > 0)
    for flag, key, given in (("--vocab-size", "vocab_size", model.vocab_size),
                             ("--num-classes", "num_classes", model.num_classes)):
        if given is not None and key in inferred and given != inferred[key]:
            raise UserError(f"{source} holds a GPT with {key} {inferred[key]} but {flag} is {given}: pass {flag} "
                            f"{inferred[key]}, or drop the flag.")
    config = gpt_config_from(
        model, vocab_size=model.vocab_size or inferred.get("vocab_size") or vocab_size or 16384,
        block_size=model.block_size or block_size or inferred.get("block_size") or 256,
        num_classes=model.num_classes or inferred.get("num_classes") or 1000)
    shape = (inferred.get("dim"), inferred.get("n_layer"))
    if ckpt is not None and "dim" in inferred and shape != (config.dim, config.n_layer):
        raise UserError(f"{source} holds a {inferred['n_layer']}-layer GPT of width {inferred['dim']}, which "
                        f"--gpt-model {model.gpt_model or 'GPT-B'} does not match"
                        f"{gpt_size_hint(inferred['dim'], inferred['n_layer'])}")
    return config


def gpt_size_hint(dim: int, n_layer: int) -> str:
    """': pass --gpt-model <size>' when a registry size has this width and depth, else '' ."""
    for name, size in GPT_MODELS.items():
        if (size["dim"], size["n_layer"]) == (dim, n_layer):
            return f": pass --gpt-model {name}."
    return "."


def build_gpt(gpt_model: str, **overrides: Any) -> GPT:
    """Freshly initialised GPT of registry size `gpt_model`; builds on the current default device (meta works)."""
    return GPT(build_gpt_config(gpt_model, **overrides))


def load_gpt(checkpoint: str | os.PathLike | Mapping[str, Any], gpt_model: str | GPTConfig,
             pos_type: str = "learned_1d",
             vocab_size: int = 16384, block_size: int = 256, num_classes: int = 1000, cls_token_num: int = 1,
             use_qk_norm: bool = False, use_ema: bool = False, device: str | torch.device = "cpu",
             **overrides: Any) -> GPT:
    """Build a GPT and load weights strictly; returns it in eval mode on `device` (float32).

    Args:
        checkpoint: a path / `hf://owner/repo/file.pt`, or an already loaded checkpoint dict. Weights are taken
            from "model" (official samplers' choice), else "module", else "state_dict", else a bare state dict
            (`--from-fsdp` files); with `use_ema` the "ema" entry comes first.
        gpt_model: registry size ("GPT-B", ..., "GPT-3B"), or a complete `GPTConfig` (the other fields are then
            ignored).
        pos_type: "learned_1d" for GigaTok gpt_1d checkpoints, "rope_2d" for LlamaGen c2i, "rope_1d" for
            GigaTok --rope.
        vocab_size, block_size, num_classes, cls_token_num, use_qk_norm, overrides: further `GPTConfig` fields.

    Raises:
        CheckpointError: unreadable file, no weights, or any key/shape mismatch with the built model.
    """
    if isinstance(gpt_model, GPTConfig):
        config = gpt_model
    else:
        config = build_gpt_config(gpt_model, pos_type=pos_type, vocab_size=vocab_size, block_size=block_size,
                                  num_classes=num_classes, cls_token_num=cls_token_num, use_qk_norm=use_qk_norm,
                                  **overrides)
    source = "checkpoint dict" if isinstance(checkpoint, Mapping) else f"checkpoint '{checkpoint}'"
    if isinstance(checkpoint, Mapping):
        ckpt = dict(checkpoint)
    elif str(checkpoint).endswith(".safetensors"):  # weights-only export (gigatok export --gpt-ckpt ...)
        ckpt = {"model": read_safetensors(resolve_checkpoint_path(checkpoint))}
    else:
        ckpt = read_checkpoint(checkpoint)
    prefer = ("ema", "model", "module", "state_dict") if use_ema else ("model", "module", "state_dict")
    state = extract_state_dict(ckpt, prefer=prefer, source=source)

    # Allocate without initialising (the weights are overwritten anyway): meta build, then real storage.
    with torch.device("meta"):
        gpt = GPT(config)
    gpt.to_empty(device=device)
    load_state_dict_strict(gpt, state, source=source, ignore=("freqs_cis",),
                           hint=_pos_type_hint(state, config.pos_type))
    return gpt.eval()


def _pos_type_hint(state: Mapping[str, torch.Tensor], pos_type: str) -> str:
    has_pos = "positional_embedding" in state
    if has_pos and pos_type != "learned_1d":
        return "The checkpoint has 'positional_embedding' (GigaTok gpt_1d): use pos_type='learned_1d'."
    if not has_pos and pos_type == "learned_1d":
        return ("The checkpoint has no 'positional_embedding' (LlamaGen gpt.py or GigaTok --rope): use "
                "pos_type='rope_2d' (LlamaGen c2i) or 'rope_1d'.")
    return f"Check gpt_model, vocab_size, block_size and num_classes against the checkpoint (pos_type='{pos_type}')."


def load_gpt_export(folder: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """Load a GPT exported by `gigatok export --gpt-ckpt ...` or saved by `gigatok.save_pretrained`
    (model.safetensors + config.yaml, whose `config` holds every `GPTConfig` field; `gpt_model` may be null)."""
    from omegaconf import OmegaConf

    folder = Path(folder)
    exported = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    fields = {k: v for k, v in exported["config"].items() if k in _CONFIG_FIELDS}
    return load_gpt(folder / "model.safetensors", GPTConfig(**fields), device=device)
