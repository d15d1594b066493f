"""The shard registry: replay's part of the Redis control plane.

Shards register themselves with a heartbeat; clients discover live shards from here. Every Redis
key replay uses is listed below, and nowhere else:

    qfleet:{run}:replay:spec               string  the run's item spec (JSON). Set by the first shard
                                                   (SET NX); a shard with another spec is refused.
    qfleet:{run}:replay:shards             set     ids of every shard that ever registered.
    qfleet:{run}:replay:shard:{id}:live    hash    address, metrics_address, spec_digest, pid,
                                                   started_at, heartbeat_at. Expires `ttl_s` after
                                                   the last heartbeat: present = live.
    qfleet:{run}:replay:shard:{id}:state   hash    inserts, samples, size, checkpoint_inserts (at the
                                                   newest checkpoint), lost_total. Never expires: a
                                                   restarted shard compares it with what it restored
                                                   to count the transitions a crash lost.

Every heartbeat rewrites all of a shard's keys, so a Redis restarted empty is repopulated within
one heartbeat and components carry on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import redis

from replay.errors import ReplayUnavailableError, SpecMismatchError
from replay.redis_connection import connect_redis, redact_url
from replay.spec import Spec

log = logging.getLogger(__name__)


def _key(run: str, *parts: object) -> str:
    return ":".join(["qfleet", run, "replay", *map(str, parts)])


def live_shard_key(run: str, shard_id: int | str) -> str:
    """The key present while shard `shard_id` of run `run` is live; "*" for either makes a pattern."""
    return _key(run, "shard", shard_id, "live")


@dataclass(frozen=True)
class ShardRecord:
    """A live shard as the registry knows it."""

    shard_id: int
    address: str
    metrics_address: str
    spec_digest: str
    pid: int
    started_at: float
    heartbeat_at: float


class ShardRegistry:
    """Registration, heartbeats and discovery of a run's shards in Redis.

    Args:
        redis_url: e.g. "redis://127.0.0.1:6379/0".
        run: namespace of the run; shards and clients of one run share it.
        ttl_s: a shard whose heartbeat is older than this is no longer live.
    """

    def __init__(self, redis_url: str, run: str = "default", ttl_s: float = 5.0):
        self.redis_url = redis_url
        self.run = run
        self.ttl_s = ttl_s
        self._shown_url = redact_url(redis_url)
        self._redis = connect_redis(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def __reduce__(self):
        return (type(self), (self.redis_url, self.run, self.ttl_s))

    # -- shard side ------------------------------------------------------------------------------

    def check_spec(self, spec: Spec, shard_id: int) -> None:
        """Claims the run's spec, or checks ours against it.

        Raises:
            SpecMismatchError: the run already holds another spec (both are named).
            ReplayUnavailableError: Redis is unreachable.
        """
        key = _key(self.run, "spec")
        ours = spec.to_json()
        try:
            self._redis.set(key, ours, nx=True)
            theirs = self._redis.get(key)
        except redis.RedisError as exc:
            raise ReplayUnavailableError(f"shard registry {self._shown_url} unreachable: {exc}") from None
        if theirs is not None and theirs.decode() != ours:
            raise SpecMismatchError(
                f"shard {shard_id} refused: its spec {ours} differs from run {self.run!r}'s spec {theirs.decode()}"
            )

    def heartbeat(self, record: ShardRecord, spec: Spec, counters: dict[str, int]) -> None:
        """(Re-)registers the shard and refreshes its TTL and counters. Raises redis.RedisError."""
        live = live_shard_key(self.run, record.shard_id)
        fields = {
            "address": record.address,
            "metrics_address": record.metrics_address,
            "spec_digest": record.spec_digest,
            "pid": record.pid,
            "started_at": record.started_at,
            "heartbeat_at": time.time(),
        }
        pipe = self._redis.pipeline()
        pipe.set(_key(self.run, "spec"), spec.to_json(), nx=True)
        pipe.sadd(_key(self.run, "shards"), record.shard_id)
        pipe.hset(live, mapping=fields)
        pipe.pexpire(live, int(self.ttl_s * 1000))
        pipe.hset(_key(self.run, "shard", record.shard_id, "state"), mapping=counters)
        pipe.execute()

    def deregister(self, shard_id: int, counters: dict[str, int]) -> None:
        """Removes the live entry at a clean stop (clients notice at once) and saves counters."""
        pipe = self._redis.pipeline()
        pipe.delete(live_shard_key(self.run, shard_id))
        pipe.hset(_key(self.run, "shard", shard_id, "state"), mapping=counters)
        pipe.execute()

    def last_state(self, shard_id: int) -> dict[str, int]:
        """The counters a shard id last reported (empty if none). Raises ReplayUnavailableError."""
        try:
            raw = self._redis.hgetall(_key(self.run, "shard", shard_id, "state"))
        except redis.RedisError as exc:
            raise ReplayUnavailableError(f"shard registry {self._shown_url} unreachable: {exc}") from None
        return {k.decode(): int(float(v)) for k, v in raw.items()}

    # -- client side -----------------------------------------------------------------------------

    def live_shards(self) -> dict[int, ShardRecord]:
        """Shard id -> record of every live shard. Raises ReplayUnavailableError."""
        try:
            ids = sorted(int(i) for i in self._redis.smembers(_key(self.run, "shards")))
            pipe = self._redis.pipeline()
            for shard_id in ids:
                pipe.hgetall(live_shard_key(self.run, shard_id))
            entries = pipe.execute()
        except redis.RedisError as exc:
            raise ReplayUnavailableError(f"shard registry {self._shown_url} unreachable: {exc}") from None
        live = {}
        for shard_id, raw in zip(ids, entries, strict=True):
            if not raw:
                continue
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            live[shard_id] = ShardRecord(
                shard_id=shard_id,
                address=fields["address"],
                metrics_address=fields.get("metrics_address", ""),
                spec_digest=fields.get("spec_digest", ""),
                pid=int(fields.get("pid", 0)),
                started_at=float(fields.get("started_at", 0)),
                heartbeat_at=float(fields.get("heartbeat_at", 0)),
            )
        return live

    def lost_total(self) -> int:
        """Transitions lost to shard crashes across the run, as the shards reported them."""
        try:
            ids = self._redis.smembers(_key(self.run, "shards"))
            pipe = self._redis.pipeline()
            for shard_id in ids:
                pipe.hget(_key(self.run, "shard", int(shard_id), "state"), "lost_total")
            return sum(int(float(v)) for v in pipe.execute() if v is not None)
        except redis.RedisError as exc:
            raise ReplayUnavailableError(f"shard registry {self._shown_url} unreachable: {exc}") from None

    def close(self) -> None:
        self._redis.close()


def new_record(shard_id: int, address: str, metrics_address: str, spec: Spec) -> ShardRecord:
    """The record a starting shard registers."""
    now = time.time()
    return ShardRecord(shard_id, address, metrics_address, spec.digest(), os.getpid(), now, now)
