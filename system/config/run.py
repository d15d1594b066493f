"""`RunConfig`: one run's configuration, composed of each package's section.

Sources, later ones winning: the dataclass defaults, a YAML file, `--set section.key=value`
overrides, then explicit command-line flags; the actors' insert settings a config leaves out are
derived from the run (`insert_settings`). Every problem is a ConfigError naming the key,
raised before anything starts.
"""

from __future__ import annotations

import dataclasses
import pathlib
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from actors import ActorsConfig, EnvConfig
from learner import LearnerConfig
from replay import ReplayConfig, redact_url
from system.config.dataclass_args import as_mapping, build, flatten
from system.config.insert_settings import with_derived_inserts
from system.config.offline import OfflineConfig
from system.config.sections import RayConfig, RedisConfig, TrainConfig
from system.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """A qfleet run: one section per package."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment (the `env` section)."""

    actors: ActorsConfig = field(default_factory=ActorsConfig)
    """The env actors (the `actors` section)."""

    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """The replay shards (the `replay` section)."""

    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The learner (the `learner` section)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """`qfleet train`: length, run directory, shards, evaluation, placement (the `train` section)."""

    redis: RedisConfig = field(default_factory=RedisConfig)
    """The run's Redis (the `redis` section)."""

    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray cluster (the `ray` section)."""

    offline: OfflineConfig = field(default_factory=OfflineConfig)
    """A dataset learned from first, then mixed into online batches (the `offline` section)."""


SECTIONS: dict[str, type] = typing.get_type_hints(RunConfig)
"""Section name -> its config dataclass."""


def parse_override(text: str) -> tuple[str, str, Any]:
    """Splits `section.key=value` (value parsed as YAML: 1e5, null, true, "text")."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    path, raw = text.split("=", 1)
    if "." not in path or "" in path.split("."):
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. replay.capacity=1000")
    section, key = path.split(".", 1)  # key may go deeper: env.android.tap_rows=3
    if section not in SECTIONS:
        raise ConfigError(f"{section}: unknown section (known: {', '.join(SECTIONS)})")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot parse {raw!r}: {exc}") from None
    return section, key, value


def load_config(
    path: str | pathlib.Path | None,
    overrides: list[str] = (),
    flags: dict[str, Any] | None = None,
    base: dict[str, dict[str, Any]] | None = None,
    *,
    derive_inserts: bool = True,
) -> RunConfig:
    """Reads a YAML run config, applies `--set` overrides and flags (`section.key` -> value).

    Args:
        base: sections used in place of a file when `path` is None (a recipe of
            `system.config.recipes`, for `qfleet train --env`).
        derive_inserts: the actors' insert settings the sources leave out are derived from the
            run (`insert_settings`: train.total_env_steps, the UTD, actors.num_actors); False
            keeps `ActorsConfig`'s fixed defaults (4096 and 32).

    Raises:
        ConfigError: unreadable file, unknown section or key, or an invalid value (named).
    """
    if path is not None and base is not None:
        raise ConfigError("a config file and a recipe: give one")
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        path = pathlib.Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(SECTIONS)})")
    for name in SECTIONS:
        if not isinstance(raw.get(name) or {}, dict):
            raise ConfigError(f"{name}: expected a mapping of keys, got {raw[name]!r}")
    merged = {name: flatten(cls, raw.get(name) or {}, name) for name, cls in SECTIONS.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        *parents, last = key.split(".")
        override: dict[str, Any] = {last: value}
        for parent in reversed(parents):
            override = {parent: override}
        _merge(merged[section], flatten(SECTIONS[section], override, section))
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            merged[section][key] = value
    config = RunConfig(**{name: build(cls, merged[name], name) for name, cls in SECTIONS.items()})
    return with_derived_inserts(config, given=set(merged["actors"])) if derive_inserts else config


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Writes `update` into `into`, merging nested mappings key by key (an override of one nested
    key keeps its siblings)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def to_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (written into run directories, printed by `qfleet config`), flat
    groups written flat; a password in `redis.url` or `replay.redis_url` is shown as `***` (a
    resumed run takes it from QFLEET_REDIS_PASSWORD)."""
    redis, replay = config.redis, config.replay
    if redis.url is not None:
        redis = dataclasses.replace(redis, url=redact_url(redis.url))
    if replay.redis_url is not None:
        replay = dataclasses.replace(replay, redis_url=redact_url(replay.redis_url))
    shown = dataclasses.replace(config, redis=redis, replay=replay)
    return yaml.safe_dump(as_mapping(shown), sort_keys=False)
