"""Config dataclasses -> argparse options and YAML sections, with errors that name the key.

Field documentation is the attribute docstring under each field (as in CleanRL's `Args`), read
from the source with `ast`, so one docstring serves the code, the YAML reference and `--help`.

A dataclass-typed field with `metadata={"flat": True}` is a group whose keys are written at the
parent's level (a flat YAML section over nested dataclasses); a field of the group may name its
flat spelling with `metadata={"flat_key": "..."}`. The nested spelling is accepted too.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any

from system.errors import ConfigError


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
    if typing.get_origin(inner) in (typing.Union, types.UnionType):  # e.g. float | Literal["auto"]
        return _coerce_union(value, inner, key)
    if typing.get_origin(inner) is typing.Literal:
        choices = typing.get_args(inner)
        if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans: the choice so spelled
            spellings = ("on", "yes", "true") if value else ("off", "no", "false")
            spelled = [choice for choice in choices if isinstance(choice, str) and choice.lower() in spellings]
            if len(spelled) == 1:
                return spelled[0]
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


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """The first of the union's types (Literal choices first) that takes `value`."""
    members = sorted(typing.get_args(tp), key=lambda member: typing.get_origin(member) is not typing.Literal)
    for member in members:
        try:
            return coerce(value, member, key)
        except ConfigError:
            continue
    names = " or ".join(_type_name(member) for member in members)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def flat_groups(cls: type) -> dict[str, type]:
    """The fields of `cls` marked flat, by name: their keys are written at `cls`'s level."""
    hints = _resolved_types(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("flat")}


def flat_names(cls: type) -> dict[str, str]:
    """Attribute -> the key it is written as in a flat section (`flat_key` metadata, else its name)."""
    return {f.name: f.metadata.get("flat_key", f.name) for f in dataclasses.fields(cls)}


def flatten(cls: type, values: Mapping[str, Any], section: str) -> dict[str, Any]:
    """`values` (one source's keys of section `cls`) with flat groups given nested written flat:
    `{"sac": {"ensemble_size": 4}}` -> `{"ensemble_size": 4}`. Sources are flattened before they
    are merged, so a later source overrides an earlier one whichever spelling each used.

    Raises:
        ConfigError: a key given both ways in `values`, or a nested key its group lacks.
    """
    groups = flat_groups(cls)
    out: dict[str, Any] = {}
    nested: list[tuple[str, Any, str]] = []
    for key, value in values.items():
        if key not in groups or not isinstance(value, Mapping):
            out[key] = value
            continue
        names = flat_names(groups[key])
        for attribute, item in value.items():
            if attribute not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(f"{section}.{key}.{attribute}: unknown key (known keys: {known})")
            nested.append((names[attribute], item, f"{section}.{key}.{attribute}"))
    for flat_key, item, spelled in nested:
        if flat_key in out:
            raise ConfigError(f"{section}.{flat_key}: given both flat and as {spelled}")
        out[flat_key] = item
    return out


@functools.cache
def _flat_routes(cls: type) -> dict[str, tuple[str, str]]:
    """Flat key -> (group field, attribute in the group), for every flat group of `cls`."""
    own = {f.name for f in dataclasses.fields(cls)}
    routes: dict[str, tuple[str, str]] = {}
    for group, group_cls in flat_groups(cls).items():
        for attribute, key in flat_names(group_cls).items():
            if key in own or key in routes:
                raise TypeError(f"{cls.__name__}: flat key {key!r} of {group} is defined twice")
            routes[key] = (group, attribute)
    return routes


def build(cls: type, values: Mapping[str, Any] | None, section: str, spelled: Mapping[str, str] | None = None) -> Any:
    """Builds dataclass `cls` from a mapping, naming `section.key` in every error.

    Keys of flat groups may be given at this level (routed into their group) or nested under the
    group's name. `spelled` (attribute -> key) is how the caller's keys were written, for errors.
    """
    values = values or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
    spelled = dict(spelled or {})
    hints = _resolved_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    routes = _flat_routes(cls)
    own: dict[str, Any] = {}
    routed: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key in routes:
            group, attribute = routes[key]
            routed.setdefault(group, {})[attribute] = value
        else:
            own[key] = value
    unknown = sorted(set(own) - names)
    if unknown:
        known = sorted((names - set(flat_groups(cls))) | set(routes))
        raise ConfigError(f"{section}.{unknown[0]}: unknown key (known keys: {', '.join(known)})")
    kwargs = {}
    for name, value in own.items():
        if name not in routed:
            kwargs[name] = coerce(value, hints[name], f"{section}.{spelled.get(name, name)}")
    for group, group_values in routed.items():
        group_cls = hints[group]
        nested = own.get(group) or {}
        if not isinstance(nested, Mapping):
            raise ConfigError(f"{section}.{group}: expected a mapping of keys, got {nested!r}")
        keys = flat_names(group_cls)
        for attribute in sorted(set(nested) & set(group_values)):
            raise ConfigError(f"{section}.{keys[attribute]}: given both flat and as {section}.{group}.{attribute}")
        kwargs[group] = build(group_cls, {**nested, **group_values}, section, keys)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        text = str(exc)
        field = text.split("=", 1)[0] if "=" in text.split(":", 1)[0] else ""
        known = {spelled.get(name, name) for name in names} | set(flat_names(cls).values())
        where = f"{section}.{spelled.get(field, field)}" if field in known | names else section
        raise ConfigError(f"{where}: {text}") from None


def as_mapping(config: Any) -> dict[str, Any]:
    """The inverse of `build`: a dataclass as plain values, flat groups written flat."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("flat"):
            names = flat_names(type(value))
            out.update({names[key]: item for key, item in as_mapping(value).items()})
        elif dataclasses.is_dataclass(value):
            out[f.name] = as_mapping(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    dest_prefix: str,
    skip: tuple[str, ...] = (),
    title: str | None = None,
) -> None:
    """Adds `--field-name` options for each field of `cls` (and of its flat groups, by their flat
    keys), with help from its docstrings, under the heading `title`.

    Values stay None unless given, so they override the config file only when set (or, read back
    with `from_arguments`, leave the field's default).
    """
    group = parser.add_argument_group(title or f"{dest_prefix} options (override the config file)")
    for key, tp, default, doc in _flat_fields(cls):
        if key in skip:
            continue
        inner, _ = _unwrap_optional(tp)
        shown = "(required)" if default is dataclasses.MISSING else f"(default: {default})"
        help_text = f"{doc} {shown}".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f"{dest_prefix}.{key}", "default": None, "help": help_text}
        if typing.get_origin(inner) in (dict, list) or dataclasses.is_dataclass(inner):
            continue  # set in the YAML file or with --set section.key='{a: 1}' / section.sub.key=v
        if typing.get_origin(inner) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(inner))
        else:
            kwargs["metavar"] = {int: "INT", float: "FLOAT", bool: "BOOL"}.get(inner, "TEXT")
        group.add_argument(f"--{key.replace('_', '-')}", **kwargs)


def option_name(field: str) -> str:
    """The command-line option of a field: `num_actors` -> `--num-actors`."""
    return f"--{field.replace('_', '-')}"


def from_arguments(args: argparse.Namespace, cls: type, dest_prefix: str) -> Any:
    """Builds `cls` (no flat groups) from the options `add_arguments` added, a field's default
    where its option was not given; every error names the option (`--epsilon: ...`).

    Raises:
        ConfigError: a required option missing, a value of the wrong type, or one `cls` refuses.
    """
    hints = _resolved_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"{dest_prefix}.{f.name}", None)
        if value is not None:
            kwargs[f.name] = coerce(value, hints[f.name], option_name(f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{option_name(f.name)}: required")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        field = text.split("=", 1)[0] if "=" in text.split(":", 1)[0] else ""
        if field in hints:  # the dataclasses' own checks say `name=value: why`
            raise ConfigError(f"{option_name(field)}{text[len(field) :]}") from None
        raise ConfigError(text) from None


def _flat_fields(cls: type) -> list[tuple[str, Any, Any, str]]:
    """(key, type, default, doc) of each key a section of `cls` takes, flat groups expanded."""
    docs = field_docs(cls)
    hints = _resolved_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("flat"):
            names = flat_names(hints[f.name])
            out += [(names[name], *rest) for name, *rest in _flat_fields(hints[f.name])]
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:  # e.g. a list: [] by default, not required
            default = f.default_factory()
        out.append((f.name, hints[f.name], default, docs.get(f.name, "")))
    return out


def describe(cls: type, section: str) -> str:
    """A YAML-like reference of a config section: each key, default and docstring."""
    lines = [f"{section}:"]
    for key, _, default, doc in _flat_fields(cls):
        if dataclasses.is_dataclass(default):  # a nested section with defaults: its keys, indented
            lines.append(f"  {key}:    # {doc}")
            lines += [f"  {line}" for line in describe(type(default), key).splitlines()[1:]]
            continue
        shown = "(required)" if default is dataclasses.MISSING else "null" if default is None else default
        lines.append(f"  {key}: {shown}    # {doc}")
    return "\n".join(lines)
