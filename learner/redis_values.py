"""Reading back the plain strings qfleet writes into Redis hashes and streams, defensively.

Anyone who can write to a run's Redis (a typo'd `SET`, a foreign writer) can leave a value that
does not parse; readers skip it, count it in `MalformedValues` and go on, never dying on it.
"""

from __future__ import annotations

import logging
import threading


def parse_number(text: bytes | str) -> int | float | str:
    """An int if `text` reads as one, else a float if it reads as one, else the text itself.

    Redis hands values back as bytes (bytes that are not UTF-8 come back with replacement
    characters); status hashes and the episode stream store numbers as text.
    """
    value = text.decode(errors="replace") if isinstance(text, bytes) else text
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class MalformedValues:
    """Counts malformed values a reader skipped, by kind; logs the first of each kind only.

    Args:
        log: gets one warning per kind (a reader polling a bad key would otherwise log every poll).
    """

    def __init__(self, log: logging.Logger):
        self.log = log
        self.counts: dict[str, int] = {}
        """Values skipped so far, by kind (e.g. a key's name)."""
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Values skipped so far, of every kind."""
        with self._lock:
            return sum(self.counts.values())

    def add(self, kind: str, detail: str) -> None:
        """Counts one malformed value of `kind`; `detail` (what was read, where) is logged if it is the first."""
        with self._lock:
            first = kind not in self.counts
            self.counts[kind] = self.counts.get(kind, 0) + 1
        if first:
            self.log.warning("skipped a malformed %s from Redis: %s (more of this kind are only counted)", kind, detail)
