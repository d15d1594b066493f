"""The configured env's spaces, or a ConfigError: what every command checks before it starts."""

from __future__ import annotations

from actors import EnvConfig, EnvSpaces, UnsupportedEnvError, describe_env
from learner import ActionSpace, LearnerConfig
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


def check_learner_for_env(learner: LearnerConfig, space: ActionSpace, env_id: str) -> None:
    """The learner's heads against the env's action space, before any network is built:
    `learner.policy_head: factored` needs the kinds of action a UI env's layout gives (MiniWoB,
    Android), and `learner.critic: spatial` that too and a screen grid in the features.

    Raises:
        ConfigError: naming the key and the env.
    """
    if learner.architecture.critic == "spatial":
        missing = (
            "no UI action layout"
            if space.layout is None
            else "no tap actions"
            if "tap" not in space.layout.kinds
            else "no screen grid"
            if space.screen is None
            else None
        )
        if missing:
            raise ConfigError(
                f"learner.critic='spatial' needs a UI env (MiniWoB, Android) with tap actions whose features carry "
                f"a screen grid (env.features.grid_rows and grid_cols >= 1, encoder small); env.id={env_id!r} has "
                f"{missing}: use critic 'action_embedding'"
            )
    if learner.architecture.policy_head == "factored" and space.layout is None:
        raise ConfigError(
            f"learner.policy_head='factored' needs a UI action space with kinds of action (MiniWoB, Android); "
            f"env.id={env_id!r} has a plain Discrete({space.num_actions}): use policy_head 'flat'"
        )
