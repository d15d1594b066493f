"""Reconciling what shards stored with what writers were told: `reconcile` over every shard's
`ShardAccounting` (its insert ledger's streams and receipts) gives the items stored twice.

A writer whose shard stops answering re-sends the batches it has no acknowledgement for to another
shard. The first shard may have stored some of them before it died or hung (the reply was lost),
so they are held (or counted lost) twice. The writer knows how many items of the abandoned stream
were acknowledged; the first shard's ledger knows how many it stored from that stream, over all
its processes. The writer hands the first number to the next shard as a receipt; the difference
is what was stored twice. When no shard takes the re-send in time, the writer hands the batches
back to its caller (who counts them lost) and its receipt says so (`handed_back`): the difference
is then items the caller counted lost that the first shard stored (`given_back`), not stored twice:

    acknowledged to writers == present in shards + lost by shards - stored twice - given back
    lost == lost by callers + lost by shards - given back
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
    tracked: bool = True
    """Whether the shard keeps an insert ledger (a checkpoint directory); False: it counts
    nothing here, and no run total built on it is a fact."""
    untracked_items: int = 0
    """Items of streams beyond the ledger's slots: counted, under no stream (their writer's
    total and stored-twice items miss them)."""
    dropped_receipts: int = 0
    """Receipts the shard refused since its start: naming another writer, or no room left."""


@dataclass(frozen=True)
class Reconciled:
    """The outcome of `reconcile`."""

    stored_twice: int
    """Items stored (held or counted lost) by a shard whose writer then re-sent them elsewhere."""
    given_back: int
    """Items a shard stored of batches its writer then handed back to its caller unacknowledged
    (no shard took the re-send in time): the caller counted them lost, though the shard stored
    them (it holds them, or counted them lost too). Subtract them from the callers' lost count."""
    unresolved: int
    """Receipts naming a stream the named shard's ledger does not hold (yet): its stored-twice
    items are not in `stored_twice`."""
    refused: int
    """Receipts naming a stream of another writer than the one that sent them (a bug, or a
    forgery): ignored, so no writer's count is discounted by another."""
    by_writer: dict[int, int]
    """writer tag -> items stored for that writer, each once (stored twice and given back taken off)."""
    tracked: bool = True
    """Whether every shard keeps a ledger (else the counts above are not facts)."""
    untracked_items: int = 0
    """Items the shards counted beyond their ledgers' stream slots (in no writer's total)."""
    dropped_receipts: int = 0
    """Receipts the shards refused since their starts."""


def reconcile(shards: Iterable[ShardAccounting]) -> Reconciled:
    """Stored-twice and given-back items and per-writer totals from every shard's accounting.

    A stream's receipts may arrive at several shards (a re-send that failed again carries them
    on); they count once, and once handed back, the stream's unacknowledged items were handed
    back (a receipt rides the first re-sent batch: until that is acknowledged, none of the
    stream's re-sent batches is)."""
    shards = list(shards)
    by_id = {shard.shard_id: shard for shard in shards}
    by_writer: dict[int, int] = defaultdict(int)
    for shard in shards:
        for tag, items in shard.streams.values():
            by_writer[tag] += items
    receipts: dict[tuple[int, int], Receipt] = {}
    for shard in shards:
        for receipt in shard.receipts:
            key = (receipt.shard_id, receipt.stream_id)
            if key not in receipts or receipt.handed_back:
                receipts[key] = receipt
    twice = given_back = unresolved = refused = 0
    for receipt in receipts.values():
        origin = by_id.get(receipt.shard_id)
        entry = None if origin is None else origin.streams.get(receipt.stream_id)
        if entry is None:
            unresolved += 1
            continue
        tag, items = entry
        if tag != receipt.writer_tag:
            refused += 1
            continue
        extra = max(0, items - receipt.acknowledged)
        if receipt.handed_back:
            given_back += extra
        else:
            twice += extra
        by_writer[tag] -= extra
    return Reconciled(
        stored_twice=twice,
        given_back=given_back,
        unresolved=unresolved,
        refused=refused,
        by_writer=dict(by_writer),
        tracked=bool(shards) and all(shard.tracked for shard in shards),
        untracked_items=sum(shard.untracked_items for shard in shards),
        dropped_receipts=sum(shard.dropped_receipts for shard in shards),
    )
