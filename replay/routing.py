"""Write routing: which shard a writer's inserts go to, and failing over when it stops answering.

A writer goes to the live shard with the highest rendezvous score of (writer id, shard id): stable
while membership is, and when a shard leaves only its writers move. Hashing can put several
writers on one shard and none on another, so writers that are numbered (actors) go by number
instead: writer i to the i % n-th of the n known shards in id order, which gives every shard a
writer once there are as many writers as shards. Either way a writer whose shard stops answering
re-sends its unacknowledged batches to the next shard in its order, and returns to its own shard
when that one is back.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from replay.accounting import writer_tag
from replay.errors import ReplayUnavailableError
from replay.membership import Membership, ShardHandle
from replay.wire import MAX_RESENT_FROM


def rendezvous_score(writer_id: str, shard_id: int) -> int:
    """The score of `shard_id` for `writer_id`; a writer goes to its highest-scoring live shard."""
    digest = hashlib.blake2b(f"{writer_id}/{shard_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def choose_shard(writer_id: str, shard_ids: Sequence[int]) -> int:
    """The shard among `shard_ids` that `writer_id` writes to."""
    return max(shard_ids, key=lambda shard_id: rendezvous_score(writer_id, shard_id))


def indexed_order(writer_index: int, shard_ids: Sequence[int]) -> list[int]:
    """The order in which writer number `writer_index` tries `shard_ids`: from the
    `writer_index % n`-th smallest id on, wrapping around (its failover order)."""
    ordered = sorted(shard_ids)
    start = writer_index % len(ordered)
    return ordered[start:] + ordered[:start]


class ShardWriter:
    """Streams one writer's batches to its shard, failing over to the next live one.

    Args:
        membership: the shard set to route over.
        writer_id: the id hashed to choose the shard.
        writer_index: the writer's number; given, it chooses the shard instead of the hash.
    """

    def __init__(self, membership: Membership, writer_id: str, writer_index: int | None = None):
        self.writer_id = writer_id
        self.writer_index = writer_index
        self._membership = membership
        self._lock = threading.Lock()
        self._used: dict[int, ShardHandle] = {}  # handles written to (by id()), to flush, dropped ones too
        self.writer_tag = writer_tag(writer_id)
        """What its inserts carry on every shard (per-writer counts in the shards' ledgers)."""
        self._receipts: list[tuple[int, int, int, int]] = []  # of streams given up on, for the next batch

    def _shard(self, deadline: float) -> ShardHandle | None:
        """This writer's live shard. While none is live, looks again with backoff until
        `deadline` (monotonic); None if none came back."""
        delay = 0.05
        while True:
            live = self._membership.live()
            if not live:
                self._membership.refresh()
                live = self._membership.live()
            if live:
                return self._choose(live)
            if time.monotonic() + delay > deadline:
                return None
            time.sleep(delay)
            delay = min(2 * delay, 1.0)

    def _choose(self, live: list[ShardHandle]) -> ShardHandle:
        if self.writer_index is None:
            return max(live, key=lambda s: rendezvous_score(self.writer_id, s.shard_id))
        # Ordered over every known shard, down ones included, so that a shard's brief outage
        # moves only its own writers (to the next shard) rather than renumbering all of them.
        by_id = {s.shard_id: s for s in live}
        known = self._membership.all().keys() | by_id.keys()
        return next(by_id[i] for i in indexed_order(self.writer_index, list(known)) if i in by_id)

    def send(self, batches: list[Mapping[str, np.ndarray]], timeout: float | None) -> None:
        """Inserts `batches` in order; on a shard's failure re-sends what it had not acknowledged.

        Raises:
            ReplayAuthenticationError: no shard was live, and one refuses this client's credentials.
            ReplayUnavailableError: no shard was live within `insert_wait_s`; its `unacknowledged`
                holds every batch not known to be stored, for the caller to count as lost.
        """
        deadline = time.monotonic() + self._membership.config.insert_wait_s
        while batches:
            shard = self._shard(deadline)
            if shard is None:
                refusal = self._membership.refusal()
                if refusal is not None:
                    raise refusal  # not "no live shard": one is there and refuses these credentials
                where = self._membership.where
                self._hand_back_receipts()
                raise ReplayUnavailableError(f"no live replay shard ({where})", unacknowledged=batches)
            with self._lock:
                self._used[id(shard)] = shard
                receipts, self._receipts = self._receipts, []
            sent = 0
            try:
                for batch in batches:  # at most MAX_RESENT_FROM receipts per request: a shard reads no more
                    shard.client.insert(
                        batch, timeout, writer_tag=self.writer_tag, resent_from=receipts[:MAX_RESENT_FROM]
                    )
                    receipts = receipts[MAX_RESENT_FROM:]  # only once the batch is on its way with them
                    sent += 1
                if receipts:  # more than these batches could carry: the next inserts take them
                    with self._lock:
                        self._receipts[:0] = receipts
                return
            except ReplayUnavailableError as exc:
                self._membership.mark_failed(shard, exc)
                self._keep_receipts(shard, exc, receipts)
                batches = exc.unacknowledged + list(batches[sent:])

    def _keep_receipts(self, shard: ShardHandle, exc: ReplayUnavailableError, unsent: list) -> None:
        """The receipts the next batch carries: the stream given up on (its shard may have stored
        some of the batches re-sent now: replay/accounting.py), and those that had not arrived
        anywhere yet (a repeat is harmless: receipts are counted once)."""
        receipts = [*exc.resent_from, *unsent]
        if exc.abandoned is not None:  # first: it must ride the first of its stream's re-sent batches
            receipts.insert(0, (shard.shard_id, *exc.abandoned, 0))
        with self._lock:
            fresh = [tuple(r) for r in dict.fromkeys(tuple(r) for r in receipts) if tuple(r) not in self._receipts]
            self._receipts[:0] = fresh

    def _hand_back_receipts(self) -> None:
        """The batches go back to the caller, who counts them lost: every receipt not delivered
        yet now says so (its stream's unacknowledged batches are among those handed back: none
        of them was acknowledged anywhere, or its receipt would have been delivered with it), so
        that what the first shard stored of them counts as given back, not stored twice."""
        with self._lock:
            self._receipts = [(shard_id, stream, acked, 1) for shard_id, stream, acked, _ in self._receipts]

    def flush(self, timeout: float | None) -> None:
        """Waits until every batch sent is acknowledged, re-sending after failovers."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                used = list(self._used.values())
            resend: list[Mapping[str, np.ndarray]] = []
            for shard in used:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                closed = shard.client.closed
                try:
                    shard.client.flush(remaining)
                except ReplayUnavailableError as exc:
                    self._membership.mark_failed(shard, exc)
                    self._keep_receipts(shard, exc, [])
                    resend.extend(exc.unacknowledged)
                # A shard dropped from the set (it left, or came back elsewhere) had its client
                # closed, which handed its unacknowledged batches back above: nothing more to wait for.
                if closed and self._membership.all().get(shard.shard_id) is not shard:
                    with self._lock:
                        self._used.pop(id(shard), None)
            if not resend:
                return
            self.send(resend, None)
