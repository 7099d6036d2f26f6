"""Loading the typed config tree: OmegaConf structured configs from YAML, with `--section.key=value` overrides.

Precedence: CLI override > official flag > YAML file > dataclass default. Unknown keys and wrong types fail with a
`ConfigError` that names the key and the file and suggests the closest valid key. This package imports only the
standard library and omegaconf (no torch), so it sits at level 0 of the import graph.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import MISSING, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gigatok.config.checks import ConfigError, validate


def all_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted names of every field of a (nested) dataclass schema, for 'did you mean' hints."""
    keys = []
    for f in fields(schema):
        name = f"{prefix}{f.name}"
        keys.append(name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(all_keys(type(default), name + "."))
    return keys


_all_keys = all_keys  # the name tests and older callers use


def closest_key(key: str, keys: list[str]) -> str | None:
    """The valid key `key` most likely means: one with the same last name in another section first (`model.lr` ->
    `trainer.lr`: a field put under the wrong section), else the closest spelling (`trainer.lrr` -> `trainer.lr`)."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != key]
    if same_leaf:
        return difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0)[0]
    hint = difflib.get_close_matches(key, keys, n=1)
    return hint[0] if hint else None


def _explain(err: Exception, schema: type, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]  # drop OmegaConf's full_key/type trailer
    if isinstance(err, ConfigKeyError) and key:
        hint = closest_key(key, all_keys(schema))
        suggestion = f" Did you mean '{hint}'?" if hint else ""
        return ConfigError(f"{source}: unknown config key '{key}'.{suggestion} Remove it or fix its spelling.")
    if isinstance(err, ValidationError) and key:
        return ConfigError(f"{source}: invalid value for '{key}': {msg}")
    return ConfigError(f"{source}: {msg} (a section must be a mapping of key: value; check the file's "
                       "indentation and the override syntax --section.key=value)")


def parse_overrides(overrides: list[str]) -> DictConfig:
    """Turn `['--model.init_args.rot=false', 'trainer.lr=2e-4']` into a DictConfig (dotlist syntax)."""
    dotlist = []
    for item in overrides:
        item = item[2:] if item.startswith("--") else item
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like --section.key=value")
        dotlist.append(item)
    return OmegaConf.from_dotlist(dotlist)


def _default_schema(schema: type | None) -> type:
    if schema is not None:
        return schema
    from gigatok.config.tokenizer import VQConfig

    return VQConfig


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None, schema: type | None = None) -> Any:
    """Load a YAML file into the structured schema, apply overrides, and return the typed object.

    Args:
        path: YAML file, or None for the schema defaults.
        overrides: dotted `key=value` strings (a leading `--` is allowed).
        schema: root dataclass (default: the tokenizer's `VQConfig`).

    Returns:
        An instance of `schema` (a real dataclass object, not a DictConfig).

    Raises:
        ConfigError: missing file, unknown key (named, with a suggestion) or wrong type.
    """
    schema = _default_schema(schema)
    base = OmegaConf.structured(schema)
    source = str(path) if path is not None else "<defaults>"
    try:
        if path is not None:
            if not os.path.isfile(path):
                raise ConfigError(f"config file not found: '{path}'. Pass one of the files under configs/.")
            base = OmegaConf.merge(base, OmegaConf.load(path))
        if overrides:
            source = f"{source} + overrides {overrides}"
            base = OmegaConf.merge(base, parse_overrides(overrides))
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise _explain(err, schema, source) from None
    except Exception as err:  # YAML syntax errors (yaml.YAMLError) and other parse failures
        raise ConfigError(f"{source}: cannot parse the YAML file: {err}") from None
    return validate(OmegaConf.to_object(base), source)


def config_from_dict(data: dict, schema: type | None = None, source: str = "<dict>") -> Any:
    """Validate a plain dict (e.g. the config stored inside a checkpoint) against `schema` (default `VQConfig`)."""
    schema = _default_schema(schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data))
    except OmegaConfBaseException as err:
        raise _explain(err, schema, source) from None
    return validate(OmegaConf.to_object(merged), source)


def to_dict(config: Any) -> dict:
    """Plain, YAML/JSON-serialisable dict of a structured config object."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def to_yaml(config: Any) -> str:
    """The resolved config as YAML text (what runs save as `config.yaml`)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))
