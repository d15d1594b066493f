"""Prometheus service discovery for a run: every component's /metrics, as file_sd target groups.

The `qfleet train` driver rewrites RUN_DIR/prometheus/targets.json every DISCOVERY_EVERY_S
seconds (atomically, as Prometheus' file-based discovery expects) from what the components
register in the run's Redis: the driver itself, the learner's status hash, every live shard and
every reporting actor. Prometheus picks changes up without a restart; a component that leaves
disappears from the file. At the end of the run the file is emptied.

    [{"targets": ["127.0.0.1:45359"], "labels": {"job": "qfleet_learner", "run": "demo"}},
     {"targets": ["127.0.0.1:35277"], "labels": {"job": "qfleet_replay", "run": "demo", "shard": "0"}}, ...]
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

log = logging.getLogger("qfleet.train")

DISCOVERY_EVERY_S = 5.0
"""Seconds between rewrites of the targets file."""


def discover(redis_url: str, run: str, driver_metrics: str | None) -> list[dict]:
    """File_sd target groups of every component of run `run` that serves /metrics.

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


def write_targets(path: pathlib.Path, groups: list[dict]) -> None:
    """Replaces the file_sd file atomically (Prometheus never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(groups, indent=1) + "\n")
    os.replace(temporary, path)
