"""Config dataclasses -> argparse options and YAML sections, with errors that name the key.

Field documentation is the attribute docstring under each field (as in CleanRL's `Args`), read
from the source with `ast`, so one docstring serves the code, the YAML reference and `--help`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Converts a YAML/CLI value to the field's type, or raises ConfigError naming `key`."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required (got null)")
    if typing.get_origin(inner) is typing.Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if inner is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if typing.get_origin(inner) is dict:
        key_type, value_type = typing.get_args(inner)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(k, key_type, key): coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if typing.get_origin(inner) is list:
        (item_type,) = typing.get_args(inner)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(inner):
        return build(inner, value, key)
    raise ConfigError(f"{key}: unsupported field type {inner!r}")


def build(cls: type, values: Mapping[str, Any] | None, section: str) -> Any:
    """Builds dataclass `cls` from a mapping, naming `section.key` in every error."""
    values = values or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
    hints = _resolved_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key (known keys: {', '.join(sorted(names))})")
    kwargs = {name: coerce(value, hints[name], f"{section}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        text = str(exc)
        field = text.split("=", 1)[0] if "=" in text.split(":", 1)[0] else ""
        where = f"{section}.{field}" if field in names else section
        raise ConfigError(f"{where}: {text}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type, dest_prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Adds `--field-name` options for each field of `cls`, with help from its docstrings.

    Values stay None unless given, so they override the config file only when set.
    """
    docs = field_docs(cls)
    hints = _resolved_types(cls)
    group = parser.add_argument_group(f"{dest_prefix} options (override the config file)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        inner, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f"{dest_prefix}.{f.name}", "default": None, "help": help_text}
        if typing.get_origin(inner) in (dict, list) or dataclasses.is_dataclass(inner):
            continue  # set in the YAML file or with --set section.key='{a: 1}' / section.sub.key=v
        if typing.get_origin(inner) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(inner))
        else:
            kwargs["metavar"] = {int: "INT", float: "FLOAT", bool: "BOOL"}.get(inner, "TEXT")
        group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)


def describe(cls: type, section: str) -> str:
    """A YAML-like reference of a config section: each key, default and docstring."""
    docs = field_docs(cls)
    lines = [f"{section}:"]
    for f in dataclasses.fields(cls):
        default = "(required)" if f.default is dataclasses.MISSING else "null" if f.default is None else f.default
        lines.append(f"  {f.name}: {default}    # {docs.get(f.name, '')}")
    return "\n".join(lines)
