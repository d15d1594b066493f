"""Evaluation acts as `train.eval_acting` says: greedy by default, even for a policy the actors
sample from (`learner.policy_acting: sample`), or as the actors act with "policy"."""

from __future__ import annotations

import numpy as np
import pytest

from system.config import ConfigError, load_config
from system.train.evaluate import Evaluator

SAMPLING_IQL = ["learner.loss=iql", "learner.policy_acting=sample", "train.eval_episodes=1"]


def actions_for_one_state(evaluator: Evaluator) -> set[int]:
    obs = np.zeros((1000, *evaluator.obs_shape), np.float32)  # one state, asked 1000 times
    return set(evaluator.policy.act(obs, 0.0, np.random.default_rng(0)).tolist())


@pytest.mark.parametrize(("acting", "distinct"), [("greedy", 1), ("policy", 2)])
def test_evaluation_of_a_sampling_policy_is_greedy_unless_eval_acting_is_policy(acting, distinct):
    config = load_config("configs/cartpole.yaml", [*SAMPLING_IQL, f"train.eval_acting={acting}"])
    assert config.train.eval_acting == acting
    evaluator = Evaluator(config.env, config.learner, 1, 0.0, seed=3, acting=config.train.eval_acting)
    try:
        # An untrained pi puts about half its mass on each of CartPole's two actions.
        assert len(actions_for_one_state(evaluator)) == distinct
        assert len(evaluator.run().returns) == 1
    finally:
        evaluator.close()


def test_eval_acting_defaults_to_greedy_and_refuses_other_values():
    assert load_config("configs/cartpole.yaml", SAMPLING_IQL).train.eval_acting == "greedy"
    with pytest.raises(ConfigError, match="eval_acting"):
        load_config("configs/cartpole.yaml", ["train.eval_acting=sample"])
