"""The transition spec of an environment: the columns actors insert into replay.

Each item is one n-step transition:
    obs, action, reward (n-step discounted sum), next_obs (the state n steps later),
    discount (gamma**k, or 0 after a terminal state: no bootstrapping through termination),
    actor_id (which actor produced it) and policy_version (the weights version that acted).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from actors.errors import UnsupportedEnvError
from replay import Spec


def spec_for_spaces(env_id: str, observation_space: gym.Space, action_space: gym.Space) -> Spec:
    """The transition spec for an observation and action space."""
    if not isinstance(observation_space, gym.spaces.Box):
        raise UnsupportedEnvError(
            f"env.id={env_id!r}: observation space {observation_space} is not a Box (array) space", env_id=env_id
        )
    obs = (observation_space.shape, np.dtype(observation_space.dtype).name)
    if isinstance(action_space, gym.spaces.Discrete):
        action = ((), "int64")
    elif isinstance(action_space, gym.spaces.Box):
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            # the actors' policy and a fresh run's uniform random actions both act within the bounds
            raise UnsupportedEnvError(
                f"env.id={env_id!r}: action space {action_space} has unbounded (non-finite) bounds; qfleet "
                "acts within [low, high] (its policy, and a fresh run's uniform random first steps) and "
                "needs finite ones: wrap the env so that its action space is bounded",
                env_id=env_id,
            )
        action = (action_space.shape, "float32")
    else:
        raise UnsupportedEnvError(
            f"env.id={env_id!r}: action space {action_space} is neither Discrete nor Box", env_id=env_id
        )
    return Spec(
        {
            "obs": obs,
            "action": action,
            "reward": ((), "float32"),
            "next_obs": obs,
            "discount": ((), "float32"),
            "actor_id": ((), "int32"),
            "policy_version": ((), "int64"),
        }
    )
