"""`Table`: preallocated columnar storage + a selector + a rate limiter.

Items are written into a ring of `capacity` slots (FIFO eviction: the oldest item is overwritten
first). Every slot carries a generation counter that goes up on each write; keys handed out by
`sample` pack (shard, slot, generation), so a priority update for an overwritten slot is detected
and dropped instead of landing on the new occupant.

One condition variable guards everything; the rate limiter decides, and waiting happens here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from replay import keys as keylib
from replay.errors import DeadlineExceededError, InvalidBatchError, RequestCancelledError, TableClosedError
from replay.rate_limiter import RateLimiter
from replay.selectors import Selector
from replay.spec import PRIORITY_COLUMN, Spec, validate_priorities

CANCEL_POLL_S = 0.25
"""How often a wait given a `cancelled` event re-checks it (seconds)."""


@dataclass(frozen=True)
class SampledItems:
    """Items drawn by `Table.sample`, batch after batch."""

    data: dict[str, np.ndarray]
    keys: np.ndarray
    probabilities: np.ndarray
    table_size: int
    priority_mass: float
    inserts: int
    samples: int


@dataclass(frozen=True)
class TableInfo:
    """A consistent snapshot of a table's counters."""

    size: int
    capacity: int
    inserts: int
    samples: int
    priority_mass: float
    dropped_priority_updates: int
    diff: float
    waiting_inserts: int
    waiting_samples: int
    insert_wait_seconds: float
    sample_wait_seconds: float
    delivered_samples: int
    credited: int
    """Items counted against the rate limiter as if sampled, without a draw (`Table.credit`)."""


class InsertProgress(Protocol):
    """What a table's insert of one batch tells and is told (the shard's insert ledger)."""

    def stored(self) -> int:
        """Items of this batch stored already (leading ones); called under the table's lock."""
        ...

    def record(self, count: int) -> Callable[[], None]:
        """Prepares the record of `count` more items of this batch, before they are written (it
        may raise: then nothing is written); the call returned records them once they are, and
        cannot fail. Both are called under the table's lock."""
        ...


class Table:
    """A replay table of `capacity` items of `spec`.

    Args:
        spec: the columns of every item.
        capacity: slots; the oldest item is evicted beyond it.
        selector: how samples pick slots.
        rate_limiter: when inserts and samples may proceed.
        shard_id: encoded into every key (0..1023).
        seed: seeds the sampling RNG (None: from OS entropy).
    """

    def __init__(
        self,
        spec: Spec,
        capacity: int,
        selector: Selector,
        rate_limiter: RateLimiter,
        shard_id: int = 0,
        seed: int | None = None,
    ):
        if not 1 <= capacity <= keylib.MAX_CAPACITY:
            raise ValueError(f"capacity must be in [1, {keylib.MAX_CAPACITY}], got {capacity}")
        if not 0 <= shard_id < keylib.MAX_SHARDS:
            raise ValueError(f"shard_id must be in [0, {keylib.MAX_SHARDS}), got {shard_id}")
        rate_limiter.check_capacity(capacity)
        self.spec = spec
        self.capacity = capacity
        self.selector = selector
        self.limiter = rate_limiter
        self.shard_id = shard_id
        self._columns = {
            name: np.zeros((capacity, *shape), dtype=dtype) for name, (shape, dtype) in spec.columns.items()
        }
        self._generations = np.zeros(capacity, dtype=np.uint32)
        self._next_slot = 0
        self._size = 0
        self._inserts = 0
        self._samples = 0
        self._forgiven = 0  # samples the limiter no longer counts (`RateLimiter.excess`)
        self._credited = 0  # items the limiter counts as sampled, never drawn (`credit`)
        self._delivered_samples = 0  # settled as delivered: never decreases (a Prometheus counter)
        self._dropped_priority_updates = 0
        self._rng = np.random.default_rng(seed)
        self._cond = threading.Condition()
        self._closed = False
        self._waiting_inserts = 0
        self._waiting_samples = 0
        self._insert_wait_seconds = 0.0
        self._sample_wait_seconds = 0.0

    # -- writes ----------------------------------------------------------------------------------

    def insert(
        self,
        batch: Mapping[str, np.ndarray],
        timeout: float | None = None,
        cancelled: threading.Event | None = None,
        progress: InsertProgress | None = None,
    ) -> int:
        """Validates and inserts a batch; returns the number of items this call wrote.

        The whole batch is validated before anything is written. The rate limiter may admit it in
        pieces; if `timeout` (seconds) passes first, DeadlineExceededError is raised and its
        `inserted` field says how many items made it in. Once `cancelled` is set, a wait ends
        with RequestCancelledError (within `CANCEL_POLL_S`). With `progress`, the items it says
        are stored already are skipped (a re-sent batch), and each piece written is reported to
        it under the table's lock, so that a checkpoint never holds an item it was not told of.

        Raises:
            InvalidBatchError: the batch does not match the spec (nothing inserted).
            DeadlineExceededError: the rate limiter held the batch past `timeout`.
            RequestCancelledError: `cancelled` was set while the batch waited.
        """
        length = self.spec.validate(batch)
        priorities = batch.get(PRIORITY_COLUMN)
        deadline = None if timeout is None else time.monotonic() + timeout
        done = written = 0
        with self._cond:
            while True:
                if progress is not None:  # another call of the same batch may have written some
                    done = min(length, max(done, progress.stored()))
                if done >= length:
                    return written
                admitted = self._wait(
                    lambda wanted=length - done: self.limiter.insertable(wanted, self._inserts, self._paced_samples),
                    deadline,
                    "insert",
                    cancelled,
                )
                if admitted is None:
                    diff = self.limiter.diff(self._inserts, self._paced_samples)
                    raise DeadlineExceededError(
                        f"rate limiter held the insert past its deadline: {done} of {length} items inserted "
                        f"(diff={diff:.1f}, max_diff={self.limiter.max_diff})",
                        inserted=done,
                    )
                if progress is not None:  # the wait let other calls in
                    done = min(length, max(done, progress.stored()))
                    admitted = min(admitted, length - done)
                    if not admitted:
                        continue
                # Recorded as written with nothing that can raise in between: packed first.
                record = None if progress is None else progress.record(admitted)
                self._write(batch, priorities, done, done + admitted)
                if record is not None:
                    record()
                done += admitted
                written += admitted
                self._cond.notify_all()

    def _write(self, batch: Mapping[str, np.ndarray], priorities: np.ndarray | None, start: int, stop: int) -> None:
        count = stop - start
        # Items beyond the last `capacity` of a piece would be evicted at once: skip their copy.
        skip = max(0, count - self.capacity)
        first = (self._next_slot + skip) % self.capacity
        kept = count - skip
        head = min(kept, self.capacity - first)
        src = start + skip
        for name, column in self._columns.items():
            values = batch[name]
            column[first : first + head] = values[src : src + head]
            if head < kept:
                column[: kept - head] = values[src + head : src + kept]
        slots = (first + np.arange(kept)) % self.capacity
        self._generations[slots] += 1
        self.selector.on_insert(slots, None if priorities is None else priorities[src : src + kept])
        self._next_slot = (self._next_slot + count) % self.capacity
        self._size = min(self.capacity, self._size + count)
        self._inserts += count

    # -- reads -----------------------------------------------------------------------------------

    def sample(
        self,
        batch_size: int,
        num_batches: int = 1,
        timeout: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> SampledItems:
        """Draws `num_batches` batches of `batch_size` items (stratified within each batch).

        Raises:
            InvalidBatchError: batch_size or num_batches < 1.
            DeadlineExceededError: min_size or the ratio held the sample past `timeout` seconds.
            RequestCancelledError: `cancelled` was set while the sample waited (nothing counted).
        """
        if batch_size < 1 or num_batches < 1:
            raise InvalidBatchError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
        total = batch_size * num_batches
        deadline = None if timeout is None else time.monotonic() + timeout
        slot_parts, prob_parts, key_parts = [], [], []
        data_parts: dict[str, list[np.ndarray]] = {name: [] for name in self._columns}
        drawn = 0
        with self._cond:
            while drawn < total:
                try:
                    admitted = self._wait(
                        lambda wanted=total - drawn: self.limiter.sampleable(
                            wanted, self._inserts, self._paced_samples
                        ),
                        deadline,
                        "sample",
                        cancelled,
                    )
                except RequestCancelledError:
                    self._unsample(drawn)  # drawn in earlier pieces, never delivered
                    raise
                if admitted is None:
                    self._unsample(drawn)
                    raise DeadlineExceededError(
                        f"sample of {total} items waited past its deadline: size={self._size}, "
                        f"inserts={self._inserts} (min_size={self.limiter.min_size}), "
                        f"diff={self.limiter.diff(self._inserts, self._paced_samples):.1f} (min_diff={self.limiter.min_diff})"
                    )
                try:
                    slots, probabilities = self.selector.sample(admitted, self._size, self._rng, batch_size)
                except ZeroDivisionError as exc:
                    raise InvalidBatchError(str(exc)) from exc
                for name, column in self._columns.items():
                    data_parts[name].append(column.take(slots, axis=0))
                slot_parts.append(slots)
                prob_parts.append(probabilities)
                key_parts.append(keylib.make_keys(self.shard_id, slots, self._generations[slots]))
                self._samples += admitted
                self._forgive()
                drawn += admitted
                self._cond.notify_all()
            size, mass = self._size, self.selector.priority_mass(self._size)
            inserts, samples = self._inserts, self._samples
        data = {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in data_parts.items()}
        return SampledItems(
            data=data,
            keys=np.concatenate(key_parts),
            probabilities=np.concatenate(prob_parts),
            table_size=size,
            priority_mass=mass,
            inserts=inserts,
            samples=samples,
        )

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> tuple[int, int]:
        """Applies new priorities; returns (applied, dropped as stale).

        A key whose slot was overwritten since it was sampled is stale: dropped and counted.

        Raises:
            InvalidBatchError: lengths differ, a priority is negative or not finite, or a key
                belongs to another shard (nothing applied).
        """
        keys = np.asarray(keys, dtype=np.uint64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if keys.ndim != 1:
            raise InvalidBatchError(f"keys must be one-dimensional, got shape {keys.shape}")
        validate_priorities(priorities, keys.shape[0], "priorities")
        shards, slots, generations = keylib.split_keys(keys)
        foreign = shards != self.shard_id
        if np.any(foreign):
            raise InvalidBatchError(
                f"key {int(keys[np.argmax(foreign)])} belongs to shard {int(shards[np.argmax(foreign)])}, "
                f"not this shard ({self.shard_id})"
            )
        if np.any(slots >= self.capacity):
            raise InvalidBatchError(f"key names slot {int(slots.max())} beyond capacity {self.capacity}")
        with self._cond:
            current = (self._generations[slots].astype(np.int64) & keylib.GENERATION_MASK) == generations
            live = current & (generations != 0)
            applied = int(live.sum())
            self.selector.set_priorities(slots[live], priorities[live])
            dropped = len(keys) - applied
            self._dropped_priority_updates += dropped
        return applied, dropped

    def credit(self, items: int) -> int:
        """Counts up to `items` items against the rate limiter as if sampled, without drawing them;
        returns how many were credited.

        A credit frees waiting inserts as a sample would, but is no sample: `samples` and the
        delivered counter do not change. It stops where a sample would be refused
        (`RateLimiter.creditable`: diff stays >= min_diff), so writers run at most the window ahead
        whatever a caller asks for. A table without a ratio credits nothing.
        """
        with self._cond:
            credited = self.limiter.creditable(items, self._inserts, self._paced_samples)
            if credited:
                self._credited += credited
                self._cond.notify_all()
            return credited

    # -- waiting ---------------------------------------------------------------------------------

    def _wait(self, admissible, deadline: float | None, kind: str, cancelled: threading.Event | None) -> int | None:
        """Waits (holding the condition) until `admissible()` > 0; None once `deadline` passes.

        With a `cancelled` event the wait re-checks it every `CANCEL_POLL_S`: whoever sets it
        (gRPC's callback thread) need not take the table lock.
        """
        admitted = admissible()
        if admitted > 0:
            return admitted
        started = time.monotonic()
        if kind == "insert":
            self._waiting_inserts += 1
        else:
            self._waiting_samples += 1
        try:
            while True:
                if self._closed:
                    raise TableClosedError("the replay table is shutting down")
                if cancelled is not None and cancelled.is_set():
                    raise RequestCancelledError(f"the {kind} was cancelled while waiting for the rate limiter")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                wait = remaining if remaining is not None else 1.0
                if cancelled is not None:
                    wait = min(wait, CANCEL_POLL_S)
                self._cond.wait(wait)
                admitted = admissible()
                if admitted > 0:
                    return admitted
        finally:
            waited = time.monotonic() - started
            if kind == "insert":
                self._waiting_inserts -= 1
                self._insert_wait_seconds += waited
            else:
                self._waiting_samples -= 1
                self._sample_wait_seconds += waited

    @property
    def _paced_samples(self) -> int:
        """The samples the rate limiter counts: all of them, less those it forgave, plus credits."""
        return self._samples - self._forgiven + self._credited

    def _forgive(self) -> None:
        """Stops counting samples past the window (a limiter with limit_samples=False; holding the condition)."""
        self._forgiven += self.limiter.excess(self._inserts, self._paced_samples)

    def _unsample(self, count: int) -> None:
        """Un-counts `count` drawn items (holding the condition); other waiting samples re-check."""
        if count:
            self._samples -= count
            self._forgiven = min(self._forgiven, self._samples)
            self._cond.notify_all()

    def settle_samples(self, count: int, delivered: bool) -> None:
        """Settles `count` items of one `sample` call: delivered to their caller, or un-counted.

        Items un-counted return their rate-limiter budget. Only delivered items reach the
        `delivered_samples` counter, so it never decreases.
        """
        with self._cond:
            if delivered:
                self._delivered_samples += count
            else:
                self._unsample(count)

    def close(self) -> None:
        """Releases every waiting call with TableClosedError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- state -----------------------------------------------------------------------------------

    @property
    def inserts(self) -> int:
        """Items inserted so far: a plain read without the lock, at least every insert that returned."""
        return self._inserts

    def info_with(self, read: Callable[[], object]) -> tuple[TableInfo, object]:
        """`info()` and `read()` at one moment: both under the table's lock, which every insert
        holds while it writes its items and their ledger record (`progress`), so a count `read`
        takes of those records matches `inserts` (not one insert more or less)."""
        with self._cond:
            return self.info(), read()

    def info(self) -> TableInfo:
        """Counters and limiter state, read under the lock."""
        with self._cond:
            return TableInfo(
                size=self._size,
                capacity=self.capacity,
                inserts=self._inserts,
                samples=self._samples,
                priority_mass=self.selector.priority_mass(self._size),
                dropped_priority_updates=self._dropped_priority_updates,
                diff=self.limiter.diff(self._inserts, self._paced_samples),
                waiting_inserts=self._waiting_inserts,
                waiting_samples=self._waiting_samples,
                insert_wait_seconds=self._insert_wait_seconds,
                sample_wait_seconds=self._sample_wait_seconds,
                delivered_samples=self._delivered_samples,
                credited=self._credited,
            )

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Copies of the arrays and counters that a checkpoint holds, taken under the lock."""
        with self._cond:
            arrays = {f"column/{name}": column[: self._size].copy() for name, column in self._columns.items()}
            arrays["generations"] = self._generations[: self._size].copy()
            arrays.update(self.selector.state())
            counters = {
                "size": self._size,
                "next_slot": self._next_slot,
                "inserts": self._inserts,
                "samples": self._samples,
                "dropped_priority_updates": self._dropped_priority_updates,
            }
        return arrays, counters

    def restore(self, arrays: Mapping[str, np.ndarray], counters: Mapping[str, int]) -> None:
        """Loads what `state` returned (the caller has checked spec and capacity)."""
        size = int(counters["size"])
        with self._cond:
            for name, column in self._columns.items():
                column[:size] = arrays[f"column/{name}"]
            self._generations[:] = 0
            self._generations[:size] = arrays["generations"]
            self.selector.restore({k: v for k, v in arrays.items() if k.startswith("selector/")})
            self._size = size
            self._next_slot = int(counters["next_slot"])
            self._inserts = int(counters["inserts"])
            self._samples = int(counters["samples"])
            self._forgiven = self._credited = 0
            self._forgive()  # a restored shard's window starts inside its bounds too
            self._delivered_samples = self._samples
            self._dropped_priority_updates = int(counters["dropped_priority_updates"])
            self._cond.notify_all()
