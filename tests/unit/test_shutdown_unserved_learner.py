"""A learner that never served (asked for beside shards that then failed, or a Ctrl-C while it
built) is killed at the stop, not waited for, and leaves no final record of zeros."""

from __future__ import annotations

from types import SimpleNamespace

from system.train import shutdown


class StandInRay:
    def __init__(self):
        self.killed = []

    def kill(self, handle):
        self.killed.append(handle)

    def get(self, *args, **kwargs):
        raise AssertionError("an unserved learner is not asked to stop")


def test_an_unserved_fresh_learner_is_killed_without_a_record():
    ray = StandInRay()
    recorded = []
    plan = SimpleNamespace(resumed=False, run=SimpleNamespace(append_records=recorded.extend))
    parts = SimpleNamespace(learner="handle", info={}, ray=ray)
    shutdown._stop_learner(plan, parts, None, None, None)
    assert ray.killed == ["handle"] and recorded == []


def test_a_learner_that_served_is_asked_to_stop():
    ray = StandInRay()
    plan = SimpleNamespace(resumed=False, run=None)
    parts = SimpleNamespace(
        learner=SimpleNamespace(stop=SimpleNamespace(remote=lambda: None)), info={"learner": {}}, ray=ray
    )
    failures = SimpleNamespace(added=[])
    failures.add = lambda what, exc: failures.added.append((what, exc))
    shutdown._stop_learner(plan, parts, None, None, failures)
    assert ray.killed == []
    assert failures.added and isinstance(failures.added[0][1], AssertionError)  # it went to stop()
