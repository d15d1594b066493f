"""The actors' Redis keys (values are plain strings; readers get typed dicts back):

qfleet:{run}:actors:desired      int     actors the supervisor keeps running (`qfleet scale`)
qfleet:{run}:actors:actor:{id}   hash    the actor's latest report (ActorStats fields, host,
                                         Ray node (in Ray), metrics address, state,
                                         insert_wait_s, updated_at),
                                         written once it is up, after each chunk and while its
                                         inserts wait; expires after ttl_s
qfleet:{run}:actors:episodes     stream  one entry per actor flush with the episodes it finished
                                         meanwhile (not one per episode: CartPole ends
                                         thousands a second); capped near EPISODE_STREAM_LENGTH

Readers skip a malformed value (an entry missing a field, a non-number, a bad key) and count it in
`ActorRegistry.malformed`; the first of each kind is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis

from actors.errors import ActorRegistryError
from learner import MalformedValues, parse_number
from replay import connect_redis, redact_url

log = logging.getLogger(__name__)

EPISODE_STREAM_LENGTH = 100_000
"""Approximate cap of the episode stream (older entries are trimmed)."""


EPISODE_FIELDS = ("return", "length", "policy_version", "env_steps")
"""Per-episode lists in each stream entry."""

STATE_ACTING = "acting"
"""An actor report's `state`: the actor is up and stepping its envs."""

STATE_AWAITING_REPLAY = "awaiting_replay"
"""An actor report's `state`: the actor is built and waits for a shard of its run to serve
before its first step (`actors.actor.await_replay`)."""

STATE_HELD_BACK = "held_back"
"""An actor report's `state`: its inserts have waited `insert_wait_s` seconds on replay, whose
rate limiter holds writers while the learner samples slower than the actors insert (the UTD)."""


def actor_report_key(run: str, actor_id: int | str) -> str:
    """The key of actor `actor_id`'s report in run `run`; "*" for either makes a pattern."""
    return f"qfleet:{run}:actors:actor:{actor_id}"


class ActorRegistry:
    """Reads and writes the actors' keys of one run.

    Args:
        redis_url: the run's Redis.
        run: the run name (key namespace).
    """

    def __init__(self, redis_url: str, run: str = "default"):
        self.redis_url, self.run = redis_url, run
        self._prefix = f"qfleet:{run}:actors"
        self._shown_url = redact_url(redis_url)
        self._redis = connect_redis(redis_url, socket_timeout=10.0, socket_connect_timeout=2.0)
        self.malformed = MalformedValues(log)
        """Malformed values this reader skipped (episode entries, report keys, the desired count)."""

    def __reduce__(self):
        return (type(self), (self.redis_url, self.run))

    def _do(self, what: str, fn):
        try:
            return fn()
        except redis.RedisError as exc:
            raise ActorRegistryError(f"cannot {what} at {self._shown_url}: {exc}", redis_url=self._shown_url) from None

    # -- fleet size ------------------------------------------------------------------------------

    def set_desired(self, count: int) -> None:
        """Asks the running supervisor for `count` actors."""
        if count < 0:
            raise ValueError(f"actor count must be >= 0, got {count}")
        self._do("set the desired actor count", lambda: self._redis.set(f"{self._prefix}:desired", count))

    def desired(self) -> int | None:
        """The requested actor count, or None if none was set (or it is not a count: then counted)."""
        key = f"{self._prefix}:desired"
        value = self._do("read the desired actor count", lambda: self._redis.get(key))
        if value is None:
            return None
        count = parse_number(value)
        if not isinstance(count, int) or count < 0:
            self.malformed.add(key, f"{key} holds {value[:100]!r}, not an actor count")
            return None
        return count

    # -- per-actor reports -----------------------------------------------------------------------

    def report(self, actor_id: int, fields: dict[str, int | float | str], ttl_s: float = 30.0) -> None:
        """Replaces actor `actor_id`'s report (with `updated_at`); it expires after `ttl_s`."""
        key = actor_report_key(self.run, actor_id)
        mapping = {**{k: str(v) for k, v in fields.items()}, "updated_at": f"{time.time():.3f}"}

        def write():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(key, mapping=mapping)
            pipe.pexpire(key, int(ttl_s * 1000))
            pipe.execute()

        self._do("report actor state", write)

    def remove(self, actor_id: int) -> None:
        """Drops an actor's report (it was retired)."""
        self._do("remove an actor report", lambda: self._redis.delete(actor_report_key(self.run, actor_id)))

    def actors(self) -> dict[int, dict[str, int | float | str]]:
        """Every live actor's latest report, by actor id."""

        def read():
            keys = sorted(self._redis.scan_iter(actor_report_key(self.run, "*"), count=1000))
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return keys, pipe.execute()

        keys, values = self._do("read actor reports", read)
        out = {}
        for key, fields in zip(keys, values, strict=True):
            actor_id = parse_number(key.rsplit(b":", 1)[1])
            if not isinstance(actor_id, int):
                self.malformed.add("actor report key", f"{key[:100]!r} names no actor id")
            elif fields:
                out[actor_id] = {k.decode(errors="replace"): parse_number(v) for k, v in fields.items()}
        return out

    # -- episodes --------------------------------------------------------------------------------

    def add_episodes(self, actor_id: int, episodes: Sequence[tuple[float, int, int, int]]) -> None:
        """Appends one actor's finished episodes, (return, length, policy_version, env_steps)
        tuples, to the stream as one entry."""
        if not episodes:
            return
        fields = {"actor": str(actor_id), "time": f"{time.time():.3f}"}
        for name, values in zip(EPISODE_FIELDS, zip(*episodes, strict=True), strict=True):
            fields[name] = " ".join(map(repr, values))
        self._do(
            "append episodes",
            lambda: self._redis.xadd(f"{self._prefix}:episodes", fields, maxlen=EPISODE_STREAM_LENGTH),
        )

    def read_episodes(
        self, after: str = "0-0", count: int = 1000, block_ms: int | None = None
    ) -> tuple[str, list[dict[str, int | float]]]:
        """Episodes in stream entries after id `after` ("0-0": from the start; "$": only new ones).

        Returns:
            (the id to pass next time, one dict per episode in order: actor, time, return,
            length, policy_version, env_steps).
        """
        stream = f"{self._prefix}:episodes"
        if after == "$":
            last = self._do("read episodes", lambda: self._redis.xrevrange(stream, count=1))
            after = last[0][0].decode() if last else "0-0"
        reply = self._do("read episodes", lambda: self._redis.xread({stream: after}, count=count, block=block_ms))
        episodes: list[dict[str, int | float]] = []
        for _, entries in reply or []:
            for entry_id, raw in entries:
                after = entry_id.decode()
                try:
                    episodes += _entry_episodes(raw)
                except (KeyError, ValueError) as exc:
                    self.malformed.add("episode stream entry", f"{stream} {after}: {type(exc).__name__}: {exc}")
        return after, episodes

    def close(self) -> None:
        self._redis.close()


def _entry_episodes(raw: dict[bytes, bytes]) -> list[dict[str, int | float]]:
    """The episodes of one stream entry. Raises KeyError (a field missing) or ValueError (a value
    that is not a number, columns of different lengths)."""
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    columns = [[_number(x, name) for x in fields[name].split()] for name in EPISODE_FIELDS]
    common = {"actor": int(fields["actor"]), "time": float(fields["time"])}
    return [{**common, **dict(zip(EPISODE_FIELDS, values, strict=True))} for values in zip(*columns, strict=True)]


def _number(text: str, name: str) -> int | float:
    value = parse_number(text)
    if isinstance(value, str):
        raise ValueError(f"{name} {text[:100]!r} is not a number")
    return value
