"""Drawing one batch from many shards as if they were one table.

Each batch's per-shard counts are multinomial with probabilities proportional to each shard's
priority mass (its size, for uniform shards), so every item's chance is its share of the *global*
mass: the same distribution as one table holding everything. Probabilities and importance weights
are computed against the global total.
"""

from __future__ import annotations

import time
from concurrent import futures

import numpy as np

from replay.errors import ReplayUnavailableError
from replay.membership import Membership, ShardHandle
from replay.sample import Sample


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenates per-shard parts; a single part is passed through without a copy."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class ShardDrawer:
    """Draws batches from the live shards in parallel.

    Args:
        membership: the shards to draw from (their last seen masses set each one's share).
        pool: runs the per-shard sample calls.
        seed: seeds the per-batch allocation of items to shards.
    """

    def __init__(self, membership: Membership, pool: futures.ThreadPoolExecutor, seed: int | None):
        self._membership = membership
        self._pool = pool
        self._rng = np.random.default_rng(seed)

    def draw(self, batch_size: int, num_batches: int, beta: float, deadline: float | None) -> list[Sample] | None:
        """One parallel draw over the live shards; None if none has items or one failed midway."""
        live = [s for s in self._membership.live() if s.mass > 0]
        if not live:
            return None
        masses = np.array([s.mass for s in live])
        shares = masses / masses.sum()
        counts = self._rng.multinomial(batch_size, shares, size=num_batches)  # [batch, shard]
        per_shard = counts.sum(axis=0)
        jobs = {
            self._pool.submit(self._sample_shard, shard, int(n), deadline): k
            for k, (shard, n) in enumerate(zip(live, per_shard, strict=True))
            if n > 0
        }
        drawn: dict[int, Sample] = {}
        failed = False
        for job in futures.as_completed(jobs):
            result = job.result()
            if result is None:
                failed = True
            else:
                drawn[jobs[job]] = result
        if failed:
            return None  # a shard went away mid-draw: the caller draws again from the rest
        return _assemble(live, shares, counts, drawn, beta)

    def _sample_shard(self, shard: ShardHandle, count: int, deadline: float | None) -> Sample | None:
        remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
        try:
            sample = shard.client.sample(count, timeout=remaining)
        except ReplayUnavailableError as exc:
            self._membership.mark_failed(shard, exc)
            return None
        shard.absorb(sample.table_size, sample.priority_mass, sample.inserts, sample.samples, boot_id=sample.boot_id)
        return sample


def _assemble(
    live: list[ShardHandle], shares: np.ndarray, counts: np.ndarray, drawn: dict[int, Sample], beta: float
) -> list[Sample]:
    """Cuts each shard's items into the batches `counts` [batch, shard] allots them to."""
    total_size = sum(s.size for s in live)
    offsets = np.zeros_like(counts)
    offsets[1:] = np.cumsum(counts[:-1], axis=0)
    mass = sum(s.mass for s in live)
    inserts, samples = sum(s.inserts for s in live), sum(s.samples for s in live)
    batches = []
    for batch in range(counts.shape[0]):
        parts = [
            (drawn[k], slice(offsets[batch, k], offsets[batch, k] + counts[batch, k]), k)
            for k in range(len(live))
            if counts[batch, k] > 0
        ]
        data = {name: _join([part.data[name][rows] for part, rows, _ in parts]) for name in parts[0][0].data}
        keys = _join([part.keys[rows] for part, rows, _ in parts])
        # An item's global probability: its shard's share of the mass times its in-shard chance.
        probabilities = np.concatenate([shares[k] * part.probabilities[rows] for part, rows, k in parts])
        weights = (total_size * probabilities) ** (-beta)
        weights /= weights.max()
        batches.append(
            Sample(
                data=data,
                keys=keys,
                probabilities=probabilities,
                weights=weights,
                table_size=total_size,
                priority_mass=mass,
                inserts=inserts,
                samples=samples,
            )
        )
    return batches
