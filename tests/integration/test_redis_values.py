"""Values read from a run's Redis are parsed defensively: a value that anyone who can write to
Redis left there is logged once, counted and skipped; the readers (an actor's weight subscriber,
the driver's episode feed, `qfleet status`) keep going and follow the next valid values."""

from __future__ import annotations

import logging

import torch

from actors import ActorRegistry, ActorsConfig, EnvActor, EnvConfig, describe_env
from conftest import wait_until
from learner import ArchitectureConfig, LearnerConfig, Policy, WeightStore
from replay import connect_redis
from system.observe.status import status_text
from system.train.launch import EpisodeFeed

LEARNER = LearnerConfig(architecture=ArchitectureConfig(hidden_size=16))
ENV = EnvConfig(id="CartPole-v1", num_envs=2)


def test_a_bad_weights_version_is_counted_and_the_actor_follows_the_next_valid_versions(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="actors.weights")
    spaces = describe_env(ENV)
    store = WeightStore(redis_server.url, "bad")
    published = Policy(LEARNER, spaces.obs_shape, spaces.action_space, seed=1).network.state_dict()
    store.publish(published, version=30)
    raw = connect_redis(redis_server.url)
    registry = ActorRegistry(redis_server.url, "bad")
    actor = EnvActor(
        0,
        1,
        ENV,
        ActorsConfig(weight_poll_steps=1, metrics_port=None),
        LEARNER,
        redis_server.url,
        "bad",
        writer=_NullWriter(),
        replay_credentials=None,
    )
    try:
        assert actor.policy.version == 30
        raw.set("qfleet:bad:learner:weights_version", "not-a-number")
        assert wait_until(lambda: actor.weights.malformed.total >= 3, 5)  # polled again and again
        stats = actor.run(seconds=0.1)
        assert stats.policy_version == 30 and stats.malformed_weights >= 3
        assert registry.actors()[0]["malformed_weights"] >= 3  # in its report
        assert caplog.text.count("not-a-number") == 1  # logged once, not once per poll

        store.publish({k: v + 1 for k, v in published.items()}, version=31)
        assert wait_until(lambda: actor.run(seconds=0.05).policy_version == 31, 10)
        torch.testing.assert_close(actor.policy.network.state_dict()["head.bias"], published["head.bias"] + 1)
        raw.set("qfleet:bad:learner:weights", b"\xff not safetensors")
        raw.set("qfleet:bad:learner:weights_version", b"\xff\xfe")  # not even UTF-8
        store.publish(published, version=32)
        assert wait_until(lambda: actor.run(seconds=0.05).policy_version == 32, 10)
    finally:
        actor.close()
        store.close()
        registry.close()
        raw.close()


def test_an_actor_starts_while_the_version_is_malformed(redis_server):
    raw = connect_redis(redis_server.url)
    raw.set("qfleet:start:learner:weights_version", "-3")
    actor = EnvActor(
        0,
        1,
        ENV,
        ActorsConfig(metrics_port=None),
        LEARNER,
        redis_server.url,
        "start",
        writer=_NullWriter(),
        replay_credentials=None,
    )
    try:
        assert actor.policy.version == 0 and actor.stats().malformed_weights >= 1
    finally:
        actor.close()
        raw.close()


def test_malformed_episode_entries_are_skipped_and_the_driver_feed_reads_on(redis_server, caplog):
    feed = EpisodeFeed(redis_server.url, "feed")
    registry = ActorRegistry(redis_server.url, "feed")
    raw = connect_redis(redis_server.url)
    stream = "qfleet:feed:actors:episodes"
    try:
        registry.add_episodes(1, [(10.0, 10, 3, 100)])
        raw.xadd(stream, {"actor": "1", "time": "1.0", "return": "x", "length": "1", "policy_version": "1"})
        raw.xadd(stream, {"garbage": b"\xff"})
        fields = {"actor": "2", "time": "1.0", "return": "1.0 2.0", "length": "1", "policy_version": "1 1"}
        raw.xadd(stream, {**fields, "env_steps": "5 6"})  # columns of different lengths
        registry.add_episodes(2, [(20.0, 20, 4, 200), (21.0, 21, 4, 210)])
        episodes = feed.read()
        assert [(e["actor"], e["return"], e["length"]) for e in episodes] == [
            (1, 10.0, 10),
            (2, 20.0, 20),
            (2, 21.0, 21),
        ]
        assert feed.malformed == 3
        assert caplog.text.count("malformed episode stream entry") == 1
        registry.add_episodes(3, [(5.0, 5, 4, 300)])
        assert [e["actor"] for e in feed.read()] == [3]
    finally:
        feed.close()
        registry.close()
        raw.close()


def test_status_shows_a_malformed_report_on_its_line_and_the_rest_as_usual(redis_server):
    registry = ActorRegistry(redis_server.url, "view")
    raw = connect_redis(redis_server.url)
    try:
        registry.report(0, {"env_steps": 100, "episodes": 3, "host": "h", "pid": 1})
        registry.report(1, {"env_steps": "lots", "episodes": 3})
        raw.hset("qfleet:view:actors:actor:not-an-id", "env_steps", "1")
        raw.set("qfleet:view:actors:desired", "many")
        text = status_text(redis_server.url, "view")
        assert "actors: 2 reporting, - wanted" in text
        assert "  0   h:1" in text and "       100" in text
        assert "  1   malformed report: {" in text and "'lots'" in text
    finally:
        registry.close()
        raw.close()


class _NullWriter:
    """Takes an actor's transitions and drops them (these tests are about weights and reports)."""

    sent = inserted = lost = 0

    def add(self, transitions) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
