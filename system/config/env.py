"""The configured env's spaces, or a ConfigError: what every command checks before it starts."""

from __future__ import annotations

from actors import EnvConfig, EnvSpaces, UnsupportedEnvError, describe_env
from system.errors import ConfigError


def env_spaces(env: EnvConfig) -> EnvSpaces:
    """Observation shape, action space and transition spec of the `env` section (builds it once).

    Raises:
        ConfigError: an unknown env id, or spaces qfleet's learners do not handle.
    """
    try:
        return describe_env(env)
    except UnsupportedEnvError as exc:
        raise ConfigError(str(exc)) from None
