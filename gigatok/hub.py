"""Saved model folders and the Hugging Face Hub: `save_pretrained`, `from_pretrained`, `push_to_hub`.

A saved folder is the format `gigatok export` writes, plus a model card:
- `model.safetensors`: the model's own state_dict keys (the official names, unchanged), float tensors as they are;
- `config.yaml`: a tokenizer's resolved `VQConfig` (loads with `gigatok.load_config`), or for a GPT
  `{gpt_model: <size or null>, config: <every GPTConfig field>}`;
- `README.md`: a generated model card (what it is, its config, how to load it, the citation).

The kind (tokenizer or GPT) is read from `config.yaml`. Models stay plain `nn.Module`s: nothing is mixed into the
model classes (model files hold architecture only); `push_to_hub` saves a folder and uploads it with
`huggingface_hub.HfApi`. Hub downloads go through the `huggingface_hub` cache, so `HF_HOME` / `HF_HUB_CACHE` /
`HF_HUB_OFFLINE=1` behave as for any Hub model.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from gigatok.builders import (
    TOKENIZER_MODELS,
    load_gpt,
    load_tokenizer,
    read_safetensors,
)
from gigatok.config import ConfigError, VQConfig, config_from_dict, to_yaml
from gigatok.config.tokenizer import CausalSettings, ModelSection
from gigatok.errors import UserError
from gigatok.gpt.config import GPTConfig
from gigatok.gpt.model import GPT, GPT_MODELS
from gigatok.infra.checkpoint import CheckpointError
from gigatok.infra.io import atomic_write, write_text_atomic
from gigatok.infra.parallel import unwrap

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
CARD_NAME = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

CITATION = """@article{gigatok,
  title={GigaTok: Scaling Visual Tokenizers to 3 Billion Parameters for Autoregressive Image Generation},
  author={Xiong, Tianwei and Liew, Jun Hao and Huang, Zilong and Feng, Jiashi and Liu, Xihui},
  journal={arXiv preprint arXiv:2504.08736},
  year={2025}
}"""


class PretrainedFolderError(UserError):
    """A folder or Hub repository that is not a saved GigaTok model (or cannot be fetched)."""


def model_kind(model: torch.nn.Module) -> str:
    """'tokenizer' or 'gpt' for our model classes (wrappers removed first)."""
    model = unwrap(model)
    if isinstance(model, GPT):
        return "gpt"
    if isinstance(model, tuple(TOKENIZER_MODELS.values())):
        return "tokenizer"
    raise UserError(f"save_pretrained takes a GigaTok tokenizer or GPT, got a {type(model).__name__}.")


def gpt_size_name(config: GPTConfig) -> str | None:
    """The registry size with this width, depth and heads (`GPT-B`), else None."""
    shape = {"dim": config.dim, "n_layer": config.n_layer, "n_head": config.n_head}
    return next((name for name, size in GPT_MODELS.items() if size == shape), None)


def tokenizer_config(tokenizer: torch.nn.Module, config: VQConfig | None = None) -> VQConfig:
    """The config to save with `tokenizer`: `config` when given (its model section must build this tokenizer), else
    one rebuilt from the tokenizer's own arguments (model section only; trainer/loss keep their defaults)."""
    model_cls = next(name for name, cls in TOKENIZER_MODELS.items() if type(tokenizer) is cls)
    if config is None:
        return VQConfig(model=ModelSection(model_cls=model_cls, init_args=tokenizer.args,
                                           causal_settings=CausalSettings(causal_type=tokenizer.causal_type)))
    given = config.model
    args = dataclasses.replace(given.init_args,
                               out_inner_dim=given.init_args.out_inner_dim or tokenizer.args.out_inner_dim)
    causal_type = given.causal_settings.causal_type
    if given.model_cls != model_cls or args != tokenizer.args or causal_type != tokenizer.causal_type:
        raise UserError("save_pretrained: the given config does not describe this tokenizer (model.model_cls, "
                        "model.init_args or causal_type differ); pass the config it was built from, or none.")
    return dataclasses.replace(config, model=dataclasses.replace(given, init_args=args))


def _write_weights(path: Path, model: torch.nn.Module, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state, metadata={"format": "pt", **metadata})))


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike,
                    config: VQConfig | str | os.PathLike | None = None, name: str | None = None) -> Path:
    """Write `model` (a tokenizer or a GPT) to `folder` as model.safetensors + config.yaml + README.md.

    Args:
        model: a GigaTok tokenizer or GPT (DDP / torch.compile wrappers are removed).
        folder: created if missing; existing files of the same names are replaced (atomically).
        config: tokenizers only, optional: the `VQConfig` (or a config name / YAML path) it was built from; without it
            the model section is rebuilt from the tokenizer. GPTs carry their `GPTConfig`.
        name: the model's name in the card (default: the folder name).

    Returns:
        The folder.
    """
    from gigatok.zoo import load_config

    model = unwrap(model)
    kind = model_kind(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "gpt":
        if config is not None:
            raise UserError("save_pretrained: a GPT carries its own config (gpt.config); do not pass config=.")
        size = gpt_size_name(model.config)
        _write_weights(folder / WEIGHTS_NAME, model, {"gigatok_kind": "gpt", "gpt_model": size or "",
                                                      "pos_type": model.config.pos_type})
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml({"gpt_model": size, "config": dataclasses.asdict(model.config)})
    else:
        if config is not None and not isinstance(config, VQConfig):
            config = load_config(config)
        config = tokenizer_config(model, config)
        _write_weights(folder / WEIGHTS_NAME, model, {"gigatok_kind": "tokenizer",
                                                      "model_cls": config.model.model_cls})
        text = to_yaml(config)
    write_text_atomic(folder / CONFIG_NAME, text)
    write_text_atomic(folder / CARD_NAME, model_card(model, name or folder.resolve().name))
    return folder


def read_folder_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """('tokenizer' | 'gpt', the config as a plain dict) of a saved or exported folder."""
    from omegaconf import OmegaConf

    for file in (folder / CONFIG_NAME, folder / WEIGHTS_NAME):
        if not file.is_file():
            raise PretrainedFolderError(f"'{folder}' is not a saved GigaTok model: '{file.name}' is missing (a saved "
                                        "folder holds model.safetensors and config.yaml; see gigatok.save_pretrained).")
    try:
        data = OmegaConf.to_container(OmegaConf.load(folder / CONFIG_NAME))
    except Exception as err:  # noqa: BLE001 -- YAML syntax errors and the like: all a bad file
        raise PretrainedFolderError(f"cannot read '{folder / CONFIG_NAME}': {err}") from None
    if not isinstance(data, dict):
        raise PretrainedFolderError(f"'{folder / CONFIG_NAME}' is not a mapping")
    return ("gpt" if "gpt_model" in data and "config" in data else "tokenizer"), data


def load_folder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The tokenizer or GPT saved in `folder` (by `save_pretrained` or `gigatok export`), in eval mode on `device`,
    parameters frozen (`requires_grad_(True)` to fine-tune)."""
    folder = Path(folder)
    kind, data = read_folder_config(folder)
    if kind == "gpt":
        fields = {f.name for f in dataclasses.fields(GPTConfig)}
        unknown = sorted(set(data["config"]) - fields)
        if unknown:
            raise PretrainedFolderError(f"'{folder / CONFIG_NAME}': unknown GPT config field(s) {unknown}")
        weights = {"model": read_safetensors(folder / WEIGHTS_NAME)}
        return load_gpt(weights, GPTConfig(**data["config"]), device=device).requires_grad_(False)
    try:
        config = config_from_dict(data, source=str(folder / CONFIG_NAME))
    except ConfigError as err:
        raise PretrainedFolderError(f"'{folder}' does not hold a tokenizer config: {err}") from None
    return load_tokenizer(folder / WEIGHTS_NAME, config, device=device).requires_grad_(False)


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub model repository, through the `huggingface_hub` cache (offline: from the cache only)."""
    from huggingface_hub import constants, hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as err:  # noqa: BLE001 -- offline, missing repo or file, auth: all end the same way
        cache = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        raise PretrainedFolderError(
            f"could not fetch '{filename}' of the Hugging Face Hub repository '{repo_id}' ({type(err).__name__}: "
            f"{err}). Offline (HF_HUB_OFFLINE=1), it must already be in the hub cache under '{cache}': run "
            f"`huggingface-cli download {repo_id}` on a connected machine and copy HF_HOME over, or download the "
            "repository and pass its folder.") from None


def is_hub_id(source: str) -> bool:
    """`hf://owner/repo`, or `owner/repo` that is not a local path."""
    if source.startswith("hf://"):
        return True
    return bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def hub_folder(source: str, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub repository `source` (`owner/repo` or `hf://owner/repo`) holding its
    config.yaml and model.safetensors (downloaded into the hub cache when missing)."""
    repo_id = source.removeprefix("hf://").strip("/")
    if not _HUB_ID.match(repo_id):
        raise PretrainedFolderError(f"bad Hugging Face repository id '{source}': expected owner/repo")
    config = hub_file(repo_id, CONFIG_NAME, revision)
    weights = hub_file(repo_id, WEIGHTS_NAME, revision)
    if weights.parent != config.parent:  # both come from one snapshot folder of the cache
        raise CheckpointError(f"'{repo_id}': config.yaml and model.safetensors resolved to different snapshots")
    return config.parent


def from_pretrained(source: str | os.PathLike, device: str | torch.device = "cpu",
                    revision: str | None = None) -> torch.nn.Module:
    """A tokenizer or GPT (decided by its saved config) from a saved folder or a Hub repository.

    Args:
        source: a folder written by `save_pretrained` / `gigatok export`, or a Hub id `owner/repo` / `hf://owner/repo`.
        device: where the model goes; it is returned in eval mode with frozen parameters.
        revision: Hub branch, tag or commit (Hub ids only).
    """
    text = str(source)
    if Path(text).expanduser().is_dir():
        return load_folder(Path(text).expanduser(), device)
    if is_hub_id(text):
        return load_folder(hub_folder(text, revision), device)
    raise PretrainedFolderError(f"'{text}' is neither a saved model folder nor a Hub id (owner/repo). For a "
                                "checkpoint file or a released name use gigatok.load_tokenizer / gigatok.load_gpt.")


def push_to_hub(model_or_folder: torch.nn.Module | str | os.PathLike, repo_id: str,
                config: VQConfig | str | os.PathLike | None = None, private: bool = False, token: str | None = None,
                commit_message: str = "Upload GigaTok model", revision: str | None = None) -> Any:
    """Upload a model (saved first with `save_pretrained`) or a saved folder to the Hub repository `repo_id`, created
    if missing. Returns `HfApi.upload_folder`'s commit info.

    Args:
        config: tokenizers only, as in `save_pretrained`.
        private: create the repository private.
        token: a Hub token (default: the logged-in user's).
        revision: the branch to commit to.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="gigatok_push_") as tmp:
        if isinstance(model_or_folder, torch.nn.Module):
            folder = save_pretrained(model_or_folder, tmp, config=config, name=repo_id)
        else:
            folder = Path(model_or_folder)
            read_folder_config(folder)  # refuse a folder that from_pretrained could not load
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                 commit_message=commit_message, revision=revision)


def model_card(model: torch.nn.Module, name: str) -> str:
    """A Hub model card (README.md with YAML front matter) for a tokenizer or GPT."""
    model = unwrap(model)
    params = sum(p.numel() for p in model.parameters())
    if model_kind(model) == "gpt":
        c = model.config
        size = gpt_size_name(c) or "custom"
        what = (f"A class-conditional autoregressive GPT ({size}, {params / 1e6:.1f}M parameters) over the codes of a "
                f"GigaTok tokenizer: vocabulary K={c.vocab_size}, L={c.block_size} codes per image, "
                f"{c.num_classes} classes, positions {c.pos_type}.")
        usage = (f'gpt = gigatok.from_pretrained("{name}")\n'
                 'tokenizer = gigatok.from_pretrained("<the tokenizer it was trained on>")\n'
                 "images = gigatok.sample(gpt, tokenizer, [22, 388, 90, 978], cfg_scale=4.0)\n"
                 'gigatok.postprocess(images)[0].save("sample.png")')
        tags = "- image-generation\n- autoregressive"
    else:
        a = model.args
        what = (f"A GigaTok {'1D' if model.latent_shape[0] == 1 else '2D'} VQ image tokenizer ({params / 1e6:.1f}M "
                f"parameters): {a.image_size}x{a.image_size} px images to {model.num_tokens} codes from a codebook of "
                f"{a.codebook_size}.")
        usage = (f'tokenizer = gigatok.from_pretrained("{name}")\n'
                 f'images = gigatok.preprocess(Image.open("photo.jpg"), {a.image_size})  # (1, 3, S, S) in [-1, 1]\n'
                 "codes = tokenizer.encode_to_codes(images)  # (1, L) int64\n"
                 'gigatok.postprocess(tokenizer.decode_code(codes))[0].save("reconstruction.png")')
        tags = "- image-tokenizer\n- vector-quantization"
    return f"""---
library_name: gigatok
license: mit
tags:
- gigatok
{tags}
---

# {name}

{what}

Saved with [GigaTok](https://github.com/SilentView/GigaTok) (a PyTorch re-implementation): `model.safetensors`
holds the official state_dict keys, `config.yaml` the resolved config.

## Usage

```python
import gigatok
from PIL import Image

{usage}
```

## Citation

```bibtex
{CITATION}
```
"""
