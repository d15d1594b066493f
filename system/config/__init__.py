"""A run's configuration: one frozen dataclass section per package, loaded from YAML and `--set`.

`RunConfig` composes the packages' sections (`env`, `actors`, `replay`, `learner`) with the
roof's own (`train`, `redis`, `ray`, `offline`); `dataclass_args` turns any config dataclass into YAML
sections, `--set` keys and `--help` text from its field docstrings; `env_spaces` checks the env;
`resolve_value_support` derives `learner.v_min/v_max: auto` from it.
"""

from system.config.dataclass_args import add_arguments, build, describe, field_docs, from_arguments
from system.config.env import check_learner_for_env, env_spaces
from system.config.offline import (
    DEFAULT_MIX,
    FINISHED,
    OFFLINE,
    ONLINE,
    OfflineConfig,
    batch_mix,
    offline_run_name,
    online_batch_items,
)
from system.config.run import RunConfig, load_config, parse_override, to_yaml
from system.config.sections import RayConfig, RedisConfig, TrainConfig
from system.config.value_support import (
    RewardProbe,
    check_value_support,
    probe_rewards,
    resolve_value_support,
    with_placeholder_support,
)
from system.errors import ConfigError

__all__ = [
    "DEFAULT_MIX",
    "FINISHED",
    "OFFLINE",
    "ONLINE",
    "ConfigError",
    "OfflineConfig",
    "RayConfig",
    "RedisConfig",
    "RewardProbe",
    "RunConfig",
    "TrainConfig",
    "add_arguments",
    "batch_mix",
    "build",
    "check_learner_for_env",
    "describe",
    "env_spaces",
    "field_docs",
    "from_arguments",
    "load_config",
    "offline_run_name",
    "online_batch_items",
    "parse_override",
    "probe_rewards",
    "check_value_support",
    "with_placeholder_support",
    "resolve_value_support",
    "to_yaml",
]
