"""The model zoo: the 13 files the official GigaTok README releases, LlamaGen's 9 class-conditional ImageNet files,
and the tokenizer configs shipped in the package.

Level 0 (standard library; `gigatok.config` only inside `load_config`), so `gigatok.list_pretrained()` and
`gigatok.load_config("VQ_SS256")` work without importing torch.

GigaTok: every release is a 256x256 px, 1D tokenizer (or a GPT with learned 1D positions trained on one). The official
repository ships `*_2d.yaml` configs (VQ_SS256_2d, VQ_SB256_2d, VQ_BL256_2d) for its ablations but releases no 2D
checkpoint. Its download links are Google Drive files (there is no official Hugging Face Hub repository).

LlamaGen (FoundationVision/LlamaGen on the Hugging Face Hub): the CNN tokenizers VQ-16 (`vq_ds16_c2i`) and VQ-8
(`vq_ds8_c2i`), and the c2i GPTs with 2D RoPE (`--gpt-2d`) on VQ-16 codes: 16x16 codes at 256 px, 24x24 at 384 px
(the same tokenizer file at 384 px: `Pretrained.image_size`).

`gigatok.api` fetches files into the torch-hub cache, or from a mirror named by `GIGATOK_WEIGHTS_BASE_URL`
(`<base>/<filename>`). Numbers are the papers' (official READMEs): rFID and LPIPS of the tokenizer, gFID (with CFG)
and linear-probing accuracy of the GPT trained on its codes; None where a README gives none.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from gigatok.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "vq"  # package data; `configs/` in the repo links here
_DRIVE_VIEW = "https://drive.google.com/file/d/{id}/view"
# Direct download of a public Drive file; `confirm=t` skips the "cannot scan for viruses" page of large files.
_DRIVE_DOWNLOAD = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
_LLAMAGEN_HUB = "https://huggingface.co/FoundationVision/LlamaGen/resolve/main/{file}"


class UnknownPretrainedError(UserError):
    """A name that is not in the registry (`gigatok.list_pretrained()`)."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One released checkpoint file."""

    name: str
    """Registry name: the tokenizer's config name (`VQ_SS256`) or the GPT file's stem (`GPT_B256_e300_VQ_SS`)."""
    kind: Literal["tokenizer", "gpt"]
    filename: str
    """The official file name (`VQ_SS256_e100.pt`)."""
    config: str
    """Tokenizer config name (`gigatok.load_config(config)`); for a GPT, the config of the tokenizer it models."""
    tokenizer: str
    """The tokenizer entry this file is or was trained on (its own name for a tokenizer)."""
    gpt_model: str | None
    """GPT registry size (`GPT-B`, `GPT-XL`, `GPT-XXL`); None for a tokenizer."""
    params: str
    """Parameter count as the paper states it (`136M`, `2.9B`)."""
    rfid: float | None
    """Tokenizer reconstruction FID on ImageNet 256 val (tokenizers)."""
    lpips: float | None
    """Tokenizer reconstruction LPIPS (tokenizers)."""
    gfid: float | None
    """Class-conditional generation FID with CFG (GPTs)."""
    lin_probe_acc: float | None
    """Linear-probing top-1 accuracy (%) of the GPT's features (GPTs)."""
    url: str
    """The official download link (GigaTok: the Google Drive page its README links; LlamaGen: the Hub file)."""
    repository: Literal["GigaTok", "LlamaGen"] = "GigaTok"
    """The project that released the file."""
    gpt_2d: bool = False
    """GPTs: 2D RoPE over the token grid (LlamaGen's; `--gpt-2d`), else learned 1D positions (GigaTok's)."""
    image_size: int = 256
    """Image side S the file is used at (LlamaGen's 384 px GPTs: the VQ-16 tokenizer at 384 px, 24x24 codes)."""

    @property
    def drive_id(self) -> str | None:
        """The Google Drive file id in `url` (None for a file that is not on Google Drive)."""
        return self.url.split("/d/")[1].split("/")[0] if "drive.google.com/file/d/" in self.url else None

    @property
    def download_url(self) -> str:
        """A direct-download form of `url`, or `<GIGATOK_WEIGHTS_BASE_URL>/<filename>` when that variable is set."""
        base = os.environ.get("GIGATOK_WEIGHTS_BASE_URL", "").strip()
        if base:
            return f"{base.rstrip('/')}/{self.filename}"
        return _DRIVE_DOWNLOAD.format(id=self.drive_id) if self.drive_id else self.url

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tok(name: str, filename: str, params: str, rfid: float, lpips: float, drive_id: str) -> Pretrained:
    return Pretrained(name, "tokenizer", filename, name, name, None, params, rfid, lpips, None, None,
                      _DRIVE_VIEW.format(id=drive_id))


def _gpt(stem: str, tokenizer: str, gpt_model: str, params: str, gfid: float, acc: float, drive_id: str) -> Pretrained:
    return Pretrained(stem, "gpt", f"{stem}.pt", tokenizer, tokenizer, gpt_model, params, None, None, gfid, acc,
                      _DRIVE_VIEW.format(id=drive_id))


def _llamagen_tok(name: str, config: str, params: str, rfid: float) -> Pretrained:
    return Pretrained(name, "tokenizer", f"{name}.pt", config, name, None, params, rfid, None, None, None,
                      _LLAMAGEN_HUB.format(file=f"{name}.pt"), repository="LlamaGen")


def _llamagen_gpt(name: str, gpt_model: str, params: str, gfid: float, image_size: int) -> Pretrained:
    return Pretrained(name, "gpt", f"{name}.pt", "LlamaGen_VQ16", "vq_ds16_c2i", gpt_model, params, None, None, gfid,
                      None, _LLAMAGEN_HUB.format(file=f"{name}.pt"), repository="LlamaGen", gpt_2d=True,
                      image_size=image_size)


PRETRAINED: dict[str, Pretrained] = {p.name: p for p in (
    _tok("VQ_SS256", "VQ_SS256_e100.pt", "136M", 1.01, 0.2226, "1Q_WHCT6mdNnu0GkHCm0CbXaP6kFeTe5h"),
    _tok("VQ_SB256", "VQ_SB256_e200.pt", "232M", 0.89, 0.2121, "17K-h2Jwep53RUEf6CEOV3ro7Cz_DaIWC"),
    _tok("VQ_BL256", "VQ_BL256_e200.pt", "622M", 0.81, 0.2059, "1VnBu4aj0N7lFa1_wKBdTgLNZmaNgFvwi"),
    _tok("VQ_BL256_dino_disc", "VQ_BL256_dino_disc.pt", "622M", 0.51, 0.2056, "11bXyg6y15hIWYnIsl7YbwDtRAJMK7jjn"),
    _tok("VQ_XLXXL256", "VQ_XLXXL256_e300.pt", "2.9B", 0.79, 0.1947, "1HK_bV_zklLfGmIHGE4gMwjfhLLKi6Z3G"),
    _gpt("GPT_B256_e300_VQ_SS", "VQ_SS256", "GPT-B", "111M", 4.05, 62.6, "1VTaBPP-UUE6wc148vQQejfYNVjyYm4IS"),
    _gpt("GPT_B256_e300_VQ_SB", "VQ_SB256", "GPT-B", "111M", 3.83, 62.9, "1aeMpU5ybvs0s5wsuhBoTZDhYYc4WHZh7"),
    _gpt("GPT_B256_e300_VQ_BL", "VQ_BL256", "GPT-B", "111M", 3.26, 67.6, "1ZiRAk9pHhcrrbVMP1qSf4rDfSJMCsY6Y"),
    _gpt("GPT_B256_e300_VQ_BL_dino_disc", "VQ_BL256_dino_disc", "GPT-B", "111M", 3.33, 67.7,
         "1BckVcQ7NPipa8tjAazwBy0usJnO8pdHp"),
    _gpt("GPT_B256_e300_VQ_XLXXL", "VQ_XLXXL256", "GPT-B", "111M", 3.15, 72.0, "1zIIy6TVo8WIHiGKFp83CfyFaUytFQ1uR"),
    _gpt("GPT_XL256_e300_VQ_BL", "VQ_BL256", "GPT-XL", "775M", 2.13, 70.6, "1ABRaQ8h-mv-JE6gHlAnTPUJTlbd25yQt"),
    _gpt("GPT_XXL256_e300_VQ_BL", "VQ_BL256", "GPT-XXL", "1.4B", 2.03, 69.4, "1qC1wkF99IV2cptGR_ALuqqXz0oKBiKp9"),
    _gpt("GPT_XXL256_e300_VQ_XLXXL", "VQ_XLXXL256", "GPT-XXL", "1.4B", 1.98, 74.0,
         "1yMPOYx3oR1PZpZynEotQAO720UVxL0iL"),
    # LlamaGen's README (rFID at 256 px; FID of the GPTs with CFG at their image size).
    _llamagen_tok("vq_ds16_c2i", "LlamaGen_VQ16", "72M", 2.19),
    _llamagen_tok("vq_ds8_c2i", "LlamaGen_VQ8", "70M", 0.59),
    _llamagen_gpt("c2i_B_256", "GPT-B", "111M", 5.46, 256),
    _llamagen_gpt("c2i_B_384", "GPT-B", "111M", 6.09, 384),
    _llamagen_gpt("c2i_L_256", "GPT-L", "343M", 3.80, 256),
    _llamagen_gpt("c2i_L_384", "GPT-L", "343M", 3.07, 384),
    _llamagen_gpt("c2i_XL_384", "GPT-XL", "775M", 2.62, 384),
    _llamagen_gpt("c2i_XXL_384", "GPT-XXL", "1.4B", 2.34, 384),
    _llamagen_gpt("c2i_3B_384", "GPT-3B", "3.1B", 2.18, 384),
)}


def list_pretrained(kind: Literal["tokenizer", "gpt"] | None = None,
                    repository: Literal["GigaTok", "LlamaGen"] | None = None) -> list[Pretrained]:
    """The released checkpoints (GigaTok's 13: 5 tokenizers, 8 GPTs; LlamaGen's 9: 2 tokenizers, 7 GPTs), optionally
    only one kind or one project's, in the READMEs' order."""
    if kind not in (None, "tokenizer", "gpt"):
        raise UserError(f"kind must be 'tokenizer', 'gpt' or None, got {kind!r}")
    if repository not in (None, "GigaTok", "LlamaGen"):
        raise UserError(f"repository must be 'GigaTok', 'LlamaGen' or None, got {repository!r}")
    return [p for p in PRETRAINED.values()
            if (kind is None or p.kind == kind) and (repository is None or p.repository == repository)]


def find_pretrained(name: str) -> Pretrained | None:
    """The entry of a registry name, an official file name or its stem (`VQ_SS256`, `VQ_SS256_e100.pt`,
    `VQ_SS256_e100`); None when it is none of them."""
    if name in PRETRAINED:
        return PRETRAINED[name]
    base = Path(name).name
    return next((p for p in PRETRAINED.values() if base in (p.filename, Path(p.filename).stem)), None)


def get_pretrained(name: str, kind: Literal["tokenizer", "gpt"] | None = None) -> Pretrained:
    """`find_pretrained(name)`, which must exist (and be of `kind` when given).

    Raises:
        UnknownPretrainedError: not a released name, or the other kind.
    """
    entry = find_pretrained(name)
    names = [p.name for p in list_pretrained(kind)]
    if entry is None:
        raise UnknownPretrainedError(f"'{name}' is not a released checkpoint; choose one of {names} "
                                     "(gigatok.list_pretrained()), or pass a file, a folder or hf://owner/repo.")
    if kind is not None and entry.kind != kind:
        raise UnknownPretrainedError(f"'{name}' is a released {entry.kind}, not a {kind}; the released {kind}s are "
                                     f"{names}.")
    return entry


def config_names() -> list[str]:
    """Names of the tokenizer configs shipped in the package (`VQ_SS256`, ..., `VQ_debug`)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a shipped config name (`VQ_SS256`, `VQ_SS256.yaml`, `configs/vq/VQ_SS256.yaml` from any
    folder) or an existing file path.

    Raises:
        ConfigError: neither an existing file nor a shipped config name.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file() and (len(path.parts) == 1 or path.parent.as_posix().endswith("configs/vq")):
        return shipped
    from gigatok.config import ConfigError

    raise ConfigError(f"config not found: '{name_or_path}' is neither a file nor a shipped config name; the shipped "
                      f"configs are {config_names()}.")


def load_config(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> Any:
    """The tokenizer config (`gigatok.config.VQConfig`) of a shipped name or a YAML file, with `--key=value`
    overrides. Works from an installed package: the YAML files are package data.

    Example: `gigatok.load_config("VQ_SS256", ["--model.init_args.image_size=512"])`.
    """
    from gigatok.config import load_config as load_yaml

    return load_yaml(config_path(name_or_path), overrides)


def tokenizer_config_of(name: str) -> Any:
    """The config of the tokenizer a released file is or was trained on, at the file's image size: LlamaGen's 384 px
    GPTs get VQ-16 at 384 px (24x24 codes; the CNN has no positional table, so the same weights work). Pair it with
    the tokenizer file: `gigatok.load_tokenizer("vq_ds16_c2i", config=gigatok.zoo.tokenizer_config_of("c2i_L_384"))`.
    """
    entry = get_pretrained(name)
    config = load_config(entry.config)
    args = config.model.init_args
    if entry.image_size == args.image_size:
        return config
    grid = entry.image_size // 2 ** (len(args.encoder_ch_mult) - 1)  # CNN tokenizers only (all 1D ones are 256 px)
    return load_config(entry.config, [f"--model.init_args.image_size={entry.image_size}",
                                      f"--model.init_args.num_latent_tokens={grid * grid}"])
