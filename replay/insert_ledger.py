"""A shard's record of what it stored, kept where a crash of its process cannot take it: a file in
its checkpoint directory, mapped into memory and updated under the table's lock as each piece of a
batch is written, before any reply acknowledges it. A restarted shard reads it to know:

- exactly how many transitions its crash lost (everything recorded minus what the restored
  checkpoint holds: the record and the table move under one lock, so a checkpoint never holds an
  item the record lacks);
- for each insert stream (a client's writer id), the last batch sequence stored and how much of
  it, so a batch re-sent after a reconnect is never stored twice, even by a restarted process;
- how many items each stream had stored in all, and which abandoned streams other shards were
  told about (receipts): a batch a writer re-sends to another shard after giving up on this one
  may have been stored here too, and `reconcile` (replay/accounting.py) works out exactly how
  many items were, or were handed back to the writer's caller (counted lost by it) while stored.

The page cache keeps a MAP_SHARED write when the process is killed (SIGKILL included); only a
crash of the machine can lose the latest writes, and then the checkpoint is gone with it too.
Every record is written in one of two copies, alternately, each with a version and a check word:
a kill in the middle of a write leaves the other copy, one write older, which is what the shard
had acknowledged (the piece being written had not been).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import pathlib
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from replay.errors import LedgerError, LedgerInUseError
from replay.keys import MAX_SHARDS
from replay.private_files import private_dir

log = logging.getLogger(__name__)

LEDGER_NAME = "acknowledged-inserts"
"""The ledger's file name in the checkpoint directory."""

STREAM_SLOTS = 2048
"""Insert streams tracked one by one; later ones share slot 0 (counted; the shard de-duplicates
their re-sent batches in memory instead, so not across its restarts: `tracks`)."""
RECEIPT_SLOTS = 1024
"""Receipts of abandoned streams kept (a writer gives up on a shard only when it fails)."""

_MAGIC = b"QFLEDGR3"
_OLD_LAYOUT = struct.Struct("<QQ")  # the first ledger: inserts acknowledged, transitions lost
_HEADER = struct.Struct("<QQQ")  # version, lost_total, check
_SLOT = struct.Struct("<QQQQQQQ")  # version, stream_id, writer_tag, items, last_sequence, last_done, check
_RECEIPT = struct.Struct("<QQQQQ")  # origin shard + 1 | handed back << 32, stream, acknowledged, writer tag, check
_SEED = 0x5145_4C45_0000_0000
_BODIES = {count: struct.Struct(f"<{count}Q") for count in range(1, 7)}
_CHECK = struct.Struct("<Q")

ALL = 1 << 62
"""`stored(...)` of a batch the stream had moved past: every item of it is stored."""


def _check(*values: int) -> int:
    """A check word over a record's values: CRC-32 of their bytes, plus a constant so that an
    all-zero record (never written) fails it. Fields are written in order and the check last, so
    a torn write pairs new leading fields with an old check and fails it too."""
    return zlib.crc32(_BODIES[len(values)].pack(*values)) + _SEED


@dataclass
class _Stream:
    slot: int
    version: int
    stream_id: int
    writer_tag: int
    items: int
    last_sequence: int
    last_done: int


@dataclass(frozen=True)
class Receipt:
    """A writer gave up on stream `stream_id` of shard `shard_id` after `acknowledged` items of it
    were acknowledged, and re-sent the rest elsewhere (or, `handed_back`, gave the rest back to its
    caller unacknowledged: no shard took them in time, and the caller counted them lost)."""

    shard_id: int
    stream_id: int
    acknowledged: int
    handed_back: bool = False
    writer_tag: int = 0
    """The tag of the writer that sent the receipt (the shard records it; `reconcile` uses a
    receipt only for a stream of that same writer, so no writer can discount another's items)."""


class InsertLedger:
    """The stored-items record of one shard id, in `directory`.

    Args:
        directory: the shard's checkpoint directory (created if missing).
        stream_slots, receipt_slots: capacities (tests use small ones).

    Raises:
        LedgerError: the file there is not a ledger of this layout (`open_ledger` sets it aside).
        LedgerInUseError: another live process holds it.
    """

    def __init__(self, directory: pathlib.Path, stream_slots: int = STREAM_SLOTS, receipt_slots: int = RECEIPT_SLOTS):
        private_dir(directory)  # owner-only, like the checkpoints beside it
        self._slots, self._receipt_slots = stream_slots, receipt_slots
        self._slots_at = len(_MAGIC) + 2 * _HEADER.size
        self._receipts_at = self._slots_at + 2 * stream_slots * _SLOT.size
        size = self._receipts_at + receipt_slots * _RECEIPT.size
        self.path = path = directory / LEDGER_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _hold(fd, path)
            found_size = os.fstat(fd).st_size
            old = b""
            if found_size == _OLD_LAYOUT.size:
                old = os.pread(fd, _OLD_LAYOUT.size, 0)
            elif found_size not in (0, size):
                raise LedgerError(
                    f"{path}: {found_size} bytes, not an insert ledger of this layout ({size} bytes)",
                    path=str(path),
                    found_size=found_size,
                    expected_size=size,
                )
            self.found = found_size > 0
            """Whether an earlier process of this shard id left a ledger."""
            if found_size != size:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # open while this process writes the ledger: its lock says so
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._receipts: list[Receipt] = []
        self._receipt_set: set[Receipt] = set()
        self.dropped_receipts = 0
        """Receipts refused since start: no room left, or naming another writer (see `receive`)."""
        self._header_version = 0
        self._next_slot: int | None = None  # found on the first new stream
        self._full_logged = False
        self.previous_lost = 0
        """What the previous processes had counted lost (0 for a new ledger)."""
        if old:
            self._convert(*_OLD_LAYOUT.unpack(old))
        elif self.found and self._map[: len(_MAGIC)] == _MAGIC:
            self._load()
        else:
            self._map[: len(_MAGIC)] = _MAGIC
        if 0 not in self._streams:
            self._streams[0] = _Stream(0, 0, 0, 0, 0, 0, 0)
        self.recorded_at_start = sum(stream.items for stream in self._streams.values())
        """Items the previous processes had stored (lost ones included)."""
        self._lost = self.previous_lost

    # -- start -----------------------------------------------------------------------------------

    @property
    def previous_inserts(self) -> int:
        """The table's insert counter when the previous process stopped (or died)."""
        return self.recorded_at_start - self.previous_lost

    def start(self, restored_inserts: int) -> int:
        """Starts from the restored checkpoint's inserts; returns the items the previous process
        stored after that checkpoint (lost), now added to `lost_total`.

        A checkpoint holding more inserts than the ledger recorded means the two do not belong
        together (a checkpoint copied in from elsewhere, a ledger replaced): nothing is counted
        lost, and a warning says so, since this shard's counts no longer add up."""
        if restored_inserts > self.previous_inserts:
            log.warning(
                "%s records %d inserts but the restored checkpoint holds %d: they do not belong together; "
                "no loss is counted for this restart and this shard's accounting is off by the difference",
                self.path,
                self.previous_inserts,
                restored_inserts,
            )
        lost = max(0, self.previous_inserts - restored_inserts)
        with self._lock:
            self._lost = self.previous_lost + lost
            self._write_header()
        return lost

    @property
    def lost_total(self) -> int:
        return self._lost

    # -- the insert path (under the table's lock) ------------------------------------------------

    def stored(self, stream_id: int, sequence: int) -> int:
        """Items of batch `sequence` of `stream_id` stored already: 0 for a new batch, `ALL` for
        one the stream has moved past, else the part a cut-short insert got in."""
        stream = self._streams.get(stream_id) if sequence else None
        if stream is None or sequence > stream.last_sequence:
            return 0
        return stream.last_done if sequence == stream.last_sequence else ALL

    def wrote(self, stream_id: int, writer_tag: int, sequence: int, count: int) -> None:
        """Records `count` items of batch `sequence` of `stream_id` as written to the table."""
        self.record(stream_id, writer_tag, sequence, count)()

    def record(self, stream_id: int, writer_tag: int, sequence: int, count: int) -> Callable[[], None]:
        """The record of `count` more items of batch `sequence` of `stream_id`, packed: the call
        returned writes it and cannot fail. The table packs it before it writes the items, so
        that nothing can raise between the items and their record (a value that does not fit
        the record raises here, before any item is written).

        Raises:
            struct.error: a value beyond 64 bits (the wire refuses them first).
        """
        stream = self._streams.get(stream_id if sequence else 0)  # the table's lock keeps writers apart
        if stream is None:
            with self._lock:  # from readers of the streams (`stream_items`)
                stream = self._new_stream(stream_id, writer_tag)
        last_sequence, last_done = stream.last_sequence, stream.last_done
        if stream.slot:
            last_done = last_done + count if sequence == last_sequence else count
            last_sequence = sequence
        items, version = stream.items + count, stream.version + 1
        body = _BODIES[6].pack(version, stream.stream_id, stream.writer_tag, items, last_sequence, last_done)
        check = _CHECK.pack(zlib.crc32(body) + _SEED)
        offset = self._slots_at + (2 * stream.slot + version % 2) * _SLOT.size

        def commit() -> None:
            with self._lock:
                stream.items, stream.version = items, version
                stream.last_sequence, stream.last_done = last_sequence, last_done
                self._map[offset : offset + 48] = body  # then its check word (`_check`), last
                self._map[offset + 48 : offset + 56] = check

        return commit

    def _new_stream(self, stream_id: int, writer_tag: int) -> _Stream:
        # After every slot used so far (a slot whose first write was torn stays unused: no gap
        # is filled, so no stream overwrites another's record).
        slot = max(stream.slot for stream in self._streams.values()) + 1 if self._next_slot is None else self._next_slot
        if slot >= self._slots:  # full: counted together (the shard de-duplicates them in memory)
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "%s: all %d insert stream slots are used; later streams are counted together and their "
                    "re-sent batches de-duplicated in memory only (not across a restart of this shard)",
                    self.path,
                    self._slots - 1,
                )
            return self._streams[0]
        self._next_slot = slot + 1
        stream = _Stream(slot, 0, stream_id, writer_tag, 0, 0, 0)
        self._streams[stream_id] = stream
        return stream

    # -- receipts --------------------------------------------------------------------------------

    def receive(self, receipts: Iterable[Receipt], writer_tag: int) -> int:
        """Keeps receipts of streams that the writer tagged `writer_tag` gave up on (each once);
        returns how many were refused: one naming another writer's tag or none, of a shard id no
        key can hold, or beyond the room left (all counted in `dropped_receipts`)."""
        refused = 0
        with self._lock:
            for receipt in receipts:
                if receipt in self._receipt_set:
                    continue
                if (
                    not writer_tag
                    or receipt.writer_tag != writer_tag
                    or not 0 <= receipt.shard_id < MAX_SHARDS
                    or len(self._receipts) >= self._receipt_slots
                ):
                    refused += 1
                    continue
                values = (
                    receipt.shard_id + 1 | receipt.handed_back << 32,
                    receipt.stream_id,
                    receipt.acknowledged,
                    receipt.writer_tag,
                )
                offset = self._receipts_at + len(self._receipts) * _RECEIPT.size
                _RECEIPT.pack_into(self._map, offset, *values, _check(*values))
                self._receipts.append(receipt)
                self._receipt_set.add(receipt)
            self.dropped_receipts += refused
        return refused

    def count_unread(self, receipts: int) -> None:
        """Receipts a request carried past `wire.MAX_RESENT_FROM`: not read, counted as dropped."""
        with self._lock:
            self.dropped_receipts += receipts

    def receipts(self) -> list[Receipt]:
        with self._lock:
            return list(self._receipts)

    def tracks(self, stream_id: int) -> bool:
        """Whether `stream_id` has a slot of its own (its batches are de-duplicated by the ledger,
        across restarts too); a stream not seen yet gets one on its first write if any is left."""
        return stream_id != 0 and stream_id in self._streams

    @property
    def untracked_items(self) -> int:
        """Items counted without a stream slot (over every process of this shard id)."""
        return self._streams[0].items

    def stream_items(self) -> dict[int, tuple[int, int]]:
        """stream id -> (writer tag, items stored from it), over every process of this shard id."""
        with self._lock:
            return {s.stream_id: (s.writer_tag, s.items) for s in self._streams.values() if s.slot}

    def close(self) -> None:
        """Unmaps the file and lets another process of this shard id open it."""
        with self._lock:
            if not self._map.closed:
                self._map.close()
            if self._fd >= 0:
                os.close(self._fd)  # releases the lock
                self._fd = -1

    # -- the file --------------------------------------------------------------------------------

    def _write_header(self) -> None:
        self._header_version += 1
        version = self._header_version
        offset = len(_MAGIC) + (version % 2) * _HEADER.size
        _HEADER.pack_into(self._map, offset, version, self._lost, _check(version, self._lost))

    def _load(self) -> None:
        best = _newest(_HEADER, self._map, len(_MAGIC), 2)
        if best is not None:
            self._header_version, self.previous_lost = best[0], best[1]
        for slot in range(self._slots):
            values = _newest(_SLOT, self._map, self._slots_at + 2 * slot * _SLOT.size, 2)
            if values is None:
                continue
            version, stream_id, tag, items, last_sequence, last_done = values[:6]
            self._streams[stream_id if slot else 0] = _Stream(
                slot, version, stream_id, tag, items, last_sequence, last_done
            )
        for index in range(self._receipt_slots):
            values = _RECEIPT.unpack_from(self._map, self._receipts_at + index * _RECEIPT.size)
            if values[-1] != _check(*values[:-1]) or not values[0]:
                break
            origin, stream_id, acknowledged, tag = values[:4]
            receipt = Receipt((origin & 0xFFFF_FFFF) - 1, stream_id, acknowledged, bool(origin >> 32), tag)
            self._receipts.append(receipt)
            self._receipt_set.add(receipt)

    def _convert(self, inserts: int, lost: int) -> None:
        """From the first ledger (two counters): every item it counted goes to slot 0."""
        self._map[: len(_MAGIC)] = _MAGIC
        self.previous_lost = lost
        self._streams[0] = _Stream(0, 0, 0, 0, 0, 0, 0)
        self._lost = lost
        self._write_header()
        if inserts + lost:
            self.wrote(0, 0, 0, inserts + lost)


HOLD_WAIT_S = 10.0
"""How long a new process waits for the ledger's previous holder to be gone (a killed process's
lock goes with it, a moment after the kill) before refusing to start."""


def _hold(fd: int, path: pathlib.Path) -> None:
    """Takes the ledger's exclusive lock: two live processes of one shard id on one checkpoint
    folder would each overwrite the other's records.

    Raises:
        LedgerInUseError: another process held it for `HOLD_WAIT_S`.
    """
    deadline = time.monotonic() + HOLD_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LedgerInUseError(
                    f"{path} is held by another live process (a shard started twice on one checkpoint folder?)",
                    path=str(path),
                ) from None
            time.sleep(0.1)


REFUSED_SUFFIX = ".refused"
"""What a ledger file this shard cannot use is renamed to (kept for a person to look at)."""


def open_ledger(directory: pathlib.Path) -> InsertLedger:
    """The shard's ledger in `directory`; a file there of another layout or size is renamed
    aside (`REFUSED_SUFFIX`) and a new ledger started, with a warning: a shard that refused to
    start over it would be restarted into the same refusal for ever, and what the old file
    counted cannot be read anyway."""
    try:
        return InsertLedger(directory)
    except LedgerError as exc:
        aside = pathlib.Path(exc.path + REFUSED_SUFFIX)
        os.replace(exc.path, aside)
        log.warning(
            "%s; moved to %s: exact accounting restarts; earlier losses unknown (what this shard stored "
            "before and lost to crashes is not counted)",
            exc,
            aside.name,
        )
        return InsertLedger(directory)


def _newest(layout: struct.Struct, buffer, offset: int, copies: int) -> tuple | None:
    """The valid copy with the highest version among `copies` records at `offset` (None: none)."""
    best = None
    for copy in range(copies):
        values = layout.unpack_from(buffer, offset + copy * layout.size)
        if values[0] and values[-1] == _check(*values[:-1]) and (best is None or values[0] > best[0]):
            best = values
    return best
