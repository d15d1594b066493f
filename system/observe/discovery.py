"""Prometheus service discovery: every component's /metrics of a run, as target groups.

The targets come from what components register in Redis (each package names its own keys); the
driver adds its own key, below. `qfleet train` rewrites RUN_DIR/prometheus/targets.json for
file_sd; `qfleet discovery` (discovery_server.py) answers http_sd for every run in a Redis.

    qfleet:{run}:train:driver    hash    metrics (host:port of the driver's /metrics), host, pid,
                                         updated_at; expires DRIVER_TTL_S after the last write
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

import redis

from replay import create_private_file, private_dir

DISCOVERY_EVERY_S = 5.0
"""Seconds between rewrites of the targets file and of the driver's key."""

DRIVER_TTL_S = 3 * DISCOVERY_EVERY_S
"""The driver's key expires this long after its last write (a killed driver leaves discovery)."""


def _client(redis_url: str) -> redis.Redis:
    from replay import connect_redis

    return connect_redis(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)


def _driver_key(run: str) -> str:
    return f"qfleet:{run}:train:driver"


def _run_key_patterns() -> tuple[str, ...]:
    """Patterns of the keys whose presence means a run has components, first `*` the run name."""
    from actors import actor_report_key
    from learner import learner_status_key
    from replay import live_shard_key

    return (_driver_key("*"), learner_status_key("*"), live_shard_key("*", "*"), actor_report_key("*", "*"))


def _run_of(key: str, pattern: str) -> str:
    """The part of `key` that the first `*` of `pattern` matched (what follows it is literal)."""
    prefix, rest = pattern.split("*", 1)
    literal = rest.split("*", 1)[0]
    return key[len(prefix) : key.index(literal, len(prefix))]


def register_driver(redis_url: str, run: str, metrics: str) -> None:
    """Writes (refreshes) the driver's key; raises redis.RedisError."""
    client = _client(redis_url)
    try:
        fields = {
            "metrics": metrics,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "updated_at": f"{time.time():.3f}",
        }
        pipe = client.pipeline(transaction=True)
        pipe.hset(_driver_key(run), mapping=fields)
        pipe.pexpire(_driver_key(run), int(DRIVER_TTL_S * 1000))
        pipe.execute()
    finally:
        client.close()


def unregister_driver(redis_url: str, run: str) -> None:
    """Removes the driver's key (the run ended); raises redis.RedisError."""
    client = _client(redis_url)
    try:
        client.delete(_driver_key(run))
    finally:
        client.close()


def runs(redis_url: str) -> list[str]:
    """Names of the runs that have a registered component in this Redis; raises redis.RedisError."""
    client = _client(redis_url)
    try:
        names = set()
        for pattern in _run_key_patterns():
            for key in client.scan_iter(match=pattern, count=1000):
                names.add(_run_of(key.decode(), pattern))
        return sorted(names)
    finally:
        client.close()


def discover(redis_url: str, run: str, driver_metrics: str | None = None) -> list[dict]:
    """Target groups (file_sd/http_sd format) of every component of run `run` that serves /metrics.

    `driver_metrics` names the driver's /metrics; None: what the driver registered, if anything.

    Raises:
        redis.RedisError, ReplayUnavailableError, ActorRegistryError: Redis unreachable.
    """
    from actors import ActorRegistry
    from learner import LearnerStatus
    from replay import ShardRegistry

    groups = []

    def add(address, job: str, **labels: str) -> None:
        if address:
            groups.append({"targets": [str(address)], "labels": {"job": job, "run": run, **labels}})

    if driver_metrics is None:
        client = _client(redis_url)
        try:
            driver_metrics = (client.hget(_driver_key(run), "metrics") or b"").decode()
        finally:
            client.close()
    add(driver_metrics, "qfleet_train")
    status = LearnerStatus(redis_url, run)
    shards = ShardRegistry(redis_url, run)
    actors = ActorRegistry(redis_url, run)
    try:
        add((status.read() or {}).get("metrics"), "qfleet_learner")
        for shard_id, record in sorted(shards.live_shards().items()):
            add(record.metrics_address, "qfleet_replay", shard=str(shard_id))
        for actor_id, report in sorted(actors.actors().items()):
            add(report.get("metrics"), "qfleet_actor", actor=str(actor_id))
    finally:
        status.close()
        shards.close()
        actors.close()
    return groups


def discover_all(redis_url: str, names: list[str] | None = None) -> list[dict]:
    """Target groups of every run in this Redis (or of `names`); raises as `discover` does."""
    return [group for run in (runs(redis_url) if names is None else names) for group in discover(redis_url, run)]


def write_targets(path: pathlib.Path, groups: list[dict]) -> None:
    """Replaces the file_sd file atomically (Prometheus never reads half a file), owner-only (it
    lists the run's addresses) like the rest of the run directory."""
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    create_private_file(temporary)
    temporary.write_text(json.dumps(groups, indent=1) + "\n")
    os.replace(temporary, path)
