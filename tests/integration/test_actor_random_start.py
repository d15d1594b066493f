"""A fresh run's actor steps with uniform random actions while its policy is built, marks those
steps, and switches to the policy once built; an actor of a run that has weights never does
(real redis-server and shard, the actor in-process; issue #22's start-up)."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import urllib.request

import pytest

import actors.actor
from actors import ActorsConfig, EnvActor, EnvConfig, describe_env, transition_spec
from conftest import shard_kwargs, wait_until
from learner import ArchitectureConfig, LearnerConfig, Policy, WeightStore
from replay import ReplayClient

LEARNER = LearnerConfig(architecture=ArchitectureConfig(hidden_size=16))
ENV = EnvConfig(id="CartPole-v1", num_envs=2)


def actor_config(**overrides) -> ActorsConfig:
    return ActorsConfig(**{"n_step": 3, "insert_batch": 16, "num_actors": 1, "metrics_port": 0, **overrides})


@pytest.fixture
def shard(redis_server, start_server):
    def start(run: str):
        return start_server(transition_spec(ENV), capacity=100_000, **shard_kwargs(redis_server, run=run))

    return start


@pytest.fixture
def held_build(monkeypatch):
    """The policy's real build, held until the test sets the event (in a worker process it takes
    ~1.7 s of CPU to import torch; in this process torch is loaded and the build takes ms, so the
    actor is told torch is not loaded yet, as in a fresh worker process)."""
    release = threading.Event()
    builds: list[str] = []  # the thread each build ran on
    built: list = []  # what each build returned: (policy, weight subscriber)
    original = actors.actor._build_policy

    def build(*args):
        builds.append(threading.current_thread().name)
        assert release.wait(120), "the test never released the build"
        built.append(original(*args))
        return built[-1]

    monkeypatch.setattr("actors.actor._build_policy", build)
    monkeypatch.setattr("actors.actor._torch_loaded", lambda: False)
    release.built = built
    yield release, builds
    release.set()


def versions_in(server) -> set[int]:
    with ReplayClient(f"127.0.0.1:{server.port}") as client:
        return set(client.sample(1000).data["policy_version"].tolist())


def test_a_fresh_runs_actor_steps_at_random_while_its_policy_builds_marks_those_steps_then_acts_with_it(
    redis_server, shard, held_build
):
    release, builds = held_build
    server = shard("fresh")
    actor = EnvActor(
        0, 1, ENV, actor_config(), LEARNER, redis_server.url, "fresh", replay_credentials=None, fresh_run=True
    )
    try:
        assert actor.policy is None and builds == ["actor-0-policy"]  # built in the background
        before = actor.run(seconds=120, max_steps=200)  # steps while the build is held
        assert before.env_steps >= 200 and before.random_steps == before.env_steps
        assert before.startup.first_step_at is not None and before.startup.policy_at is None
        assert before.policy_version == 0 and versions_in(server) == {0}  # no learned weights: version 0
        # the count reaches the actor's report and its /metrics
        report = actor.registry.actors()[0]
        assert report["random_steps"] == before.random_steps
        body = urllib.request.urlopen(f"http://{report['metrics']}/metrics", timeout=5).read().decode()
        assert f'qfleet_actor_random_steps_total{{actor="0",run="fresh"}} {float(before.random_steps)}' in body

        # The learner publishes meanwhile; once built, the actor acts with the newest weights.
        spaces = describe_env(ENV)
        store = WeightStore(redis_server.url, "fresh")
        try:
            published = Policy(LEARNER, spaces.obs_shape, spaces.action_space, seed=9).network.state_dict()
            store.publish(published, version=3)
        finally:
            store.close()
        release.set()
        assert wait_until(lambda: actor.run(seconds=0.2).startup.policy_at is not None, 60)
        after = actor.run(seconds=120, max_steps=100)
        assert after.random_steps == actor.random_steps  # no random step after the switch
        assert after.env_steps - after.random_steps >= 100 and after.policy_version == 3
        assert versions_in(server) == {0, 3}
        assert gc.isenabled()  # the build ended the collector's pause
    finally:
        release.set()
        actor.close()


def test_an_actor_of_a_run_that_has_weights_acts_with_them_from_its_first_step(redis_server, shard, held_build):
    # A restarted actor of a fresh run (Ray keeps its constructor's fresh_run=True) after the
    # learner's first publish: it builds its policy and loads the weights before stepping.
    release, builds = held_build
    release.set()
    server = shard("published")
    spaces = describe_env(ENV)
    store = WeightStore(redis_server.url, "published")
    try:
        store.publish(Policy(LEARNER, spaces.obs_shape, spaces.action_space, seed=1).network.state_dict(), version=5)
    finally:
        store.close()
    actor = EnvActor(
        0, 1, ENV, actor_config(), LEARNER, redis_server.url, "published", replay_credentials=None, fresh_run=True
    )
    try:
        assert builds == [threading.main_thread().name] and actor.policy.version == 5
        stats = actor.run(seconds=120, max_steps=100)
        assert stats.random_steps == 0 and stats.policy_version == 5
        assert stats.startup.policy_at <= stats.startup.first_step_at
        assert versions_in(server) == {5}
    finally:
        actor.close()


@pytest.mark.parametrize(
    ("fresh_run", "random_before_policy", "torch_loaded"),
    [(False, True, False), (True, False, False), (True, True, True)],
    ids=["not-fresh", "switched-off", "torch-loaded"],
)
def test_an_actor_not_in_a_fresh_run_or_told_not_to_builds_its_policy_before_its_first_step(
    redis_server, shard, held_build, monkeypatch, fresh_run, random_before_policy, torch_loaded
):
    # torch-loaded: a process that imported torch already (as this one did) has nothing to win
    release, builds = held_build
    release.set()
    if torch_loaded:
        monkeypatch.setattr("actors.actor._torch_loaded", lambda: "torch" in sys.modules)
    shard("built")
    config = actor_config(random_before_policy=random_before_policy, metrics_port=None)
    actor = EnvActor(
        0, 1, ENV, config, LEARNER, redis_server.url, "built", replay_credentials=None, fresh_run=fresh_run
    )
    try:
        assert builds == [threading.main_thread().name] and actor.policy is not None
        stats = actor.run(seconds=120, max_steps=50)
        assert stats.random_steps == 0 and stats.env_steps >= 50
    finally:
        actor.close()


def test_an_actor_closed_while_its_policy_builds_returns_at_once_and_closes_what_the_build_made_once_it_ends(
    redis_server, shard, held_build
):
    # the fleet gives an actor's close 60 s; an import cannot be interrupted, so close does not wait
    release, _ = held_build
    shard("closing")
    actor = EnvActor(
        0,
        1,
        ENV,
        actor_config(metrics_port=None),
        LEARNER,
        redis_server.url,
        "closing",
        replay_credentials=None,
        fresh_run=True,
    )
    actor.run(seconds=120, max_steps=20)
    closing = time.monotonic()
    stats = actor.close()  # the build is held: it has not ended
    assert time.monotonic() - closing < 30 and not release.built
    assert stats.random_steps >= 20 and stats.startup.policy_at is None
    release.set()
    assert wait_until(lambda: release.built, 60)
    _, subscriber = release.built[0]
    assert wait_until(lambda: subscriber._stop.is_set(), 60)  # closed by the build's end
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == "actor-0-policy"], 60)
    assert gc.isenabled()


def test_a_failed_policy_build_fails_every_later_chunk_of_the_actor(redis_server, shard, monkeypatch):
    def build(*args):
        raise RuntimeError("the network does not fit this env")

    monkeypatch.setattr("actors.actor._build_policy", build)
    monkeypatch.setattr("actors.actor._torch_loaded", lambda: False)
    shard("failing")
    actor = EnvActor(
        0,
        1,
        ENV,
        actor_config(metrics_port=None),
        LEARNER,
        redis_server.url,
        "failing",
        replay_credentials=None,
        fresh_run=True,
    )
    try:
        for _ in range(3):  # not once and then at random for ever
            with pytest.raises(RuntimeError, match="does not fit"):
                actor.run(seconds=30, max_steps=200)
        assert actor.policy is None
    finally:
        actor.close()


def test_the_acting_thread_runs_torch_on_one_intra_op_thread_once_the_policy_is_adopted(
    redis_server, shard, held_build
):
    # torch fixes the intra-op thread count per thread: the build's thread setting it is not enough
    import torch

    release, _ = held_build
    shard("threads")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's default on the project VM (2 vCPUs)
    actor = EnvActor(
        0,
        1,
        ENV,
        actor_config(metrics_port=None),
        LEARNER,
        redis_server.url,
        "threads",
        replay_credentials=None,
        fresh_run=True,
    )
    try:
        actor.run(seconds=120, max_steps=10)
        release.set()
        assert wait_until(lambda: actor.run(seconds=0.2).startup.policy_at is not None, 60)
        assert torch.get_num_threads() == 1
    finally:
        actor.close()
        torch.set_num_threads(threads)


def test_a_build_still_running_after_its_bound_is_logged_once(redis_server, shard, held_build, monkeypatch, caplog):
    release, _ = held_build
    monkeypatch.setattr("actors.actor.BUILD_WARN_S", 0.0)
    shard("slow")
    actor = EnvActor(
        0,
        1,
        ENV,
        actor_config(metrics_port=None),
        LEARNER,
        redis_server.url,
        "slow",
        replay_credentials=None,
        fresh_run=True,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="actors.actor"):
            actor.run(seconds=120, max_steps=50)
        warned = [r.getMessage() for r in caplog.records if "has been building" in r.getMessage()]
        assert len(warned) == 1 and "uniform random env steps so far" in warned[0]
    finally:
        release.set()
        actor.close()


def test_an_env_with_a_features_encoder_has_its_policy_built_first(monkeypatch):
    # the encoder loads torch and runs it on the acting thread at every reset and step: nothing to win
    from actors import FeaturesConfig

    monkeypatch.setattr("actors.actor._torch_loaded", lambda: False)  # as in a fresh worker process
    encoded = EnvConfig(id="CartPole-v1", features=FeaturesConfig(encoder="small", path="/encoder"))
    assert actors.actor._build_in_background_pays(ENV) and not actors.actor._build_in_background_pays(encoded)


def test_a_fresh_runs_actor_makes_only_its_share_of_the_learners_first_data_at_random_then_waits_for_its_policy(
    redis_server, shard, held_build
):
    """Random steps beyond the actor's share of learner.learning_starts would only take CPU from
    the learner's and the shards' start: past it the actor waits for its build, then acts with it."""
    release, _ = held_build
    shard("capped")
    learner = LearnerConfig(architecture=ArchitectureConfig(hidden_size=16), learning_starts=60)
    actor = EnvActor(
        0,
        2,
        ENV,
        actor_config(num_actors=2),
        learner,
        redis_server.url,
        "capped",
        replay_credentials=None,
        fresh_run=True,
    )
    try:
        # 60 transitions before the first update, over 2 actors, and the 3-step accumulator's 2 x 3
        assert actor.random_steps_cap == 30 + 3 * ENV.num_envs
        held = actor.run(seconds=2.0)  # the build is held for the whole chunk
        assert actor.policy is None
        assert actor.random_steps_cap <= held.random_steps < actor.random_steps_cap + ENV.num_envs
        assert actor.writer.inserted >= 30  # its share reached replay, not left in the buffer
        assert held.env_steps == held.random_steps
        release.set()
        assert wait_until(lambda: actor.run(seconds=0.2).startup.policy_at is not None, 60)
        after = actor.run(seconds=120, max_steps=50)
        assert after.random_steps == held.random_steps and after.env_steps >= held.env_steps + 50
    finally:
        release.set()
        actor.close()
