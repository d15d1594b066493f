"""The driver's view of a learner that Ray restarts, hangs or loses for good (real Ray, a stand-in
learner actor): a restart is recorded once it answers, a fresh network as "fresh" with its loss, a
learner away is asked briefly and ends the run after a limit, a learner gone for good ends it with
resume advice."""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import wait_until
from system.config import load_config
from system.errors import TrainError
from system.services.learner import LearnerDescription, LearnerProgress
from system.train import supervise
from system.train.launch import Components
from system.train.records import RunCounters
from system.train.run_dir import RunDir
from system.train.supervise import Supervisor


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from system.local.ray_runtime import init_ray

    init_ray(num_cpus=2)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    yield ray
    ray.shutdown()


class StandInLearner:
    """Answers like a LearnerHost; `behave` sets its pid, its delays and what describe says."""

    def __init__(self):
        self.pid, self.progress_delay_s, self.describe_delay_s, self.described = 1, 0.0, 0.0, {}
        self.reported = {}

    def behave(self, **settings) -> None:
        vars(self).update(settings)

    def progress(self) -> LearnerProgress:
        time.sleep(self.progress_delay_s)
        return LearnerProgress(
            updates=75,
            updates_per_second=1.0,
            version=9,
            inserts=300,
            achieved_utd=0.25,
            error=None,
            pid=self.pid,
            **self.reported,
        )

    def describe(self) -> LearnerDescription:
        time.sleep(self.describe_delay_s)
        return LearnerDescription(
            device="cpu", pid=self.pid, metrics="", resumed_from="", updates=75, version=9, **self.described
        )


@pytest.fixture
def supervised(ray_local, tmp_path):
    learner = ray_local.remote(StandInLearner).options(max_concurrency=4, num_cpus=0).remote()
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    components = Components(info={"learner": {"pid": 1}}, ray=ray_local, learner=learner)
    plan = SimpleNamespace(config=load_config(None, []), run=run, name="stand-in")
    counters = RunCounters({}, eval_every_steps=1000)
    yield Supervisor(plan, components, counters, threading.Event()), learner
    ray_local.kill(learner)


class StandInEvaluations:
    """The offline result's evaluation: its weights announced once `announced` is set."""

    def __init__(self):
        self.announced, self.asked = threading.Event(), []

    def submit_offline_if_due(self) -> None:
        pass

    def finished(self) -> list:
        return []

    def submit_if_announced(self, version: int) -> bool:
        self.asked.append(version)
        return self.announced.is_set()


def offline_phase(supervisor: Supervisor) -> StandInEvaluations:
    """`supervisor` set for run_offline of a run with a 100-update offline phase."""
    supervisor.config = load_config(None, ["offline.updates=100"])
    evaluations = StandInEvaluations()
    parts = supervisor.components
    parts.evaluations, parts.metrics, parts.targets = (
        evaluations,
        SimpleNamespace(update=lambda record: None),
        SimpleNamespace(write=dict),
    )
    return evaluations


def test_the_end_of_the_offline_phase_awaits_its_results_weights_without_blocking_the_loop(supervised, monkeypatch):
    supervisor, learner = supervised
    evaluations = offline_phase(supervisor)
    supervisor.components.ray.get(learner.behave.remote(reported={"phase": "online", "offline_until": 75}))
    loop = threading.Thread(target=supervisor.run_offline)
    loop.start()
    assert wait_until(lambda: len(evaluations.asked) >= 2, 60)  # asked again each round: never waited on
    assert evaluations.asked[0] == 9 and loop.is_alive()
    run = supervisor.run_dir
    assert [r["phase"] for r in run.records("phase")] == ["offline"]  # no actors until it is submitted
    assert run.read_json("state.json")["phase"] == "offline"
    supervisor.stop.set()  # a Ctrl-C meanwhile ends the loop at its next round
    loop.join(timeout=30)
    assert not loop.is_alive()

    supervisor.stop.clear()
    evaluations.announced.set()
    supervisor.run_offline()  # returns by itself once the offline result is submitted
    assert [(r["phase"], r["updates"]) for r in run.records("phase")] == [("offline", 0), ("online", 75)]
    assert run.read_json("state.json")["online_from"]["updates"] == 75


def test_offline_weights_never_announced_start_the_actors_after_the_wait_with_a_warning(
    supervised, monkeypatch, caplog
):
    monkeypatch.setattr(supervise, "ANNOUNCE_WAIT_S", 2.0)
    supervisor, learner = supervised
    evaluations = offline_phase(supervisor)
    supervisor.components.ray.get(learner.behave.remote(reported={"phase": "online", "offline_until": 75}))
    supervisor.run_offline()
    assert evaluations.asked and supervisor.counters.phase == "online"
    assert any("no evaluation of the offline phase's result" in r.getMessage() for r in caplog.records)


def test_a_restart_is_recorded_once_the_restarted_learner_answers_and_a_fresh_network_as_fresh(supervised):
    supervisor, learner = supervised
    ray = supervisor.components.ray
    ray.get(learner.behave.remote(pid=2, describe_delay_s=10.0))  # restarted, still loading
    records = []
    began = time.monotonic()
    for _ in range(3):  # its answers come (pid 2), its description does not yet: never the run's end
        assert supervisor._learner_progress(records) is None
        time.sleep(0.2)
    assert time.monotonic() - began < 10 and records == [] and supervisor.counters.learner_restarts == 0

    fresh = {"resumed_at": 75, "updates_lost": 45, "fresh": True}  # no good checkpoint: a new network
    ray.get(learner.behave.remote(describe_delay_s=0.0, described=fresh))
    answered = []
    assert wait_until(lambda: answered.append(supervisor._learner_progress(records)) or answered[-1], 20)
    assert answered[-1].pid == 2
    counters = supervisor.counters
    assert (counters.learner_restarts, counters.learner_updates_lost, counters.fresh_learners) == (1, 45, [0])
    assert [(r.event, r.updates, r.updates_lost) for r in records] == [("fresh", 75, 45)]
    assert supervisor._learner_progress(records).pid == 2 and len(records) == 1  # recorded once


def test_a_hung_learner_is_asked_briefly_and_ends_the_run_after_the_limit(supervised, monkeypatch):
    monkeypatch.setattr(supervise, "LEARNER_AWAY_LIMIT_S", 3.0)
    supervisor, learner = supervised
    supervisor.components.ray.get(learner.behave.remote(progress_delay_s=60.0))
    began = time.monotonic()
    with pytest.raises(TrainError) as ended:
        while time.monotonic() - began < 20:
            asked = time.monotonic()
            assert supervisor._learner_progress([]) is None
            assert time.monotonic() - asked < 1.0  # the loop never waits on the learner
    assert "has not answered" in str(ended.value) and "qfleet train --resume" in str(ended.value)


def test_a_learner_ray_no_longer_restarts_ends_the_run_with_resume_advice(supervised):
    supervisor, learner = supervised
    supervisor.components.ray.kill(learner, no_restart=True)
    with pytest.raises(TrainError, match="(?s)Ray restarts it no more.*qfleet train --resume"):
        for _ in range(50):  # the kill takes effect within moments
            supervisor._learner_progress([])
            time.sleep(0.1)
