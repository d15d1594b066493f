"""The same-host feed: sampled columns written into the learner's shared memory, not the response.

When a learner and a shard run on one host, a sample's bytes need not cross the loopback (with
TLS: encrypted, copied through the kernel, decrypted). The learner creates a region, a file under
/dev/shm with mode 0600 and an unguessable name, cut into slots; its Sample request (authenticated
as every call is) names the region and a free slot, the shard writes the columns there and answers
with only their layout, and the learner copies them out and frees the slot.

    region = FeedRegion(slot_bytes=layout_bytes(spec, 256), slots=4)   # learner side
    writer = RegionWriter()                                              # shard side
    offsets = writer.write(region.name, region.key, offset, size, columns)  # RegionRefusedError if unusable

Who may use it, and how it is kept safe:
- Only a shard whose `host_identity()` (host name and the kernel's boot id) equals the learner's
  is ever sent a region name; a shard on another host never is.
- The shard opens the region itself (no symlinks followed) and writes only into a regular file of
  its own user with mode 0600, one link, all its blocks allocated, at least as large as the slot
  named, and only under /dev/shm with a name of this module's form: nothing else on the host can
  be written through a request.
- The region starts with a random key (`KEY_BYTES`) that the learner sends with each request (inside
  the authenticated, encrypted call); the shard compares it before any write, so a caller holding
  the run's token cannot make the shard write into another learner's region by naming it.
- The learner allocates every page up front (`posix_fallocate`): a full /dev/shm fails there
  (ENOSPC, the feed turns off) instead of faulting (SIGBUS) in the shard's first write.
- The region's bytes are visible to the learner's user only (the same user as the shard's). The
  learner unlinks the file once the shard has used it (each side holds its mapping), or once a
  region it gave up on has no call left in flight, so a learner that dies leaves no file behind;
  the shard drops a mapping unused for `RegionWriter.idle_s` (swept by a timer).
- Anything odd makes the shard answer inline with the reason (`SampleResponse.region_refused`):
  the learner logs the first refusal, counts them all, and carries on with the gRPC path.
"""

from __future__ import annotations

import collections
import hmac
import logging
import math
import mmap
import os
import pathlib
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Mapping

import numpy as np

from replay.codec import little_endian
from replay.errors import RegionRefusedError

log = logging.getLogger(__name__)

REGION_DIR = pathlib.Path("/dev/shm")
"""Where regions live (tmpfs: memory, never disk)."""

NAME_PREFIX = "qfleet-feed-"
_NAME = re.compile(r"qfleet-feed-[0-9a-f]{32}\Z")
ALIGN = 64
"""Each column starts at a multiple of this many bytes from its slot's start (a cache line)."""
KEY_BYTES = 16
"""The random key at the region's start that a request must name (ties the region to its learner)."""
HEADER_BYTES = ALIGN
"""Bytes before the first slot: the key, padded to `ALIGN`."""

FEED_MODES = ("auto", "off")
"""`same_host_feed` settings: "auto" uses the feed with every shard on this host, "off" never."""


def host_identity() -> str:
    """This host as the feed compares it: host name and kernel boot id; "" when unknown.

    Two processes with equal identities share /dev/shm (a container with its own /dev/shm has its
    own host name too, by default). "" never matches: without a boot id nothing is assumed.
    """
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    return f"{socket.gethostname()}/{boot}" if boot else ""


def layout(columns: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[list[int], int]:
    """Offsets of the columns (name -> (shape, dtype), in order) in a slot, and the bytes they take."""
    offsets, end = [], 0
    for shape, dtype in columns.values():
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + math.prod(shape) * np.dtype(dtype).itemsize
    return offsets, end


def slot_bytes_for(item_bytes: int, columns: int, items: int) -> int:
    """A slot that holds `items` items of `item_bytes` bytes over `columns` columns (with alignment)."""
    return items * item_bytes + columns * ALIGN


class FeedRegion:
    """The learner's side: a ring of `slots` slots of `slot_bytes` bytes in a private /dev/shm file,
    after a header holding `key`.

    Slots are taken by `acquire` (None when all are taken: the caller samples inline) and given
    back by `release`; a slot whose request failed in a way that may leave the shard still writing
    is `retire`d instead, never reused. `unlink` removes the file (the mapping stays); `drop`
    unlinks it once no call holds a slot (a region given up on); `close` unlinks and unmaps.

    Raises:
        OSError: /dev/shm is missing or full (ENOSPC: every page is allocated here, up front).
    """

    def __init__(self, slot_bytes: int, slots: int):
        if slot_bytes < 1 or slots < 1:
            raise ValueError(f"slot_bytes={slot_bytes} and slots={slots} must be >= 1")
        self.name = NAME_PREFIX + secrets.token_hex(16)
        self.slot_bytes = -(-slot_bytes // ALIGN) * ALIGN
        self.slots = slots
        self.key = secrets.token_bytes(KEY_BYTES)
        """Sent with each request naming the region: the shard writes only when it matches the header."""
        self._path = REGION_DIR / self.name
        size = HEADER_BYTES + self.slot_bytes * slots
        descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(descriptor, 0o600)  # the umask cannot widen it, but a narrower one would refuse the shard
            os.ftruncate(descriptor, size)
            # Every page now: a sparse file on a full tmpfs would SIGBUS the shard's first write.
            os.posix_fallocate(descriptor, 0, size)
            self._map = mmap.mmap(descriptor, size)
        except BaseException:
            os.close(descriptor)
            self._path.unlink(missing_ok=True)
            raise
        os.close(descriptor)
        self._map[:KEY_BYTES] = self.key
        self._lock = threading.Lock()
        self._free = collections.deque(range(slots))
        self._retired = 0
        self._in_flight = 0
        self._dropped = False
        self._linked = True
        self.closed = False
        self.used = False
        """Set once a shard answered a call through the region (it holds a mapping: the file can go)."""

    def acquire(self) -> int | None:
        """A free slot's index, or None when every slot is taken or retired (or the region dropped)."""
        with self._lock:
            if not self._free or self.closed or self._dropped:
                return None
            self._in_flight += 1
            return self._free.popleft()

    def release(self, slot: int) -> None:
        """Gives `slot` back to the ring."""
        with self._lock:
            self._free.append(slot)
            self._in_flight -= 1
        self._unlink_if_idle()

    def retire(self, slot: int) -> None:
        """Takes `slot` out of the ring for good (a shard may still be writing into it)."""
        with self._lock:
            self._retired += 1
            self._in_flight -= 1
        self._unlink_if_idle()

    def drop(self) -> None:
        """No new calls will use the region: its file goes once no call holds a slot (a call still
        in flight may be the one that makes the shard map it, so it stays linked until then)."""
        with self._lock:
            self._dropped = True
        self._unlink_if_idle()

    def _unlink_if_idle(self) -> None:
        with self._lock:
            idle = self._dropped and self._in_flight == 0
            unmap = idle and self.closed
        if idle:
            self.unlink()
        if unmap:
            self._unmap()

    @property
    def exhausted(self) -> bool:
        """True when every slot is retired: the caller should make a new region."""
        return self._retired >= self.slots

    def offset(self, slot: int) -> int:
        """Bytes from the region's start to `slot` (after the header)."""
        return HEADER_BYTES + slot * self.slot_bytes

    def view(self, slot: int) -> memoryview:
        """The bytes of `slot` (valid until `close`)."""
        start = self.offset(slot)
        return memoryview(self._map)[start : start + self.slot_bytes]

    def unlink(self) -> None:
        """Removes the file; the learner's mapping and the shard's stay (the bytes live until both go)."""
        with self._lock:
            linked, self._linked = self._linked, False
        if linked:
            self._path.unlink(missing_ok=True)

    def close(self) -> None:
        """Unlinks the file and unmaps the region: at once, or when the last call holding a slot
        gives it back (a client closed from another thread must not pull a slot from under a
        call reading it), or with the last view of it."""
        self.unlink()
        with self._lock:
            self.closed = self._dropped = True
            unmap = self._in_flight == 0
        if unmap:
            self._unmap()

    def _unmap(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view still exported: the mapping goes with the last one
            pass

    def __del__(self):
        if getattr(self, "_linked", False):
            self._path.unlink(missing_ok=True)


class _Mapped:
    """A region the shard has open: its mapping, size and when it was last written."""

    __slots__ = ("map", "size", "used")

    def __init__(self, region_map: mmap.mmap, size: int):
        self.map, self.size, self.used = region_map, size, time.monotonic()


def _holds_key(region: _Mapped, key: bytes) -> bool:
    """Whether the region's header holds `key` (compared in constant time)."""
    return len(key) == KEY_BYTES and hmac.compare_digest(bytes(region.map[:KEY_BYTES]), key)


class RegionWriter:
    """The shard's side: opens regions named by requests (after the checks), keeps them mapped,
    and writes sampled columns into their slots.

    Args:
        max_regions: mappings kept at once (the least recently written goes first).
        idle_s: a mapping not written for this long is dropped (a learner that went away).
    """

    def __init__(self, max_regions: int = 16, idle_s: float = 300.0):
        self.max_regions = max_regions
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._regions: collections.OrderedDict[str, _Mapped] = collections.OrderedDict()
        self._uid = os.geteuid()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def write(self, name: str, key: bytes, offset: int, size: int, columns: Mapping[str, np.ndarray]) -> list[int]:
        """Writes `columns` into the slot [offset, offset + size) of region `name`, whose header
        must hold `key`.

        Returns:
            Each column's offset from the slot's start, in the order of `columns`.

        Raises:
            RegionRefusedError: the name, the file, the key or the slot is not usable (the reason
                names which).
        """
        # Little-endian, as the inline path sends them (the learner reads the wire's dtype).
        columns = {column: little_endian(np.asarray(value)) for column, value in columns.items()}
        offsets, needed = layout({column: (value.shape, value.dtype) for column, value in columns.items()})
        if needed > size:
            raise RegionRefusedError(f"the slot holds {size} bytes, the sample takes {needed}")
        region = self._open(name, key)
        # Compared on every write, before it: the header is the learner's, a mapping is shared.
        if not _holds_key(region, key):
            raise RegionRefusedError(f"region {name}: the request's key does not match the region's")
        if offset < HEADER_BYTES or offset + size > region.size:
            raise RegionRefusedError(
                f"the slot [{offset}, {offset + size}) is outside the region's slots [{HEADER_BYTES}, {region.size})"
            )
        for start, column in zip(offsets, columns.values(), strict=True):
            column = np.ascontiguousarray(column)
            target = np.frombuffer(region.map, dtype=column.dtype, count=column.size, offset=offset + start)
            np.copyto(target.reshape(column.shape), column)
        return offsets

    def _open(self, name: str, key: bytes) -> _Mapped:
        now = time.monotonic()
        # Under the lock, mapping included (microseconds): a second call naming the same new
        # region waits for the first's mapping instead of opening the file again, which the
        # learner may have unlinked as soon as the first call's answer came back.
        with self._lock:
            self._sweep(now)
            region = self._regions.get(name)
            if region is not None:
                region.used = now
                self._regions.move_to_end(name)
                return region
            region = self._map(name)
            if not _holds_key(region, key):  # never kept: a wrong key must not pin another run's pages
                region.map.close()
                raise RegionRefusedError(f"region {name}: the request's key does not match the region's")
            self._regions[name] = region
            while len(self._regions) > self.max_regions:
                self._regions.popitem(last=False)
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep_periodically, name="replay-regions", daemon=True)
                self._sweeper.start()
        return region

    def _sweep(self, now: float) -> None:
        """Drops mappings unused for `idle_s` (under the lock)."""
        for stale in [key for key, r in self._regions.items() if now - r.used > self.idle_s]:
            del self._regions[stale]  # unmapped when the last write into it ends

    @property
    def mapped(self) -> int:
        """Regions mapped now."""
        with self._lock:
            return len(self._regions)

    def sweep(self) -> int:
        """Drops mappings unused for `idle_s`; returns how many stay mapped."""
        with self._lock:
            self._sweep(time.monotonic())
            return len(self._regions)

    def _sweep_periodically(self) -> None:
        # Without it a mapping outlives the last learner that writes (tmpfs pages stay pinned).
        while not self._stop.wait(max(0.05, self.idle_s / 4)):
            self.sweep()

    def _map(self, name: str) -> _Mapped:
        if not _NAME.match(name):
            raise RegionRefusedError(f"{name[:80]!r} is not a feed region's name")
        try:
            # No links followed; O_NONBLOCK: a FIFO planted under the name cannot hold the call.
            descriptor = os.open(REGION_DIR / name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise RegionRefusedError(f"region {name} cannot be opened: {exc.strerror}") from None
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise RegionRefusedError(f"region {name} is not a regular file")
            if info.st_uid != self._uid:
                raise RegionRefusedError(f"region {name} belongs to uid {info.st_uid}, not the shard's {self._uid}")
            if stat.S_IMODE(info.st_mode) != 0o600:
                raise RegionRefusedError(f"region {name} has mode {oct(stat.S_IMODE(info.st_mode))}, not 0o600")
            if info.st_nlink != 1:
                raise RegionRefusedError(f"region {name} has {info.st_nlink} links, not 1")
            if info.st_size <= HEADER_BYTES:
                raise RegionRefusedError(f"region {name} holds no slot ({info.st_size} bytes)")
            if info.st_blocks * 512 < info.st_size:  # a sparse file: a write could SIGBUS on a full tmpfs
                raise RegionRefusedError(
                    f"region {name} is not allocated ({info.st_blocks * 512} of {info.st_size} bytes)"
                )
            try:
                return _Mapped(mmap.mmap(descriptor, info.st_size), info.st_size)
            except (OSError, ValueError, OverflowError) as exc:
                raise RegionRefusedError(f"region {name} cannot be mapped: {exc}") from None
        finally:
            os.close(descriptor)

    def close(self) -> None:
        """Drops every mapping and stops the sweeping timer."""
        self._stop.set()
        with self._lock:
            self._regions.clear()
            sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.join()


class FeedCounts:
    """What a client's same-host feed did: samples through the region, inline, and refusals."""

    __slots__ = ("in_region", "inline", "refused", "regions", "retired")

    def __init__(self):
        self.in_region = 0
        """Sample calls answered through the region."""
        self.inline = 0
        """Sample calls answered inline while the feed was on (no free slot, first call, refusals)."""
        self.refused = 0
        """Calls whose region the shard refused (each logged at debug level, the first as a warning)."""
        self.regions = 0
        """Regions created."""
        self.retired = 0
        """Slots retired: calls naming one that failed while the shard may have been writing into it."""


class SameHostFeed:
    """A `ReplayClient`'s side of the feed: when to name a region, and the region's slots.

    The first call of a client goes inline and tells the slot size (bytes per item of the
    response); later calls take a slot, a call larger than the slots makes a new region (slots
    for the next power of two of items). A refusal
    retires the region (a restarted shard cannot open an unlinked one) and the next call makes a
    new one; after `MAX_REFUSALS` refusals in a row the feed stays off for this client.

    Args:
        slots: concurrent calls served through the region (more go inline).
    """

    MAX_REFUSALS = 3

    def __init__(self, address: str, slots: int = 4):
        self.address = address
        self.slots = slots
        self.counts = FeedCounts()
        self._lock = threading.Lock()
        self._region: FeedRegion | None = None
        self._item_bytes = 0  # per item, all columns; 0 until a first inline answer
        self._columns = 0
        self._refusals = 0
        self._off_reason = ""
        self._local_host = host_identity()

    def usable_with(self, shard_host: str) -> bool:
        """Whether a shard announcing `shard_host` shares this host (and the feed is not off)."""
        return bool(shard_host) and shard_host == self._local_host and not self._off_reason

    def take(self, items: int) -> tuple[FeedRegion, int] | None:
        """A region and a free slot for a call of `items` items; None: go inline."""
        with self._lock:
            if self._off_reason or not self._item_bytes:
                return None
            needed = slot_bytes_for(self._item_bytes, self._columns, items)
            region = self._region
            if region is None or region.exhausted or region.slot_bytes < needed:
                if region is not None:  # unlinked and unmapped when the calls using it are done with it
                    region.drop()
                # Slots for the next power of two of items: a shard's share of a sharded draw
                # varies from call to call, and each growth is a new region.
                room = slot_bytes_for(self._item_bytes, self._columns, 1 << (items - 1).bit_length())
                try:
                    region = self._region = FeedRegion(room, self.slots)
                except OSError as exc:
                    self._turn_off(f"no shared-memory region could be made: {exc}")
                    return None
                self.counts.regions += 1
            slot = region.acquire()
        return None if slot is None else (region, slot)

    def learn(self, sample_data: Mapping[str, np.ndarray], items: int) -> None:
        """Sizes slots from an inline answer's columns (`items` items)."""
        if items < 1 or not sample_data:
            return
        with self._lock:
            self._item_bytes = max(self._item_bytes, -(-sum(c.nbytes for c in sample_data.values()) // items))
            self._columns = max(self._columns, len(sample_data))

    def answered(self, region: FeedRegion, slot: int, used: bool, refused: str) -> None:
        """After a call's answer was read (and the slot copied out): the slot goes back."""
        region.release(slot)
        with self._lock:
            if used:
                self.counts.in_region += 1
                self._refusals = 0
                region.used = True
                region.unlink()  # both sides hold their mappings: nothing left behind if the learner dies
                return
            self.counts.inline += 1
            if not refused:  # an older shard that ignores the region
                self._turn_off("the shard does not know the same-host feed")
                return
            self.counts.refused += 1
            self._refusals += 1
            first = self.counts.refused == 1
            if self._region is region:  # unlinked and unmapped when the calls using it are done with it
                self._region = None
            region.drop()
            if self._refusals >= self.MAX_REFUSALS:
                self._turn_off(f"{self._refusals} refusals in a row, the last: {refused}")
                return
        (log.warning if first else log.debug)(
            "same-host feed from %s: the shard answered inline (%s); a new region is tried", self.address, refused
        )

    def failed(self, region: FeedRegion, slot: int) -> None:
        """After a call failed: its slot is retired (the shard may still be writing into it).

        A region no shard has used yet is given up (unlinked once no call holds a slot): a
        learner that dies after a failed first call leaves no file behind.
        """
        with self._lock:
            self.counts.retired += 1
            if not region.used:
                if self._region is region:
                    self._region = None
                region.drop()
        region.retire(slot)

    def went_inline(self) -> None:
        """Counts a call made inline while the feed is on (first call, no free slot)."""
        with self._lock:
            self.counts.inline += 1

    def _turn_off(self, reason: str) -> None:
        self._off_reason = reason
        log.warning("same-host feed from %s is off for this client: %s", self.address, reason)

    def close(self) -> None:
        """Unlinks and unmaps the region."""
        with self._lock:
            region, self._region = self._region, None
        if region is not None:
            region.close()
