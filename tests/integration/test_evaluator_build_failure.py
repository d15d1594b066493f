"""An evaluator that cannot be built (a missing env package, a bad eval setting) turns the run's
evaluations off with one warning: the run goes on, and its stop still writes the shards'
checkpoints and state.json (real Redis holding published weights; the evaluator's build raises)."""

from __future__ import annotations

import json
import logging
import threading
from types import SimpleNamespace

import pytest
import torch

from learner import WeightStore
from replay import ShardAccounting
from system.config import load_config
from system.train import evaluate
from system.train.evaluate import RunEvaluations
from system.train.launch import Components
from system.train.records import RunCounters
from system.train.run_dir import RunDir
from system.train.shutdown import shutdown


class EnvsThatCannotStart:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("no such env: Missing-v0")


@pytest.fixture
def evaluations(redis_server, monkeypatch):
    monkeypatch.setattr(evaluate, "Evaluator", EnvsThatCannotStart)
    config = load_config(None, [])
    store = WeightStore(redis_server.url, "build-fails", config.learner.weights)
    store.publish({"w": torch.zeros(2)}, 3)
    store.close()
    counters = RunCounters({}, eval_every_steps=100)
    return RunEvaluations(config, redis_server.url, "build-fails", counters), counters


def test_an_evaluator_that_fails_to_build_turns_evaluations_off_with_one_warning(evaluations, caplog):
    runs, counters = evaluations
    caplog.set_level(logging.WARNING)
    assert not runs.unavailable
    assert runs.prepare() is False
    assert runs.unavailable  # the supervisor then stops ending chunks on the evaluation schedule
    counters.env_steps = 500
    runs.submit_if_due()  # due, but no evaluator: skipped without raising
    assert runs.submit_if_announced(3) is True  # nothing to wait for without an evaluator
    assert runs.finished() == []
    assert runs.prepare() is False
    warnings = [r.getMessage() for r in caplog.records if "evaluator could not be built" in r.getMessage()]
    assert len(warnings) == 1 and "Missing-v0" in warnings[0]


def test_a_run_whose_evaluator_fails_to_build_still_stops_its_shards_and_writes_state_json(
    evaluations, tmp_path, caplog
):
    runs, counters = evaluations
    caplog.set_level(logging.WARNING)
    stopped = threading.Event()

    class StandInShard:  # records its stop (a real one writes its checkpoint there)
        class stop:
            @staticmethod
            def remote():
                stopped.set()
                return SimpleNamespace(size=0, inserts=0, lost_transitions=0, accounting=ShardAccounting(shard_id=0))

        class info:
            @staticmethod
            def remote():
                return SimpleNamespace(size=0, inserts=0, lost_transitions=0, accounting=ShardAccounting(shard_id=0))

    class InProcessRay:  # answers what the stand-in returned; nothing to shut down
        @staticmethod
        def get(value, timeout=None):
            return value

        @staticmethod
        def shutdown():
            pass

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    plan = SimpleNamespace(config=runs.config, run=run, name="build-fails")
    parts = Components(info={}, ray=InProcessRay, shards=[StandInShard()], evaluations=runs)
    shutdown(plan, parts, counters, None)
    assert stopped.is_set()
    assert json.loads((run.path / "state.json").read_text())["env_steps"] == counters.env_steps
    assert any("no final evaluation" in r.getMessage() for r in caplog.records)
