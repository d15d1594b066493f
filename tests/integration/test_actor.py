"""One env actor in-process against a real shard and a real redis-server: the transitions it
inserts, the weights it pulls, the episodes it reports, and what it does when envs or replay fail."""

from __future__ import annotations

import gc
import threading
import urllib.request

import gymnasium as gym
import numpy as np
import pytest
import torch

from actors import (
    STATE_ACTING,
    STATE_AWAITING_REPLAY,
    ActorRegistry,
    ActorsConfig,
    EnvActor,
    EnvConfig,
    EnvFailedError,
    TransitionWriter,
    UnsupportedEnvError,
    actor_report_key,
    describe_env,
    transition_spec,
)
from actors.actor import NSTEP_BLOCK, actor_epsilon
from conftest import shard_kwargs, wait_until
from learner import ArchitectureConfig, LearnerConfig, Policy, WeightStore
from replay import connect_redis, redact_url
from system.config.insert_settings import derive_insert_settings

GAMMA = 0.9
LEARNER = LearnerConfig(architecture=ArchitectureConfig(hidden_size=16), gamma=GAMMA)


def actor_config(**overrides) -> ActorsConfig:
    return ActorsConfig(**{"n_step": 3, "insert_batch": 64, "num_actors": 4, "metrics_port": 0, **overrides})


class FlakyEnv(gym.Env):
    """Counts to 20 (reward 1 per step, then terminated); raises in step with probability
    `step_failure`, and in every reset when `reset_fails`."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, step_failure: float = 0.0, reset_fails: bool = False):
        self.step_failure, self.reset_fails = step_failure, reset_fails
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.reset_fails:
            raise RuntimeError("emulator is gone")
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        if self.np_random.random() < self.step_failure:
            raise RuntimeError("simulated crash")
        self.t += 1
        return np.array([self.t], np.float32), 1.0, self.t >= 20, False, {}


gym.register("qfleet-test/Flaky-v0", entry_point=FlakyEnv, kwargs={"step_failure": 0.01})
gym.register("qfleet-test/Counter-v0", entry_point=FlakyEnv)
gym.register("qfleet-test/Broken-v0", entry_point=FlakyEnv, kwargs={"reset_fails": True})
gym.register(
    "qfleet-test/MultiDiscrete-v0",
    entry_point=lambda: type(
        "MultiDiscreteEnv",
        (FlakyEnv,),
        {"action_space": gym.spaces.MultiDiscrete([2, 3])},
    )(),
)


@pytest.fixture
def shard(redis_server, start_server):
    def start(env: EnvConfig, run="act"):
        return start_server(transition_spec(env), capacity=100_000, **shard_kwargs(redis_server, run=run))

    return start


def sample_all(server, n):
    from replay import ReplayClient

    with ReplayClient(f"127.0.0.1:{server.port}") as client:
        return client.sample(n).data


def test_actor_inserts_stamped_n_step_transitions_and_reports_episodes(redis_server, shard):
    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=3)
    server = shard(env)
    actor = EnvActor(2, 4, env, actor_config(epsilon=0.5), LEARNER, redis_server.url, "act", replay_credentials=None)
    try:
        stats = actor.run(seconds=120, max_steps=240)  # a step budget, not a time: loaded machines vary
        assert stats.env_steps >= 240 and stats.episodes > 0
        # Every transition the actor counted is in the shard, stamped with its id and version 0.
        assert server.table.info().size == stats.transitions_inserted > 0
        data = sample_all(server, 500)
        assert set(data["actor_id"]) == {2} and set(data["policy_version"]) == {0}
        # Counter env: obs t, reward 1 per step, terminal at 20. n = 3 windows: full ones look 3
        # ahead with gamma^3; the last ones of an episode end at 20 with discount 0.
        t, nxt = data["obs"][:, 0], data["next_obs"][:, 0]
        full = data["discount"] > 0
        np.testing.assert_allclose(data["discount"][full], GAMMA**3, rtol=1e-6)
        np.testing.assert_array_equal(nxt[full], t[full] + 3)
        np.testing.assert_allclose(data["reward"][full], 1 + GAMMA + GAMMA**2, rtol=1e-6)
        assert np.all(nxt[~full] == 20) and np.all(t[~full] >= 17)
        np.testing.assert_allclose(data["reward"][~full], [sum(GAMMA**i for i in range(int(20 - s))) for s in t[~full]])
        # Episodes: in the stream and the actor's Redis report, with the Ape-X epsilon of actor 2 of 4.
        _, episodes = actor.registry.read_episodes()
        assert len(episodes) == stats.episodes > 0
        assert all(e["return"] == 20 and e["length"] == 20 and e["actor"] == 2 for e in episodes)
        report = ActorRegistry(redis_server.url, "act").actors()[2]
        assert report["env_steps"] == stats.env_steps and report["pid"] == stats.pid
        assert stats.epsilon == pytest.approx(0.5 ** (1 + 2 * 7 / 3))
        # /metrics serves the same counters.
        body = urllib.request.urlopen(f"http://{report['metrics']}/metrics", timeout=5).read().decode()
        assert f'qfleet_actor_env_steps_total{{actor="2",run="act"}} {float(stats.env_steps)}' in body
        assert (
            f'qfleet_actor_transitions_inserted_total{{actor="2",run="act"}} {float(stats.transitions_inserted)}'
            in body
        )
    finally:
        actor.close()
    assert 2 not in ActorRegistry(redis_server.url, "act").actors()  # a closed actor leaves no report


def test_an_actor_rides_out_a_redis_restart_and_writes_the_episodes_it_kept(redis_server, shard):
    import signal

    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=3)
    shard(env, run="gap")  # the actor's run: an actor steps once a shard of its run serves
    actor = EnvActor(0, 1, env, actor_config(epsilon=0.5), LEARNER, redis_server.url, "gap", replay_credentials=None)
    try:
        actor.run(seconds=120, max_steps=60)
        redis_server.proc.send_signal(signal.SIGKILL)
        redis_server.proc.wait(timeout=30)
        during = actor.run(seconds=120, max_steps=60)  # its reports and episode records fail: kept
        assert during.episodes >= 6
        redis_server.stop()
        redis_server.start()  # on its port, as the driver restarts the embedded one
        actor.run(seconds=120, max_steps=3)
        _, episodes = actor.registry.read_episodes()
        # Those finished while Redis was away reach the stream now (the 3 from before the kill went
        # with the test's Redis, which keeps nothing on disk).
        assert [e for e in episodes if e["env_steps"] > 60] and len(episodes) >= during.episodes - 3
        assert ActorRegistry(redis_server.url, "gap").actors()[0]["env_steps"] >= 120
    finally:
        actor.close()


def test_actor_pulls_a_new_weight_version_and_stamps_it(redis_server, shard):
    env = EnvConfig(id="CartPole-v1", num_envs=2)
    server = shard(env)
    spaces = describe_env(env)
    store = WeightStore(redis_server.url, "act")
    published = Policy(LEARNER, spaces.obs_shape, spaces.action_space, seed=123).network.state_dict()
    store.publish(published, version=7)
    actor = EnvActor(
        0, 1, env, actor_config(weight_poll_steps=5), LEARNER, redis_server.url, "act", replay_credentials=None
    )
    try:
        assert actor.policy.version == 7  # a (re)started actor acts with the newest weights at once
        for name, tensor in actor.policy.network.state_dict().items():
            torch.testing.assert_close(tensor, published[name])
        actor.run(seconds=120, max_steps=20)
        store.publish({k: v + 1 for k, v in published.items()}, version=8)
        assert wait_until(lambda: actor.run(seconds=0.2).policy_version == 8, timeout=60)
        torch.testing.assert_close(actor.policy.network.state_dict()["head.bias"], published["head.bias"] + 1)
        versions = sample_all(server, 2000)["policy_version"]
        assert set(versions) == {7, 8}
    finally:
        actor.close()
        store.close()


def test_an_actor_held_back_by_the_rate_limiter_switches_to_weights_published_while_it_waited(
    redis_server, start_server
):
    """Inserts the rate limiter holds back slow an actor's steps to a crawl (a UTD-4 run: a few per
    second); it still acts with a version published while it waited from its very next step."""
    from replay import DeadlineExceededError, ReplayClient

    env = EnvConfig(id="CartPole-v1", num_envs=2)
    # The shard admits about 2 items more than it has sampled, and only the test samples it.
    server = start_server(
        transition_spec(env),
        capacity=100_000,
        samples_per_insert=1.0,
        error_buffer=1.0,
        **shard_kwargs(redis_server, run="held"),
    )
    spaces = describe_env(env)
    store = WeightStore(redis_server.url, "held")
    actor = EnvActor(
        0, 1, env, actor_config(metrics_port=None), LEARNER, redis_server.url, "held", replay_credentials=None
    )
    # 32 vector steps: one emission of the n-step block, whose insert waits at the end of the chunk.
    runner = threading.Thread(target=actor.run, kwargs={"seconds": 120, "max_steps": 64})
    try:
        runner.start()
        assert wait_until(lambda: server.table.info().waiting_inserts > 0, 60)  # held back
        published = Policy(LEARNER, spaces.obs_shape, spaces.action_space, seed=5).network.state_dict()
        store.publish(published, version=1)
        assert wait_until(lambda: actor.weights.pending_version == 1 or actor.policy.version == 1, 60)

        with ReplayClient(f"127.0.0.1:{server.port}") as client:

            def released() -> bool:  # samples let the held insert in, 2 items at a time
                try:
                    client.sample(2, timeout=0.5)
                except DeadlineExceededError:
                    pass
                return not runner.is_alive()

            assert wait_until(released, 60, step=0)
        stats = actor.run(seconds=120, max_steps=2)  # one vector step
        assert stats.policy_version == 1
        torch.testing.assert_close(actor.policy.network.state_dict()["head.bias"], published["head.bias"])
    finally:
        if runner.is_alive():
            server.stop(grace=0, checkpoint=False)  # releases the held insert
            runner.join(timeout=60)
        actor.close()
        store.close()


def test_an_env_that_raises_is_rebuilt_counted_and_the_actor_goes_on(redis_server, shard):
    env = EnvConfig(id="qfleet-test/Flaky-v0", num_envs=4)
    server = shard(env)
    actor = EnvActor(0, 1, env, actor_config(), LEARNER, redis_server.url, "act", replay_credentials=None)
    try:
        stats = actor.run(seconds=1.0)
        assert stats.env_restarts >= 5 and stats.episodes > 0
        assert server.table.info().size == stats.transitions_inserted > 0
        body = urllib.request.urlopen(f"http://{actor.metrics_address}/metrics", timeout=5).read().decode()
        assert f'qfleet_actor_env_restarts_total{{actor="0",run="act"}} {float(stats.env_restarts)}' in body
        # No transition crosses a failure: each one's next obs is 1-3 steps ahead (full or
        # aborted windows) or the terminal 20.
        data = sample_all(server, 2000)
        gap = data["next_obs"][:, 0] - data["obs"][:, 0]
        assert np.all((gap >= 0) & (gap <= 3))
    finally:
        actor.close()


def test_an_env_that_keeps_failing_in_reset_stops_its_actor_with_a_clear_error(redis_server, shard):
    env = EnvConfig(id="qfleet-test/Broken-v0", num_envs=1)
    shard(EnvConfig(id="qfleet-test/Counter-v0"))
    threads_before = {t.name for t in threading.enumerate()}
    with pytest.raises(EnvFailedError, match=r"Broken-v0.*raised in reset 3 times.*emulator is gone"):
        EnvActor(0, 1, env, actor_config(env_max_rebuilds=2), LEARNER, redis_server.url, "act", replay_credentials=None)
    assert {t.name for t in threading.enumerate()} <= threads_before  # nothing left running


def test_unknown_env_ids_and_unsupported_action_spaces_fail_at_start():
    with pytest.raises(UnsupportedEnvError, match="NoSuchEnv-v0"):
        describe_env(EnvConfig(id="NoSuchEnv-v0"))
    with pytest.raises(UnsupportedEnvError, match="MultiDiscrete.*neither Discrete nor Box"):
        describe_env(EnvConfig(id="qfleet-test/MultiDiscrete-v0"))


def test_batches_no_shard_takes_are_counted_lost_and_inserts_resume_when_a_shard_returns(redis_server, shard):
    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=2)
    server = shard(env)
    actor = EnvActor(
        0,
        1,
        env,
        actor_config(insert_retry_s=0.5, metrics_port=None),
        LEARNER,
        redis_server.url,
        "act",
        replay_credentials=None,
    )
    try:
        first = actor.run(seconds=120, max_steps=100)  # step budgets, not times: loaded machines vary
        assert first.transitions_lost == 0 and first.transitions_inserted > 0
        server.stop(grace=0.1, checkpoint=False)
        lost = actor.run(seconds=120, max_steps=100)
        assert lost.transitions_lost > 0
        assert lost.transitions_inserted == first.transitions_inserted
        replacement = shard(env)
        assert wait_until(lambda: actor.run(seconds=0.1).transitions_inserted > first.transitions_inserted, 15)
        back = actor.stats()
        assert replacement.table.info().size == back.transitions_inserted - first.transitions_inserted
        assert actor.writer.sent == back.transitions_inserted + back.transitions_lost  # nothing unaccounted
    finally:
        actor.close()


class RecordingWriter:
    """A `Writer` that keeps what it is given, in place of replay."""

    def __init__(self):
        self.batches: list[dict[str, np.ndarray]] = []
        self.sent = self.inserted = self.lost = 0
        self.closed = False

    def add(self, transitions):
        self.batches.append(transitions)
        self.sent += len(transitions["reward"])

    def flush(self):
        self.inserted = sum(len(batch["reward"]) for batch in self.batches)

    def close(self):
        self.closed = True


def test_an_actor_leaves_the_garbage_collector_as_it_found_it_built_or_failed(redis_server):
    # The constructor pauses the collector while it imports and builds (faster start-up).
    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=1)
    try:
        for enabled in (True, False):
            if enabled:
                gc.enable()
            else:
                gc.disable()
            actor = EnvActor(
                0,
                1,
                env,
                actor_config(metrics_port=None),
                LEARNER,
                redis_server.url,
                "gc",
                writer=RecordingWriter(),
                replay_credentials=None,
            )
            actor.close()
            assert gc.isenabled() is enabled
        gc.enable()
        broken = EnvConfig(id="qfleet-test/Broken-v0", num_envs=1)
        with pytest.raises(EnvFailedError):
            EnvActor(
                0, 1, broken, actor_config(env_max_rebuilds=1), LEARNER, redis_server.url, "gc", replay_credentials=None
            )
        assert gc.isenabled()
    finally:
        gc.enable()


def test_an_actor_hands_its_stamped_transitions_to_any_writer(redis_server):
    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=2)
    writer = RecordingWriter()
    actor = EnvActor(
        1,
        2,
        env,
        actor_config(metrics_port=None),
        LEARNER,
        redis_server.url,
        "act",
        writer=writer,
        replay_credentials=None,
    )
    try:
        stats = actor.run(seconds=120, max_steps=100)  # a step budget, not a time: loaded machines vary
    finally:
        actor.close()
    assert writer.closed  # the actor owns its writer
    assert stats.transitions_inserted == writer.inserted > 0 and stats.transitions_lost == 0
    assert all(set(batch["actor_id"]) == {1} and set(batch["policy_version"]) == {0} for batch in writer.batches)


class RecordingReplay:
    """A replay for a real `TransitionWriter`: keeps each insert message's size."""

    def __init__(self):
        self.messages: list[int] = []

    def insert(self, batch):
        self.messages.append(len(batch["reward"]))

    def flush(self):
        self.messages.append(0)  # a flush: what came before it may be a short last message

    def close(self):
        pass


def test_insert_messages_of_a_derived_config_are_its_insert_batch_not_an_nstep_block(redis_server):
    # Issue #23's Pendulum run with 8 envs: the derived 100 per message, one in flight. The n-step
    # accumulator used to hand over 64 x 8 = 512 transitions at a time, so messages were ~512
    # whatever insert_batch said, and the lead 5x the derived one.
    settings = derive_insert_settings(20_000, 1.0, 2)
    assert settings.insert_batch == 100
    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=8)  # episodes end every 20 steps
    replay = RecordingReplay()
    config = actor_config(metrics_port=None, insert_batch=settings.insert_batch)
    actor = EnvActor(
        0,
        2,
        env,
        config,
        LEARNER,
        redis_server.url,
        "act",
        writer=TransitionWriter(replay, batch_items=settings.insert_batch),
        replay_credentials=None,
    )
    try:
        stats = actor.run(seconds=60, max_steps=3000)
        assert actor.nstep.block * env.num_envs <= settings.insert_batch  # held back: at most one message
    finally:
        actor.close()
    *messages, last, flush = replay.messages[: replay.messages.index(0) + 1]
    assert len(messages) >= 20 and set(messages) == {settings.insert_batch}
    assert 0 < last <= settings.insert_batch and flush == 0
    assert sum(messages) + last == stats.transitions_inserted


def test_epsilons_follow_the_apex_schedule():
    config = ActorsConfig(epsilon=0.4, epsilon_alpha=7.0)
    eps = [actor_epsilon(i, 8, config) for i in range(8)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert all(a > b for a, b in zip(eps, eps[1:], strict=False))
    assert actor_epsilon(0, 1, config) == pytest.approx(0.4)


def test_the_weight_subscriber_follows_new_versions_and_rides_out_a_redis_outage(redis_server, caplog):
    from actors.weights import WeightSubscriber

    store = WeightStore(redis_server.url, "subs")
    subscriber = WeightSubscriber(WeightStore(redis_server.url, "subs"), poll_s=0.02)
    try:
        assert subscriber.take() is None
        store.publish({"w": torch.ones(3)}, version=1)
        got = {}
        assert wait_until(lambda: got.setdefault("v", subscriber.take()) is not None or got.pop("v"), 5)
        assert got["v"][0] == 1 and torch.equal(got["v"][1]["w"], torch.ones(3))
        assert subscriber.take() is None  # handed over once

        redis_server.stop()
        assert wait_until(lambda: "acting with the current weights" in caplog.text, 5)
        redis_server.start()  # empty again, as after a Redis restart
        store.publish({"w": torch.full((3,), 2.0)}, version=2)
        assert wait_until(lambda: got.setdefault("w", subscriber.take()) is not None or got.pop("w"), 10)
        assert got["w"][0] == 2
    finally:
        subscriber.close()
        store.close()


def test_a_first_batch_that_leaves_only_at_the_chunks_flush_still_stamps_the_first_insert(redis_server, shard):
    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=2)
    server = shard(env)
    config = actor_config(insert_batch=100_000)  # no batch fills in the step loop: the flush sends it
    actor = EnvActor(0, 1, env, config, LEARNER, redis_server.url, "act", replay_credentials=None)
    try:
        stats = actor.run(seconds=30, max_steps=4 * NSTEP_BLOCK * env.num_envs)
        assert server.table.info().size == stats.transitions_inserted > 0
        assert stats.startup.first_step_at is not None
        assert stats.startup.first_insert_at is not None
        assert stats.startup.ready_at <= stats.startup.first_step_at <= stats.startup.first_insert_at
    finally:
        actor.close()


def test_an_actor_built_before_any_shard_serves_waits_for_one_says_so_and_its_first_transitions_land(
    redis_server, shard, monkeypatch, caplog
):
    # A fresh run starts its actors beside its shards (system/train/launch.py): an actor built
    # first waits for a shard before its first step instead of losing its first inserts, and its
    # report and log say what it waits for (issue #22: a wrong --run looked like a slow env start).
    import actors.actor

    monkeypatch.setattr("actors.actor.REPLAY_WAIT_LOG_S", 0.2)  # it says it waits at once
    collecting: list[bool] = []  # whether the collector runs while the actor waits (issue #22)
    original = actors.actor.await_replay

    def await_replay(*args, **kwargs):
        collecting.append(gc.isenabled())
        return original(*args, **kwargs)

    monkeypatch.setattr("actors.actor.await_replay", await_replay)
    env = EnvConfig(id="qfleet-test/Counter-v0", num_envs=2)
    config = actor_config(insert_retry_s=0.1, metrics_port=None)  # without the wait, inserts would be lost
    built: list = []

    def build():
        built.append(EnvActor(0, 1, env, config, LEARNER, redis_server.url, "act", replay_credentials=None))

    registry = ActorRegistry(redis_server.url, "act")
    raw = connect_redis(redis_server.url)
    builder = threading.Thread(target=build, daemon=True)
    with caplog.at_level("WARNING", logger="actors.actor"):
        builder.start()
        waiting = "no replay shard of run 'act' serves"
        assert wait_until(lambda: built or waiting in caplog.text, 120)
        assert waiting in caplog.text and not built  # still waiting: no shard has served yet
        first = registry.actors()[0]
        assert first["state"] == STATE_AWAITING_REPLAY and first["env_steps"] == 0  # a full report: status shows it
        # the report is refreshed with each warning and outlives the waits between them
        assert wait_until(lambda: built or caplog.text.count(waiting) >= 3, 120) and not built
        assert raw.pttl(actor_report_key("act", 0)) > 0
        report = registry.actors()[0]
    assert report["state"] == STATE_AWAITING_REPLAY and report["updated_at"] > first["updated_at"]
    assert redact_url(redis_server.url) in caplog.text  # where it looks: the run and its Redis
    assert collecting == [True]  # the collector's pause ended with the build, not the wait
    server = shard(env)
    builder.join(120)
    assert built, "the actor did not start once a shard served"
    actor = built[0]
    try:
        assert registry.actors()[0]["state"] == STATE_ACTING
        stats = actor.run(seconds=120, max_steps=100)
        assert stats.transitions_lost == 0 and stats.transitions_inserted > 0
        assert server.table.info().size == stats.transitions_inserted
        assert stats.startup.ready_at <= stats.startup.first_step_at
    finally:
        actor.close()
        registry.close()
        raw.close()
