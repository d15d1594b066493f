"""Reconciling what shards stored with what writers were told: `reconcile` over every shard's
`ShardAccounting` (its insert ledger's streams and receipts) gives the items stored twice.

A writer whose shard stops answering re-sends the batches it has no acknowledgement for to another
shard. The first shard may have stored some of them before it died or hung (the reply was lost),
so they are held (or counted lost) twice. The writer knows how many items of the abandoned stream
were acknowledged; the first shard's ledger knows how many it stored from that stream, over all
its processes. The writer hands the first number to the next shard as a receipt; the difference
is what was stored twice:

    acknowledged to writers == present in shards + lost by shards - stored twice
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from replay.insert_ledger import Receipt


def writer_tag(writer_id: str) -> int:
    """The number a writer's inserts carry on every shard (a hash of its name, never 0)."""
    digest = hashlib.blake2b(writer_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & ((1 << 63) - 1)) or 1


@dataclass(frozen=True)
class ShardAccounting:
    """One shard id's insert ledger, over all its processes."""

    shard_id: int
    streams: dict[int, tuple[int, int]] = field(default_factory=dict)
    """stream id -> (writer tag, items stored from that stream)."""
    receipts: list[Receipt] = field(default_factory=list)
    """Streams of other shards that writers gave up on and re-sent from, to this shard."""


@dataclass(frozen=True)
class Reconciled:
    """The outcome of `reconcile`."""

    stored_twice: int
    """Items stored (held or counted lost) by a shard whose writer then re-sent them elsewhere."""
    unresolved: int
    """Receipts naming a stream the named shard's ledger does not hold (yet): its stored-twice
    items are not in `stored_twice`."""
    by_writer: dict[int, int]
    """writer tag -> items stored for that writer, each once (stored twice taken off)."""


def reconcile(shards: Iterable[ShardAccounting]) -> Reconciled:
    """Stored-twice items and per-writer totals from every shard's accounting."""
    shards = list(shards)
    by_id = {shard.shard_id: shard for shard in shards}
    by_writer: dict[int, int] = defaultdict(int)
    for shard in shards:
        for tag, items in shard.streams.values():
            by_writer[tag] += items
    receipts = {(r.shard_id, r.stream_id): r for shard in shards for r in shard.receipts}
    twice = unresolved = 0
    for receipt in receipts.values():
        origin = by_id.get(receipt.shard_id)
        entry = None if origin is None else origin.streams.get(receipt.stream_id)
        if entry is None:
            unresolved += 1
            continue
        tag, items = entry
        extra = max(0, items - receipt.acknowledged)
        twice += extra
        by_writer[tag] -= extra
    return Reconciled(stored_twice=twice, unresolved=unresolved, by_writer=dict(by_writer))
