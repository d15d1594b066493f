"""The default recipe of `qfleet train --env ENV_ID`: one per action type, no per-task keys.

Each recipe is the YAML sections a config file would hold; the env's action space picks one. The
evidence for each choice is in docs/training.md ("The default recipe").
"""

from __future__ import annotations

import copy
from typing import Any

from actors import EnvConfig
from system.config.env import env_spaces

DISCRETE_RECIPE: dict[str, dict[str, Any]] = {
    "env": {"num_envs": 8},
    "actors": {
        "num_actors": 2,
        "n_step": 3,
        "epsilon": 0.1,  # Ape-X: actor 0 explores with 0.1, actor 1 with 0.1^8
    },  # insert_batch, max_inserts_in_flight: derived from the run (system.config.insert_settings)
    "replay": {"capacity": 100_000, "selector": "prioritized", "alpha": 0.6, "beta": 0.4},
    "learner": {
        "loss": "hl_gauss",
        "v_min": "auto",  # from the env's reward range, gamma and time limit (learner.value_support)
        "v_max": "auto",
        "layer_norm": True,
        "batch_size": 128,
        "lr": 0.001,
        "gamma": 0.99,
        "target_update": "hard",
        "target_update_every": 100,
        "updates_per_env_step": 0.5,
        "learning_starts": 1000,
        "policy_average_tau": 0.005,  # actors and evaluations act with a Polyak average of the online network
    },
    "train": {"eval_every_steps": 5000, "eval_episodes": 10},
}
"""Discrete actions: configs/cartpole.yaml's DQN-family recipe (HL-Gauss with LayerNorm, double DQN
targets from 3-step returns, UTD 0.5, hard target copies every 100 updates, Ape-X epsilons, the
published policy a Polyak average of the online network) with the value support derived from the
env instead of CartPole's hand-set [0, 110]."""

CONTINUOUS_RECIPE: dict[str, dict[str, Any]] = {
    "env": {"num_envs": 8},
    "actors": {"num_actors": 2, "n_step": 3},  # insert settings derived from the run (system.config.insert_settings)
    "replay": {"capacity": 100_000, "selector": "prioritized", "alpha": 0.6, "beta": 0.4},
    "learner": {
        "loss": "sac",
        "ensemble_size": 2,  # 10 (REDQ) costs about 3x the CPU time per update
        "ensemble_subset": 2,
        "batch_size": 256,
        "hidden_size": 256,
        "num_layers": 2,
        "lr": 0.0003,
        "gamma": 0.99,
        "target_update": "soft",
        "tau": 0.005,
        "updates_per_env_step": 1.0,
        "learning_starts": 1000,
    },
    "train": {"eval_every_steps": 5000, "eval_episodes": 10},
}
"""Continuous (Box) actions: SAC (automatic entropy temperature, Polyak targets with tau 0.005) at
Stable-Baselines3's sizes (batch 256, 2 x 256 MLPs, Adam 3e-4), with 2 LayerNorm critics (the target
their minimum), 3-step targets, UTD 1 and prioritized replay; insert settings derived from the run's
length and UTD, so actors stay close to the learner's UTD. configs/pendulum_sac.yaml is this recipe on Pendulum-v1
(tests/unit/test_value_support.py keeps them equal); the evidence is in docs/training.md."""


def recipe_for(env_id: str) -> dict[str, dict[str, Any]]:
    """The recipe for `env_id`'s action space, with `env.id` set (a fresh copy, to be merged under
    `--set` overrides).

    Raises:
        ConfigError: an unknown env id, or spaces qfleet's learners do not handle.
    """
    spaces = env_spaces(EnvConfig(id=env_id))
    recipe = copy.deepcopy(DISCRETE_RECIPE if spaces.action_space.discrete else CONTINUOUS_RECIPE)
    recipe["env"]["id"] = env_id
    return recipe
