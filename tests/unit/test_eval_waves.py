"""An evaluation of N episodes gives the same returns whether its envs run all at once or in
waves, and a browser or emulator env is never opened once per episode."""

from __future__ import annotations

import dataclasses

import pytest

from actors import EnvConfig
from system.config import ConfigError, load_config
from system.train.evaluate import UI_EVAL_PARALLEL, Evaluator, eval_parallel


def test_waves_of_envs_give_the_same_episodes_as_all_at_once():
    config = load_config("configs/cartpole.yaml", [])
    results = []
    for parallel in (None, 3, 1):
        evaluator = Evaluator(config.env, config.learner, 7, epsilon=0.0, seed=5, parallel=parallel)
        try:
            assert len(evaluator.envs) == {None: 7, 3: 3, 1: 1}[parallel]
            first, second = evaluator.run(), evaluator.run()
        finally:
            evaluator.close()
        results.append((first.returns, first.lengths, second.returns))
    assert len(set(results[0][0])) > 1  # the episodes differ (their seeds), so equal lists mean something
    assert results[0] == results[1] == results[2]
    assert results[0][0] != results[0][2]  # the next evaluation plays other episodes


def test_browsers_and_emulators_are_evaluated_a_few_at_a_time_and_simulators_all_at_once():
    cartpole = EnvConfig(id="CartPole-v1")
    assert eval_parallel(cartpole, 100) == 100
    assert eval_parallel(dataclasses.replace(cartpole, id="miniwob/click-button-v1"), 100) == UI_EVAL_PARALLEL
    assert eval_parallel(dataclasses.replace(cartpole, id="qfleet/Android-v0"), 100) == UI_EVAL_PARALLEL
    assert eval_parallel(dataclasses.replace(cartpole, id="miniwob/click-button-v1"), 2) == 2


def test_an_evaluation_of_no_episodes_is_refused():
    config = load_config("configs/cartpole.yaml", [])
    with pytest.raises(ConfigError, match="episodes >= 1"):
        Evaluator(config.env, config.learner, 0)
