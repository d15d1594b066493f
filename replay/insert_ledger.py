"""A shard's running count of acknowledged inserts, kept where a crash of its process cannot take
it: a 16-byte file in its checkpoint directory, mapped into memory and updated before each insert
is acknowledged. A restarted shard compares it with what its newest checkpoint holds and so knows
exactly how many acknowledged transitions its crash lost (a heartbeat to Redis would miss the last
second's inserts, and Redis may itself be away).

The page cache keeps a MAP_SHARED write when the process is killed (SIGKILL included); only a
crash of the machine can lose the latest writes, and then the checkpoint is gone with it too.
"""

from __future__ import annotations

import mmap
import os
import pathlib
import struct
import threading

from replay.private_files import private_dir

LEDGER_NAME = "acknowledged-inserts"
"""The ledger's file name in the checkpoint directory."""

_LAYOUT = struct.Struct("<QQ")
"""inserts acknowledged (the table's counter), transitions lost to crashes so far."""


class InsertLedger:
    """The acknowledged-inserts count and the loss count of one shard id, in `directory`.

    Args:
        directory: the shard's checkpoint directory (created if missing).
    """

    def __init__(self, directory: pathlib.Path):
        private_dir(directory)  # owner-only, like the checkpoints beside it
        path = directory / LEDGER_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self.found = os.fstat(fd).st_size == _LAYOUT.size
            """Whether an earlier process of this shard id left a ledger."""
            if not self.found:
                os.ftruncate(fd, _LAYOUT.size)
            self._map = mmap.mmap(fd, _LAYOUT.size)
        finally:
            os.close(fd)
        self.previous_inserts, self.previous_lost = _LAYOUT.unpack_from(self._map) if self.found else (0, 0)
        """What the previous process had acknowledged and counted lost (0 for a new ledger)."""
        self._lock = threading.Lock()
        self._inserts = 0
        self._lost = self.previous_lost

    def start(self, restored_inserts: int) -> int:
        """Starts counting from the restored checkpoint's inserts; returns the transitions the
        previous process acknowledged after that checkpoint (lost), now added to `lost_total`."""
        lost = max(0, self.previous_inserts - restored_inserts) if self.found else 0
        with self._lock:
            self._inserts, self._lost = restored_inserts, self.previous_lost + lost
            _LAYOUT.pack_into(self._map, 0, self._inserts, self._lost)
        return lost

    @property
    def lost_total(self) -> int:
        return self._lost

    def acknowledge(self, inserts: int) -> None:
        """Records the table's insert counter before a reply acknowledges the batch."""
        with self._lock:
            if inserts > self._inserts:
                self._inserts = inserts
                _LAYOUT.pack_into(self._map, 0, inserts, self._lost)

    def close(self) -> None:
        with self._lock:
            if not self._map.closed:
                self._map.close()
