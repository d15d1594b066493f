"""`qfleet discovery` (Prometheus http_sd) over a real redis-server: every run's components, a
run filter, components leaving, and Redis going away."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from actors import ActorRegistry
from conftest import CARTPOLE_SPEC, wait_until
from learner import LearnerStatus
from replay import ShardRecord, ShardRegistry
from system.observe.discovery import discover, register_driver, runs, unregister_driver
from system.observe.discovery_server import DiscoveryServer


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def server(redis_server):
    servers = []

    def start(**kwargs) -> str:
        started = DiscoveryServer(redis_server.url, port=0, **kwargs).start()
        servers.append(started)
        return f"http://127.0.0.1:{started.port}"

    yield start
    for started in servers:
        started.stop()


def test_lists_every_run_and_follows_components(redis_server, server):
    register_driver(redis_server.url, "alpha", "127.0.0.1:9001")
    learner = LearnerStatus(redis_server.url, "beta")
    learner.write({"metrics": "127.0.0.1:9002", "updates": 5}, ttl_s=60)
    url = server()

    status, kind, body = get(f"{url}/targets")
    assert status == 200 and kind == "application/json"
    assert sorted(json.loads(body), key=lambda g: g["targets"]) == [
        {"targets": ["127.0.0.1:9001"], "labels": {"job": "qfleet_train", "run": "alpha"}},
        {"targets": ["127.0.0.1:9002"], "labels": {"job": "qfleet_learner", "run": "beta"}},
    ]
    only_beta = server(runs=["beta"])
    assert [g["labels"]["run"] for g in json.loads(get(f"{only_beta}/targets")[2])] == ["beta"]

    unregister_driver(redis_server.url, "alpha")  # a finished run leaves discovery
    assert [g["labels"]["run"] for g in json.loads(get(f"{url}/targets")[2])] == ["beta"]
    assert get(f"{url}/nothing-here")[0] == 404
    learner.close()


def test_any_registered_component_makes_its_run_discoverable(redis_server):
    url = redis_server.url
    learner, shards, actors = (
        LearnerStatus(url, "learner-only"),
        ShardRegistry(url, "shard-only", 60),
        ActorRegistry(url, "actor-only"),
    )
    try:
        register_driver(url, "driver-only", "127.0.0.1:9001")
        learner.write({"metrics": "127.0.0.1:9002"}, ttl_s=60)
        now = time.time()
        record = ShardRecord(0, "127.0.0.1:7001", "127.0.0.1:9003", CARTPOLE_SPEC.digest(), 1, now, now)
        shards.heartbeat(record, CARTPOLE_SPEC, {"inserts": 0})
        actors.report(3, {"metrics": "127.0.0.1:9004"}, ttl_s=60)

        assert runs(url) == ["actor-only", "driver-only", "learner-only", "shard-only"]
        assert discover(url, "shard-only") == [
            {"targets": ["127.0.0.1:9003"], "labels": {"job": "qfleet_replay", "run": "shard-only", "shard": "0"}}
        ]
        assert discover(url, "actor-only") == [
            {"targets": ["127.0.0.1:9004"], "labels": {"job": "qfleet_actor", "run": "actor-only", "actor": "3"}}
        ]
    finally:
        learner.close()
        shards.close()
        actors.close()


def test_redis_gone_is_a_503_naming_it_and_serving_resumes(redis_server, server):
    register_driver(redis_server.url, "alpha", "127.0.0.1:9001")
    url = server()
    redis_server.stop()
    status, kind, body = get(f"{url}/targets")
    assert status == 503 and kind == "text/plain" and redis_server.url in body
    redis_server.start()  # an empty Redis: the components re-register on their next heartbeat
    register_driver(redis_server.url, "alpha", "127.0.0.1:9001")
    assert wait_until(lambda: get(f"{url}/targets")[0] == 200, timeout=10)
    assert json.loads(get(f"{url}/targets")[2])[0]["targets"] == ["127.0.0.1:9001"]


def test_a_password_in_the_redis_url_is_never_in_a_503_body(redis_server):
    """A wrong password is as good as Redis gone for Prometheus: a 503 naming the Redis, not the password."""
    password = "not-the-session-password-0123456789"
    started = DiscoveryServer(f"redis://:{password}@127.0.0.1:{redis_server.port}/0", port=0).start()
    try:
        status, _, body = get(f"http://127.0.0.1:{started.port}/targets")
    finally:
        started.stop()
    assert status == 503 and f"redis://:***@127.0.0.1:{redis_server.port}/0" in body
    assert password not in body
