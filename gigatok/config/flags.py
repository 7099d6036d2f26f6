"""Official command-line flags onto the typed config tree (level 0: argparse, omegaconf, no torch).

Every stage keeps the official flag names. A flag that sets a config field is mapped onto its dotted key:
- the tokenizer trainer lists its table by hand (`FLAG_TO_CONFIG` in `gigatok.stages.train_vq`: the official flag
  names and the official YAML layout differ);
- the GPT-side configs name their fields after the official flags, so `add_config_flags` generates the flags from
  the dataclasses (`--gpt-model` -> `model.gpt_model`), with each field's documentation as the help text.

Precedence, lowest first: dataclass defaults < YAML file (`--config` / `--model-config`) < official flags <
`--section.key=value` overrides. Flags default to None ("not given"), so a flag only overrides the file when given.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache
from typing import Any

from omegaconf import OmegaConf

from gigatok.config.checks import ConfigError
from gigatok.config.core import (
    config_from_dict,
    load_config,
    parse_overrides,
    to_dict,
)


def int_or_none(text: str) -> int | None:
    return None if text in ("None", "none", "null", "") else int(text)


def str_or_none(text: str) -> str | None:
    return None if text in ("None", "none", "null", "") else text


def split_overrides(parser: argparse.ArgumentParser, rest: list[str]) -> list[str]:
    """The `--section.key=value` overrides among the arguments `parse_known_args` left over; anything else is an
    unrecognized argument (argparse's own error, exit code 2)."""
    bad = [a for a in rest if not (a.startswith("--") and "=" in a and "." in a.split("=", 1)[0])]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like --section.key=value)")
    return rest


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data[key]
    data[leaf] = value


def resolve_config(schema: type, yaml_path: str | None, flags: list[tuple[str, tuple[str, ...], Any]],
                   overrides: list[str]) -> tuple[Any, list[str]]:
    """Defaults < YAML < official flags < overrides.

    Args:
        schema: the root dataclass.
        yaml_path: the config file, or None for the defaults.
        flags: (flag as typed, dotted keys it sets, value) for every flag that was given.
        overrides: `--section.key=value` strings.

    Returns:
        The config object and one report line per changed setting (for the run's log).
    """
    base = load_config(yaml_path, schema=schema)
    in_file = OmegaConf.load(yaml_path) if yaml_path is not None else OmegaConf.create({})
    data, source = to_dict(base), yaml_path or "<defaults>"
    report = []
    for flag, keys, value in flags:
        for key in keys:
            old = OmegaConf.select(OmegaConf.create(to_dict(base)), key)
            _set(data, key, value)
            if OmegaConf.select(in_file, key) is None:
                verdict = f"default {old!r}"
            else:
                verdict = f"{'overrides' if old != value else 'same as'} the YAML: {old!r}"
            report.append(f"{flag}: {key} = {value!r} ({verdict})")
    config = config_from_dict(data, schema=schema, source=f"{source} + command-line flags")
    if overrides:
        merged = OmegaConf.merge(OmegaConf.create(to_dict(config)), parse_overrides(overrides))
        config = config_from_dict(OmegaConf.to_container(merged), schema=schema, source=f"{source} + {overrides}")
        report += [f"override {item}" for item in overrides]
    return config, report


# ----------------------------------------------------------------------------------------------------------------
# Flags generated from the dataclasses (GPT side)
# ----------------------------------------------------------------------------------------------------------------

@cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal under each field), by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def flag_name(field: dataclasses.Field) -> str:
    """`--dropout-p` for field `dropout_p`, or the official spelling in the field's metadata."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _scalar_type(tp: Any) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return _scalar_type(args[0]) if args else tp


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, schema: type, section: str
                     ) -> dict[str, str]:
    """One flag per field of the dataclass at `schema.<section>` (fields with `metadata={"flag": None}` get none).

    Booleans become switches setting True (or False, for fields whose metadata says `"switch": False`, such as
    `--no-eval`), with an opposite switch where the metadata names one (`"negative": "--no-compile"`); every flag
    defaults to None, i.e. "take the config's value".

    Returns:
        argparse dest -> dotted config key, for `given_flags`.
    """
    cls = {f.name: f.type for f in dataclasses.fields(schema)}[section]
    cls = typing.get_type_hints(schema)[section] if isinstance(cls, str) else cls
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    table = {}
    for field in dataclasses.fields(cls):
        if "flag" in field.metadata and field.metadata["flag"] is None:
            continue
        flag, help_text = flag_name(field), docs.get(field.name, "")
        aliases = tuple(field.metadata.get("aliases", ()))
        dest = field.name
        kind = _scalar_type(hints[field.name])
        if kind is bool:
            const = field.metadata.get("switch", True)
            parser.add_argument(flag, *aliases, dest=dest, action="store_const", const=const, default=None,
                                help=help_text)
            if "negative" in field.metadata:  # e.g. --compile / --no-compile
                parser.add_argument(field.metadata["negative"], dest=dest, action="store_const", const=not const,
                                    default=None, help=f"the opposite of {flag}")
        else:
            optional = type(None) in typing.get_args(hints[field.name])
            parser.add_argument(flag, *aliases, dest=dest, type=kind if kind in (int, float) else
                                str_or_none if optional else str,
                                default=None, help=help_text, choices=field.metadata.get("choices"),
                                metavar=field.name.upper())
        table[dest] = f"{section}.{field.name}"
    return table


def given_flags(args: argparse.Namespace, table: dict[str, str]) -> list[tuple[str, tuple[str, ...], Any]]:
    """(flag, keys, value) of every generated flag the user passed (value not None), for `resolve_config`."""
    return [(f"--{dest.replace('_', '-')}", (key,), getattr(args, dest)) for dest, key in table.items()
            if getattr(args, dest, None) is not None]


def check_choice(value: Any, allowed: tuple[Any, ...], key: str) -> None:
    """A ConfigError naming `key` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{key} '{value}' is not one of {[a for a in allowed if a is not None]}")
