"""`MixedReplay`: batches drawn in fixed fractions from named sources (RLPD's symmetric sampling).

    mixed = MixedReplay({"offline": (offline_replay, 0.5), "online": (online_replay, 0.5)})
    batch = mixed.sample(256)       # exactly 128 items from each source, every batch

Each source is a `ReplayClient` or `ShardedReplay`. Shard ids must differ across sources, so a
key still names its shard and `update_priorities` routes as usual. Importance weights correct for
prioritization *within* each source, not for the mixture: oversampling a source is the point.
`probabilities` are the mixture's (fraction times the in-source probability).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent import futures
from typing import TYPE_CHECKING

import numpy as np

from replay import keys as keylib
from replay.client import PriorityUpdateResult, ReplayClient, Sample
from replay.errors import InvalidBatchError, ReplayError
from replay.priority_stream import PriorityCounts
from replay.source import ReplayStats, make_stats
from replay.spec import validate_priorities

if TYPE_CHECKING:  # sharded.py imports config.py, which imports this module
    from replay.sharded import ShardedReplay


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Checks that every fraction is in (0, 1] and that they sum to 1; returns them as a dict.

    Raises:
        ValueError: naming the offending source, or the sum.
    """
    if not fractions:
        raise ValueError("at least one source is needed")
    for name, fraction in fractions.items():
        if not isinstance(fraction, int | float) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"source {name!r}: fraction {fraction!r} must be in (0, 1]")
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions {dict(fractions)} sum to {total:g}, not 1")
    return {name: float(f) for name, f in fractions.items()}


def split_counts(batch_size: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Items per source for one batch: floor(f * n), the remainder to the largest remainders."""
    names = list(fractions)
    exact = np.array([fractions[n] * batch_size for n in names])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: batch_size - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist(), strict=True))


class MixedReplay:
    """Samples fixed fractions of every batch from named sources.

    Args:
        sources: name -> (source, fraction); fractions sum to 1.

    Raises:
        ValueError: bad fractions, or two sources sharing a shard id.
    """

    def __init__(self, sources: Mapping[str, tuple[ReplayClient | ShardedReplay, float]]):
        self.fractions = validate_fractions({name: fraction for name, (_, fraction) in sources.items()})
        self.sources = {name: source for name, (source, _) in sources.items()}
        self._owner = self._owners()
        self._unrouted = 0  # priorities sent for keys of no source's shard (counted lost)
        self._pool = futures.ThreadPoolExecutor(max_workers=max(2, len(self.sources)))

    def sample(self, batch_size: int, *, beta: float | None = None, timeout: float | None = None) -> Sample:
        """One batch holding exactly `split_counts(batch_size)` items per source."""
        return self.sample_batches(batch_size, 1, beta=beta, timeout=timeout)[0]

    def sample_batches(
        self, batch_size: int, num_batches: int, *, beta: float | None = None, timeout: float | None = None
    ) -> list[Sample]:
        """`num_batches` batches, each holding exactly `split_counts(batch_size)` items per source."""
        counts = split_counts(batch_size, self.fractions)
        jobs = {
            name: self._pool.submit(self.sources[name].sample_batches, n, num_batches, beta=beta, timeout=timeout)
            for name, n in counts.items()
            if n > 0
        }
        drawn = {name: job.result() for name, job in jobs.items()}
        batches = []
        for b in range(num_batches):
            parts = [(name, drawn[name][b]) for name in drawn]
            weights = np.concatenate([s.weights for _, s in parts])
            batches.append(
                Sample(
                    data={col: np.concatenate([s.data[col] for _, s in parts]) for col in parts[0][1].data},
                    keys=np.concatenate([s.keys for _, s in parts]),
                    probabilities=np.concatenate([self.fractions[n] * s.probabilities for n, s in parts]),
                    weights=weights / weights.max(),
                    table_size=sum(s.table_size for _, s in parts),
                    priority_mass=sum(s.priority_mass for _, s in parts),
                    inserts=sum(s.inserts for _, s in parts),
                    samples=sum(s.samples for _, s in parts),
                )
            )
        return batches

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> PriorityUpdateResult:
        """Routes updates to the source owning each key's shard."""
        keys = np.asarray(keys, dtype=np.uint64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if keys.shape != priorities.shape:
            raise InvalidBatchError(f"keys {keys.shape} and priorities {priorities.shape} differ in shape")
        shard_ids = keylib.shard_of(keys)
        if not np.isin(shard_ids, list(self._owner)).all():  # a shard that joined a source since: look again
            self._owner = self._owners()
        applied = dropped = 0
        for name, source in self.sources.items():
            mine = np.isin(shard_ids, [i for i, owner in self._owner.items() if owner == name])
            if mine.any():
                result = source.update_priorities(keys[mine], priorities[mine])
                applied, dropped = applied + result.applied, dropped + result.dropped_stale
        unknown = int((~np.isin(shard_ids, list(self._owner))).sum())
        return PriorityUpdateResult(applied=applied, dropped_stale=dropped + unknown)

    def send_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """Streams updates to the source owning each key's shard (keys of no source: lost).
        Every source is sent its part before the first source's error is raised."""
        keys = np.asarray(keys, dtype=np.uint64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if keys.shape != priorities.shape or keys.ndim != 1:
            raise InvalidBatchError(f"keys {keys.shape} and priorities {priorities.shape} must be equal 1-d shapes")
        validate_priorities(priorities, keys.shape[0])  # once, before any source is sent anything
        shard_ids = keylib.shard_of(keys)
        if not np.isin(shard_ids, list(self._owner)).all():
            self._owner = self._owners()
        first: ReplayError | None = None
        for name, source in self.sources.items():
            mine = np.isin(shard_ids, [i for i, owner in self._owner.items() if owner == name])
            if mine.any():
                try:
                    source.send_priorities(keys[mine], priorities[mine])
                except ReplayError as exc:  # counted by the source's streams
                    first = first or exc
        self._unrouted += int((~np.isin(shard_ids, list(self._owner))).sum())
        if first is not None:
            raise first

    def flush_priorities(self, timeout: float | None = None) -> PriorityCounts:
        """Flushes every source's priority streams; returns their counts summed. Every source is
        flushed before the first source's error is raised."""
        counts = PriorityCounts(lost=self._unrouted)
        first: ReplayError | None = None
        for source in self.sources.values():
            try:
                source.flush_priorities(timeout)
            except ReplayError as exc:
                first = first or exc
            counts += source.priority_counts()
        if first is not None:
            raise first
        return counts

    def _owners(self) -> dict[int, str]:
        """Which source each shard id belongs to, as the sources know their shards now.

        Raises:
            ValueError: two sources share a shard id.
        """
        owner: dict[int, str] = {}
        for name, source in self.sources.items():
            for shard_id in _shard_ids(source):
                if shard_id in owner:
                    raise ValueError(
                        f"sources {owner[shard_id]!r} and {name!r} both have shard id {shard_id}: "
                        "give each source's shards distinct ids so keys route"
                    )
                owner[shard_id] = name
        return owner

    def stats(self) -> ReplayStats:
        """The sources' cached counters, summed (no RPC); the mix itself enforces no ratio."""
        parts = [source.stats() for source in self.sources.values()]
        return make_stats(
            "+".join(sorted({part["run"] for part in parts if part["run"]})),
            sum(part["inserts"] for part in parts),
            sum(part["samples"] for part in parts),
            live_shards=sum(part["live_shards"] for part in parts),
            failovers=sum(part["failovers"] for part in parts),
        )

    def close(self) -> None:
        """Stops the sampling threads (the sources stay open: they belong to the caller)."""
        self._pool.shutdown(wait=False)


def _shard_ids(source: ReplayClient | ShardedReplay) -> list[int]:
    if isinstance(source, ReplayClient):
        return [source.info().shard_id]
    return list(source.info().shards)
