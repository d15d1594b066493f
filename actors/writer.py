"""`TransitionWriter`: how an actor's transitions reach replay (Acme's Adder, for qfleet).

The actor hands it transitions and flushes once per chunk; the writer batches them into insert
messages, and accounts for every transition as inserted (acknowledged) or lost, never silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from actors.metrics import ActorMetrics
from replay import ReplayAuthenticationError, ReplayClient, ReplayUnavailableError, ShardedReplay

log = logging.getLogger(__name__)

INSERT_MAX_BYTES = 4 << 20
"""An insert message is sent once it holds this many bytes, even below its item count (Atari: ~75)."""

HELD_BACK_AFTER_S = 2.0
"""An insert or flush that has waited this long is reported to `on_held_back` (then about every
half of this), for as long as it waits."""


def actor_writer_id(run: str, actor_id: int) -> str:
    """The writer id of actor `actor_id`'s inserts, the same for all its processes: the shards'
    ledgers count what each writer stored (`replay.writer_tag` of this), so a killed process's
    transitions are counted though it never reported them."""
    return f"{run}-actor-{actor_id}"


class Writer(Protocol):
    """What an actor hands its transitions to; `EnvActor` takes any."""

    sent: int
    """Transitions handed to replay so far (inserted, lost, or on their way)."""
    inserted: int
    """Transitions replay acknowledged, as of the last `flush`."""
    lost: int
    """Transitions given up on (no replay took them); never dropped silently."""

    def add(self, transitions: dict[str, np.ndarray]) -> None:
        """Takes columnar transitions (a leading item dimension); may send them later."""
        ...

    def flush(self) -> None:
        """Sends what is held and waits until each transition sent is inserted or counted lost."""
        ...

    def close(self) -> None:
        """Flushes what is not accounted for yet and releases the connection."""
        ...


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(batches) == 1:
        return batches[0]
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def _items(batch: dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values())))


class TransitionWriter:
    """Sends transitions to replay in insert messages of exactly `batch_items` (fewer at a flush,
    or once INSERT_MAX_BYTES are buffered), whatever the size of what the actor hands it.

    The writer never retries: below it, `ShardedReplay` moves unacknowledged batches to the next
    live shard and, while none is live, waits for one (its `insert_wait_s`); a plain
    `ReplayClient` retries its shard for `retry_for_s`. What replay still gives back is lost. A
    refusal of the credentials (`ReplayAuthenticationError`, `ReplayTLSError`) is no loss to
    count: it is logged once and raised, as the actor cannot go on with that configuration.

    Args:
        replay: where inserts go; the writer owns it (`close` closes it).
        batch_items: transitions per insert message.
        metrics: the actor's series kept current (inserted, lost, insert wait); None: none.
        name: who writes, in log lines (e.g. "actor 3").
        on_held_back: called with the seconds waited, from a watch thread, while an insert or
            flush has waited HELD_BACK_AFTER_S or more (replay's rate limiter holds it): the
            caller's own thread is blocked in it then. None: no watch thread.
    """

    def __init__(
        self,
        replay: ShardedReplay | ReplayClient,
        *,
        batch_items: int,
        metrics: ActorMetrics | None = None,
        name: str = "writer",
        on_held_back: Callable[[float], None] | None = None,
    ):
        self.replay = replay
        self.batch_items = batch_items
        self.metrics, self.name = metrics, name
        self._waiting_since: float | None = None  # monotonic start of the insert or flush in progress
        self._closed = threading.Event()
        self._watch: threading.Thread | None = None
        if on_held_back is not None:
            self._watch = threading.Thread(
                target=self._watch_waits, args=(on_held_back,), name="writer-wait-watch", daemon=True
            )
            self._watch.start()
        self.sent = 0
        """Transitions handed to replay (each ends up inserted or lost once flushed)."""
        self.inserted = 0
        """Transitions replay acknowledged, as of the last `flush`."""
        self.lost = 0
        """Transitions replay gave back unacknowledged (dropped, counted)."""
        self.refused = False
        """Replay refused this writer's credentials (`ReplayAuthenticationError`, raised on)."""
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = self._buffered_bytes = 0

    def add(self, transitions: dict[str, np.ndarray]) -> None:
        """Buffers transitions; sends messages of exactly batch_items while that many are held
        (the rest stays buffered), then all that is held if it still reaches INSERT_MAX_BYTES."""
        self._buffer.append(transitions)
        self._buffered += _items(transitions)
        self._buffered_bytes += sum(column.nbytes for column in transitions.values())
        if self._buffered >= self.batch_items:
            self._send_batches()
        if self._buffered_bytes >= INSERT_MAX_BYTES:
            self._send_buffered()

    def flush(self) -> None:
        """Sends what is buffered and waits until replay acknowledged every transition sent (or
        they were counted lost)."""
        self._send_buffered()
        self._deliver(self.replay.flush)
        acknowledged = self.sent - self.lost
        if self.metrics is not None:
            self.metrics.transitions_inserted.inc(acknowledged - self.inserted)
        self.inserted = acknowledged

    def close(self) -> None:
        """Flushes what is not accounted for yet, then closes the replay connection."""
        try:
            if self._buffer or self.sent != self.inserted + self.lost:
                self.flush()
        finally:
            self._closed.set()
            self.replay.close()
            if self._watch is not None:
                self._watch.join(timeout=5)

    def _send_buffered(self) -> None:
        if not self._buffer:
            return
        batch = _concat(self._buffer)
        self._buffer, self._buffered, self._buffered_bytes = [], 0, 0
        self._send(batch)

    def _send_batches(self) -> None:
        """Sends messages of batch_items while that many are buffered; keeps the remainder, so a
        message never exceeds batch_items however many transitions one `add` brought."""
        held = _concat(self._buffer)
        size, start = self.batch_items, 0
        while self._buffered - start >= size:
            self._send({name: column[start : start + size] for name, column in held.items()})
            start += size
        rest = {name: column[start:] for name, column in held.items()}
        self._buffer = [rest] if start < self._buffered else []
        self._buffered -= start
        self._buffered_bytes = sum(column.nbytes for column in rest.values()) if self._buffer else 0

    def _send(self, batch: dict[str, np.ndarray]) -> None:
        self.sent += _items(batch)
        self._deliver(lambda: self.replay.insert(batch))

    def _deliver(self, call: Callable[[], None]) -> None:
        """Runs an insert or flush; what replay gives back unacknowledged is counted lost."""
        start = self._waiting_since = time.monotonic()
        try:
            call()
        except ReplayUnavailableError as exc:
            self._count_lost(sum(_items(batch) for batch in exc.unacknowledged), exc)
        except ReplayAuthenticationError as exc:
            # Replay refuses this actor's token or certificate: no wait fixes that, so the actor
            # stops here (its supervisor gives up at once) instead of counting every transition lost.
            if not self.refused:
                log.error(
                    "%s: replay refuses this actor's credentials; its transitions cannot be stored: %s", self.name, exc
                )
            self.refused = True
            raise
        finally:
            self._waiting_since = None
            if self.metrics is not None:
                self.metrics.insert_wait_seconds.inc(time.monotonic() - start)

    def _watch_waits(self, on_held_back: Callable[[float], None]) -> None:
        failed = False
        while not self._closed.wait(HELD_BACK_AFTER_S / 2):
            since = self._waiting_since
            if since is None or (waited := time.monotonic() - since) < HELD_BACK_AFTER_S:
                continue
            try:
                on_held_back(waited)
            except Exception as exc:  # a report that fails must not end the watch
                if not failed:
                    log.warning("%s: could not report its inserts waiting: %s", self.name, exc)
                failed = True

    def _count_lost(self, count: int, error: Exception) -> None:
        self.lost += count
        if self.metrics is not None:
            self.metrics.transitions_lost.inc(count)
        log.error("%s: lost %d transitions, no replay shard took them: %s", self.name, count, error)
