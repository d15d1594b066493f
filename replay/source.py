"""`ReplaySource`: what a learner and a `Prefetcher` read from a replay.

`ReplayClient` (one shard), `ShardedReplay` (many as one) and `MixedReplay` (fixed-fraction
mixes) implement it; code that only samples and sends priorities back takes a `ReplaySource`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypedDict

import numpy as np

from replay.sample import Sample

if TYPE_CHECKING:  # client.py builds its stats here
    from replay.client import PriorityUpdateResult
    from replay.priority_stream import PriorityCounts


class ReplayStats(TypedDict):
    """Counters a source keeps without a round trip, for metrics and progress lines.

    Keys:
        run: the run (registry namespace) the source reads; "" for a shard named by address.
        inserts: items inserted into the source's tables, as last seen.
        samples: items sampled from the source's tables, as last seen.
        achieved_samples_per_insert: samples / inserts (0 before any insert).
        target_samples_per_insert: the ratio the source itself enforces when sampling; 0: none.
        live_shards: shards the source currently draws from.
        failovers: times a shard was found unavailable and left out.
    """

    run: str
    inserts: int
    samples: int
    achieved_samples_per_insert: float
    target_samples_per_insert: float
    live_shards: int
    failovers: int


class ReplaySource(Protocol):
    """Batches out, priorities back, counters on the side."""

    def sample_batches(
        self, batch_size: int, num_batches: int, *, beta: float | None = None, timeout: float | None = None
    ) -> list[Sample]:
        """Draws `num_batches` batches of `batch_size` items.

        Raises:
            DeadlineExceededError: nothing could be sampled within `timeout` seconds.
        """
        ...

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> PriorityUpdateResult:
        """Sets new priorities of sampled keys; keys of overwritten items are dropped and counted."""
        ...

    def send_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """The same, without waiting: streamed (and coalesced) to the shards; blocks only while
        the stream's window is full. What became of them: `flush_priorities`."""
        ...

    def flush_priorities(self, timeout: float | None = None) -> PriorityCounts:
        """Waits until every sent priority is answered; returns the counts so far."""
        ...

    def stats(self) -> ReplayStats:
        """Cached counters (no RPC)."""
        ...


def make_stats(
    run: str, inserts: int, samples: int, *, target: float = 0.0, live_shards: int = 1, failovers: int = 0
) -> ReplayStats:
    """A `ReplayStats` with the achieved ratio computed from `inserts` and `samples`."""
    return ReplayStats(
        run=run,
        inserts=inserts,
        samples=samples,
        achieved_samples_per_insert=samples / inserts if inserts else 0.0,
        target_samples_per_insert=target,
        live_shards=live_shards,
        failovers=failovers,
    )
