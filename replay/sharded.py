"""`ShardedReplay`: N replay shards that behave as one replay.

    sharded = ShardedReplay(redis_url="redis://127.0.0.1:6379/0", run="demo")   # discovers shards
    sharded = ShardedReplay(addresses=["127.0.0.1:7001", "127.0.0.1:7002"])      # or names them

Same methods as `ReplayClient` (insert, flush, sample, sample_batches, update_priorities, info).
The parts: `Membership` (which shards are live), `ShardWriter` (write routing and failover),
`GlobalSampleLimiter` (one samples-per-insert over all shards) and `ShardDrawer` (drawing as one
table). Priority updates go to the shard named in each key.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import numpy as np

from replay import keys as keylib
from replay.client import PriorityUpdateResult, ReplayInfo, Sample
from replay.config import ShardedReplayConfig
from replay.drawing import ShardDrawer
from replay.errors import InvalidBatchError, ReplayError, ReplayUnavailableError, SpecMismatchError
from replay.global_limiter import GlobalSampleLimiter
from replay.membership import Membership
from replay.priority_stream import PriorityCounts
from replay.rate_limiter import RateLimiter
from replay.routing import ShardWriter
from replay.same_host import FeedCounts
from replay.source import ReplayStats, make_stats
from replay.spec import validate_priorities


@dataclass(frozen=True)
class ShardedInfo:
    """`ShardedReplay.info()`: totals over the live shards, and each shard's own info."""

    size: int
    capacity: int
    inserts: int
    samples: int
    priority_mass: float
    dropped_priority_updates: int
    rejected_batches: int
    lost_transitions: int
    """Transitions lost to shard crashes (inserted after a crashed shard's last checkpoint)."""
    achieved_samples_per_insert: float
    """Total samples / total inserts across the shards (0 before any insert)."""
    shards: dict[int, ReplayInfo]


class ShardedReplay:
    """Many replay shards behind one client.

    Args:
        redis_url: the run's shard registry; shards are discovered and followed from there.
        run: the run name (registry namespace).
        addresses: instead of a registry, a fixed list of shard addresses.
        config: every setting at once, instead of the arguments above and `settings`.
        **settings: any other `ShardedReplayConfig` field by name: writer_id, writer_index, samples_per_insert,
            min_size, error_buffer, beta, discovery_s, failover_after_s, seed, max_in_flight,
            credentials (the run's replay token and certificate, for shards that serve TLS),
            same_host_feed ("auto": samples from shards on this host through shared memory).

    Raises:
        ValueError: neither or both of redis_url and addresses; both config and other arguments.
        TypeError: a setting that `ShardedReplayConfig` does not have.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        run: str = "default",
        addresses: Sequence[str] | None = None,
        *,
        config: ShardedReplayConfig | None = None,
        **settings: Any,
    ):
        if config is None:
            config = ShardedReplayConfig(redis_url=redis_url, run=run, addresses=addresses, **settings)
        elif redis_url is not None or addresses is not None or run != "default" or settings:
            raise ValueError("give config or the settings as arguments, not both")
        self.config = config
        self.redis_url, self.run = config.redis_url, config.run
        self.beta = config.beta
        self.limiter = RateLimiter(config.min_size, config.samples_per_insert, config.error_buffer)
        self._pool = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="sharded-replay")
        self._membership = Membership(config, self._pool)
        writer_id = config.writer_id or f"writer-{random.getrandbits(48):012x}"
        self._writer = ShardWriter(self._membership, writer_id, config.writer_index)
        self._global_limiter = GlobalSampleLimiter(self.limiter, self._membership)
        self._drawer = ShardDrawer(self._membership, self._pool, config.seed)
        self._priorities_lost = 0  # sent for shards that had gone or failed
        self._priorities_unused = 0  # not sent: their shard draws uniformly (`PriorityCounts.unused`)

    def __reduce__(self):
        # Pickles as its config (credentials included, never a private key); the copy discovers
        # shards again (and, without an explicit writer_id, picks its own).
        return (_rebuild, (self.config,))

    @property
    def writer_id(self) -> str:
        """The id that routes this instance's inserts."""
        return self._writer.writer_id

    @property
    def failovers(self) -> int:
        """Times a shard was found unavailable and left out."""
        return self._membership.failovers

    # -- membership ------------------------------------------------------------------------------

    def shard_ids(self) -> list[int]:
        """Ids of the shards currently taken as live."""
        return sorted(s.shard_id for s in self._membership.live())

    def wait_for_shards(self, count: int, timeout: float = 30.0) -> list[int]:
        """Waits until at least `count` shards are live; returns their ids.

        Raises:
            ReplayUnavailableError: fewer than `count` within `timeout`.
        """
        self._membership.wait_for(count, timeout)
        return self.shard_ids()

    # -- writes ----------------------------------------------------------------------------------

    def insert(self, batch: Mapping[str, np.ndarray], timeout: float | None = None) -> None:
        """Streams a batch to this writer's shard, failing over to the next live one.

        Raises:
            InvalidBatchError / DeadlineExceededError: for an earlier batch (see `flush`).
            ReplayUnavailableError: no shard is live; its `unacknowledged` holds every batch not
                known to be stored (this one included), for the caller to retry or count as lost.
        """
        self._writer.send([batch], timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every batch this writer sent is acknowledged (re-sending after failovers)."""
        self._writer.flush(timeout)

    # -- samples ---------------------------------------------------------------------------------

    def sample(self, batch_size: int, *, beta: float | None = None, timeout: float | None = None) -> Sample:
        """Draws one batch from all shards as if they were one table."""
        return self.sample_batches(batch_size, 1, beta=beta, timeout=timeout)[0]

    def sample_batches(
        self, batch_size: int, num_batches: int, *, beta: float | None = None, timeout: float | None = None
    ) -> list[Sample]:
        """Draws `num_batches` batches in one parallel round over the shards.

        Raises:
            DeadlineExceededError: the global limiter (min_size, samples_per_insert) or an empty
                replay held the sample past `timeout` seconds.
            ReplayUnavailableError: no shard answered.
        """
        if batch_size < 1 or num_batches < 1:
            raise InvalidBatchError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
        beta = self.beta if beta is None else beta
        deadline = None if timeout is None else time.monotonic() + timeout
        self._membership.follow_counters()
        if not any(s.mass > 0 for s in self._membership.live()):
            self._membership.read_infos()
        wanted = batch_size * num_batches
        for _ in range(8):
            with self._global_limiter.admitted(wanted, deadline):
                batches = self._drawer.draw(batch_size, num_batches, beta, deadline)
            if batches is not None:
                return batches
        raise ReplayUnavailableError(f"sampling failed repeatedly: shards of run {self.run!r} keep going away")

    # -- priorities ------------------------------------------------------------------------------

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> PriorityUpdateResult:
        """Routes each key's new priority to the shard named in the key.

        Updates for shards that are gone, and stale keys, are dropped and counted.

        Raises:
            InvalidBatchError: lengths differ or a priority is negative or not finite.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if keys.shape != priorities.shape or keys.ndim != 1:
            raise InvalidBatchError(f"keys {keys.shape} and priorities {priorities.shape} must be equal 1-d shapes")
        shard_ids = keylib.shard_of(keys)
        shards = self._membership.all()
        jobs, dropped = [], 0
        for shard_id in np.unique(shard_ids):
            mine = shard_ids == shard_id
            shard = shards.get(int(shard_id))
            if shard is None or shard.failed_at is not None:
                dropped += int(mine.sum())
                continue
            jobs.append((shard, self._pool.submit(shard.client.update_priorities, keys[mine], priorities[mine]), mine))
        applied = 0
        for shard, job, mine in jobs:
            try:
                result = job.result()
            except ReplayUnavailableError as exc:
                self._membership.mark_failed(shard, exc)
                dropped += int(mine.sum())
                continue
            applied += result.applied
            dropped += result.dropped_stale
        return PriorityUpdateResult(applied=applied, dropped_stale=dropped)

    def send_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """Sends each key's new priority on the stream of the shard named in the key; returns at
        once (see `ReplayClient.send_priorities`). Updates for shards that draw uniformly are not
        sent (counted `unused`: such a shard discards them); for shards that are gone or failed they are
        counted lost; a shard whose stream fails is marked failed, as a failed call marks it. One
        shard's error never costs the others their updates: every shard is sent its part first.

        Raises:
            InvalidBatchError: lengths differ, or a priority is negative or not finite (nothing
                sent); or a shard refused an earlier update.
            ReplayError: the first other error of a shard's stream (busy, closed), after every
                shard was sent its part; that shard's part counted lost.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if keys.shape != priorities.shape or keys.ndim != 1:
            raise InvalidBatchError(f"keys {keys.shape} and priorities {priorities.shape} must be equal 1-d shapes")
        validate_priorities(priorities, keys.shape[0])  # once, before any shard is sent anything
        shards = self._membership.all()
        shard_ids = keylib.shard_of(keys)
        first: ReplayError | None = None
        for shard_id in np.unique(shard_ids):
            mine = shard_ids == shard_id
            shard = shards.get(int(shard_id))
            if shard is None or shard.failed_at is not None:
                self._priorities_lost += int(mine.sum())
                continue
            if not shard.uses_priorities:
                self._priorities_unused += int(mine.sum())
                continue
            try:
                shard.client.send_priorities(keys[mine], priorities[mine])
            except ReplayUnavailableError as exc:  # its stream counted what it lost
                self._membership.mark_failed(shard, exc)
            except ReplayError as exc:  # counted lost or rejected by its stream; the shard is up
                first = first or exc
        if first is not None:
            raise first

    def flush_priorities(self, timeout: float | None = None) -> PriorityCounts:
        """Sends what the shards' streams hold and waits for their answers, every shard at once
        (`timeout` is for all of them, not each); returns `priority_counts()`. A shard that fails
        meanwhile is marked failed, its updates lost.

        Raises:
            DeadlineExceededError / ReplayError: the first shard's error other than unavailable,
                after every shard was flushed (`priority_counts()` has what became of the keys).
        """
        shards = self._membership.live()
        errors: list[ReplayError | None] = [None] * len(shards)

        def flush(index: int) -> None:
            try:
                shards[index].client.flush_priorities(timeout)
            except ReplayError as exc:
                errors[index] = exc

        flushers = [
            threading.Thread(target=flush, args=(i,), name="sharded-priority-flush") for i in range(len(shards))
        ]
        for flusher in flushers:
            flusher.start()
        for flusher in flushers:  # each stops by `timeout`, or after max_wait_s without an answer
            flusher.join()
        first: ReplayError | None = None
        for shard, error in zip(shards, errors, strict=True):
            if isinstance(error, ReplayUnavailableError):
                self._membership.mark_failed(shard, error)
            elif error is not None:
                first = first or error
        if first is not None:
            raise first
        return self.priority_counts()

    def priority_counts(self) -> PriorityCounts:
        """Keys given to `send_priorities` so far (sent, or counted unused or lost), over every shard
        this replay has known."""
        counts = PriorityCounts(lost=self._priorities_lost, unused=self._priorities_unused)
        counts += self._membership.left_priorities
        for shard in self._membership.all().values():
            counts += shard.client.priority_counts()
        return counts

    # -- state -----------------------------------------------------------------------------------

    def same_host_feed_counts(self) -> dict[int, FeedCounts]:
        """What the same-host feed did for each live shard, by shard id (empty while it is off)."""
        counts = {s.shard_id: s.client.same_host_feed_counts() for s in self._membership.live()}
        return {shard_id: c for shard_id, c in counts.items() if c is not None}

    def info(self) -> ShardedInfo:
        """Totals over the live shards plus each one's info."""
        infos = self._membership.read_infos()
        inserts = sum(i.inserts for i in infos.values())
        samples = sum(i.samples for i in infos.values())
        specs = {i.spec for i in infos.values()}
        if len(specs) > 1:
            raise SpecMismatchError(f"live shards hold different specs: {sorted(s.to_json() for s in specs)}")
        return ShardedInfo(
            size=sum(i.size for i in infos.values()),
            capacity=sum(i.capacity for i in infos.values()),
            inserts=inserts,
            samples=samples,
            priority_mass=sum(i.priority_mass for i in infos.values()),
            dropped_priority_updates=sum(i.dropped_priority_updates for i in infos.values()),
            rejected_batches=sum(i.rejected_batches for i in infos.values()),
            lost_transitions=self._membership.lost_transitions(infos),
            achieved_samples_per_insert=samples / inserts if inserts else 0.0,
            shards=infos,
        )

    def stats(self) -> ReplayStats:
        """Cached counters for metrics and progress lines (no RPC)."""
        inserts, samples = self._membership.totals()
        return make_stats(
            self.run,
            inserts,
            samples,
            target=self.limiter.samples_per_insert or 0.0,
            live_shards=len(self._membership.live()),
            failovers=self.failovers,
        )

    def close(self) -> None:
        """Stops discovery and closes every shard client (call `flush` first to wait for acks)."""
        self._membership.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> ShardedReplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rebuild(config: ShardedReplayConfig) -> ShardedReplay:
    return ShardedReplay(config=config)
