"""Value checks of the config tree, declared in each field's metadata (`choice`, `between`, `positive`) and applied
whenever a config is loaded (`validate`): a value out of bounds is one `ConfigError` naming the key and what it
accepts. No third-party imports: every config module imports it.
"""
from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from typing import Any

from gigatok.errors import UserError


class ConfigError(UserError, ValueError):
    """A user error in a config file or override: the message says what, where, and how to fix it."""


def choice(*allowed: object) -> dict[str, object]:
    """Field metadata: the value must be one of `allowed`."""
    return {"choices": list(allowed)}


def between(low: float | None, high: float | None, *, low_open: bool = False) -> dict[str, object]:
    """Field metadata: low <= value <= high (either bound may be None; `low_open`: low < value)."""
    return {"range": (low, high, low_open)}


def positive() -> dict[str, object]:
    """Field metadata: value > 0."""
    return between(0, None, low_open=True)


def _check_value(key: str, value: object, meta: Any) -> str | None:
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"'{key}' is {value!r}, not one of {meta['choices']}.{hint}"
    if "range" in meta:
        low, high, low_open = meta["range"]
        if low is not None and (value < low or (low_open and value == low)):
            return f"'{key}' is {value!r}; it must be {'>' if low_open else '>='} {low}."
        if high is not None and value > high:
            return f"'{key}' is {value!r}; it must be <= {high}."
    return None


def validate(config: Any, source: str = "<config>", prefix: str = "") -> Any:
    """Check every field's declared choices and range (metadata of `choice`, `between`, `positive`).

    Raises:
        ConfigError: naming the first key out of bounds and its allowed values.
    """
    for f in fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            validate(value, source, key + ".")
        elif (problem := _check_value(key, value, f.metadata)) is not None:
            raise ConfigError(f"{source}: {problem}")
    return config
