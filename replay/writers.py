"""`WriterSequences`: the last batch sequence seen per writer, for de-duplicating re-sent batches.

A client that reconnects re-sends its unacknowledged batches; the shard skips those whose sequence
it has seen. The map is bounded: beyond `max_writers` the least recently seen writer is dropped
(a writer silent that long re-sends nothing, and at worst one of its batches is stored twice).
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class WriterSequences:
    """Last sequence per writer id, for at most `max_writers` writers (least recently seen dropped)."""

    def __init__(self, max_writers: int):
        self.max_writers = max_writers
        self._last: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, writer_id: int, sequence: int) -> bool:
        """True when batch `sequence` of `writer_id` was stored already (a re-send)."""
        with self._lock:
            return sequence <= self._last.get(writer_id, 0)

    def record(self, writer_id: int, sequence: int) -> None:
        """Remembers `sequence` as `writer_id`'s last batch."""
        with self._lock:
            self._last[writer_id] = sequence
            self._last.move_to_end(writer_id)
            if len(self._last) > self.max_writers:
                self._last.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)
