"""How many calls a shard serves at once, and how long an Insert stream may stay open.

gRPC's sync server gives every stream and every blocked call a thread of one pool. `Slots` caps
Insert streams and Samples apiece, refusing at once beyond the cap, so the pool always keeps
threads for Info and priority updates. `StreamWatch` cancels Insert streams that sent nothing for
`idle_s` (a client reopens on its next insert), tells a stream older than `max_age_s` to end, and
cancels one that has not ended `idle_s` after that (stuck in a reply its client never reads).
"""

from __future__ import annotations

import threading
import time

import grpc


class Slot:
    """One admitted call; `release` frees it (idempotent: gRPC's callback and the handler may both)."""

    def __init__(self, slots: Slots):
        self._slots = slots
        self._released = False

    def release(self) -> None:
        with self._slots._lock:
            if not self._released:
                self._released = True
                self._slots._held -= 1


class Slots:
    """At most `limit` calls at once; a caller beyond it is refused, never queued."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    def acquire(self, context: grpc.ServicerContext) -> Slot | None:
        """A slot released when the call ends, or None when all `limit` are taken."""
        with self._lock:
            if self._held >= self.limit:
                return None
            self._held += 1
        slot = Slot(self)
        if not context.add_callback(slot.release):  # the call has ended already
            slot.release()
            return None
        return slot


class _Stream:
    """An open Insert stream: when it opened and since when it waits for its client."""

    def __init__(self, context: grpc.ServicerContext):
        self.context = context
        self.opened = time.monotonic()
        self.idle_since: float | None = self.opened


class StreamWatch:
    """Cancels Insert streams idle for `idle_s` or older than `max_age_s + idle_s`.

    `expired` tells a stream older than `max_age_s` to end after its current batch; the grace of
    `idle_s` beyond that covers a batch still waiting for the rate limiter. A stream the watch
    cancelled is forgotten at once, so the calls below ignore a handle they no longer know.
    """

    def __init__(self, idle_s: float, max_age_s: float):
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay-stream-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def opened(self, context: grpc.ServicerContext) -> int:
        """Starts watching a stream; returns its handle."""
        handle = id(context)
        with self._lock:
            self._streams[handle] = _Stream(context)
        return handle

    def busy(self, handle: int) -> None:
        """A request arrived: the stream is not idle until `waiting`."""
        with self._lock:
            stream = self._streams.get(handle)
            if stream is not None:
                stream.idle_since = None

    def waiting(self, handle: int) -> None:
        """The stream answered and waits for its client's next request."""
        with self._lock:
            stream = self._streams.get(handle)
            if stream is not None:
                stream.idle_since = time.monotonic()

    def expired(self, handle: int) -> bool:
        """True once the stream is older than `max_age_s` (or was cancelled by the watch)."""
        with self._lock:
            stream = self._streams.get(handle)
            return stream is None or time.monotonic() - stream.opened > self.max_age_s

    def closed(self, handle: int) -> None:
        with self._lock:
            self._streams.pop(handle, None)

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.idle_s / 4)):
            now = time.monotonic()
            with self._lock:
                overdue = [
                    handle
                    for handle, stream in self._streams.items()
                    if (stream.idle_since is not None and now - stream.idle_since > self.idle_s)
                    or now - stream.opened > self.max_age_s + self.idle_s
                ]
                contexts = [self._streams.pop(handle).context for handle in overdue]
            for context in contexts:
                context.cancel()
