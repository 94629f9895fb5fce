"""Parsing config values: a section from a JSON object, a field from a command-line string, dotted keys.

Every config value, whatever its source (a JSON file, ``--config.train.steps=30``, a Python config file),
goes through ``coerce`` with the field's type; an unknown key or a bad value raises ``ConfigError`` with one
line that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Literal

from hrm.errors import UserError


class ConfigError(UserError):
    """A configuration problem the user can fix; the message is one line naming it."""


def build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        where = f"section '{prefix.rstrip('.')}'" if prefix else "a config"
        raise ConfigError(f"{where} must be a JSON object of keys and values, got {raw!r:.60}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(unknown_key(prefix + key, [prefix + n for n in names]))
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = build(kind, value, prefix + key + ".")
        else:
            kwargs[key] = coerce(prefix + key, kind, value)
    return cls(**kwargs)


def unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown config key '{key}'{hint}"


def coerce(key: str, kind, value):
    """Parse ``value`` (a string from the command line, or a JSON value) as ``kind``: the one parse of every
    config field, choices (``Literal``) and integer tuples ("1,2,4" or a list) included."""
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):  # a nested section, e.g. data.synthetic
        return build(kind, value, prefix=key + ".")
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
        return value
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects integers such as '1,2,4', got {value!r}")
        return tuple(coerce(key, int, item) for item in items)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
        else:
            try:
                return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")
    return value


def all_keys(config) -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{k}" for k in all_keys(value)]
        else:
            keys.append(f.name)
    return keys


def apply_override(config, key: str, value: str) -> None:
    """Set ``config.<key>`` from a command-line string, type-checked."""
    known = all_keys(config)
    if key not in known:
        raise ConfigError(unknown_key(key, known))
    set_key(config, key, value)


def set_key(config, key: str, value) -> None:
    """``config.<key> = value`` parsed with the field's type (``value``: a command-line string or JSON value)."""
    *parents, leaf = key.split(".")
    target = config
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, coerce(key, typing.get_type_hints(type(target))[leaf], value))
