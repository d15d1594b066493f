"""A run's periodic evaluations against a real Redis weight store and a real evaluator (CartPole):
labelled with their multiple of train.eval_every_steps, still due while no weights are announced,
one evaluation for several multiples passed at once."""

from __future__ import annotations

from conftest import wait_until
from learner import HostAheadError, Policy, SupersededReadError, WeightStore
from system.config import env_spaces, load_config
from system.train.evaluate import RunEvaluations
from system.train.records import RunCounters


def test_evaluations_keep_to_the_schedule_and_wait_for_the_first_weights(redis_server):
    config = load_config(
        None,
        [
            "env.id=CartPole-v1",
            "learner.hidden_size=16",
            "learner.weights.transport=redis",
            "train.eval_episodes=1",
            "train.eval_every_steps=500",
        ],
    )
    counters = RunCounters({}, eval_every_steps=500)
    runs = RunEvaluations(config, redis_server.url, "scheduled", counters)
    store = WeightStore(redis_server.url, "scheduled", config.learner.weights)
    evaluated = []

    def finished_one():
        evaluated.extend(runs.finished())
        return evaluated

    try:
        counters.env_steps = 504
        runs.submit_if_due()  # due, but no weights announced yet: still due, not dropped to 1,000
        assert counters.next_eval == 500
        spaces = env_spaces(config.env)
        store.publish(Policy(config.learner, spaces.obs_shape, spaces.action_space).network.state_dict(), 1)
        counters.env_steps = 620
        runs.submit_if_due()
        assert wait_until(finished_one, 120)
        assert (evaluated[0].scheduled_env_steps, evaluated[0].env_steps) == (500, 620)
        assert counters.next_eval == 1000

        counters.env_steps = 2300  # 1,000, 1,500 and 2,000 passed in one poll: one evaluation, for 2,000
        runs.submit_if_due()
        runs.submit_if_due()
        assert wait_until(lambda: len(finished_one()) == 2, 120)
        assert (evaluated[1].scheduled_env_steps, evaluated[1].env_steps) == (2000, 2300)
        assert counters.next_eval == 2500 and runs.finished() == []
    finally:
        runs.final()
        runs.close()
        store.close()


def test_an_evaluation_whose_weights_read_was_overtaken_by_a_publish_stays_due(redis_server):
    """A learner that publishes twice during the evaluator's read (HostAheadError from the object
    store's host, SupersededReadError from Redis) is a race, not a fault: the evaluation is made at
    the next round, at its scheduled point, instead of leaving a hole in the schedule."""
    config = load_config(
        None,
        [
            "env.id=CartPole-v1",
            "learner.hidden_size=16",
            "learner.weights.transport=redis",
            "train.eval_episodes=1",
            "train.eval_every_steps=500",
        ],
    )
    counters = RunCounters({}, eval_every_steps=500)
    runs = RunEvaluations(config, redis_server.url, "overtaken", counters)
    store = WeightStore(redis_server.url, "overtaken", config.learner.weights)
    spaces = env_spaces(config.env)
    store.publish(Policy(config.learner, spaces.obs_shape, spaces.action_space).network.state_dict(), 1)
    evaluated = []

    def finished_one():
        evaluated.extend(runs.finished())
        return evaluated

    try:
        assert runs.prepare()
        real_fetch, races = (
            runs._weights.fetch,
            [
                HostAheadError("host holds v2, newer than the v1 read", "h"),
                SupersededReadError("read superseded twice"),
            ],
        )

        def overtaken(known_version=0):  # the real read, after two reads the learner's publishes overtook
            if races:
                raise races.pop(0)
            return real_fetch(known_version)

        runs._weights.fetch = overtaken
        counters.env_steps = 530
        runs.submit_if_due()
        assert counters.next_eval == 500 and not finished_one()  # still due, not skipped to 1,000
        counters.env_steps = 560
        runs.submit_if_due()
        assert counters.next_eval == 500
        counters.env_steps = 610
        runs.submit_if_due()  # the third read succeeds
        assert wait_until(finished_one, 120)
        assert (evaluated[0].scheduled_env_steps, evaluated[0].env_steps) == (500, 610)
        assert counters.next_eval == 1000
    finally:
        runs.final()
        runs.close()
        store.close()
