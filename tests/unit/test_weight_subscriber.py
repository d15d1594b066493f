"""`WeightSubscriber`'s thread outlives whatever a fetch raises: an unexpected error (a bug in a
store) is logged and counted like a failed fetch, and the next publish still arrives."""

from __future__ import annotations

import threading

from actors import WeightSubscriber
from learner import HostAheadError, SupersededReadError


class FlakyStore:
    """A store (the two calls a subscriber makes) whose first fetches raise what `errors` holds."""

    def __init__(self, errors: list[BaseException]):
        self.errors, self.calls, self.closed = list(errors), 0, False
        self.lock = threading.Lock()

    def fetch(self, known_version: int = 0):
        with self.lock:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
        return (known_version + 1, {}) if known_version < 1 else None

    def close(self) -> None:
        self.closed = True


def test_an_unexpected_error_in_a_fetch_is_counted_and_the_thread_reads_on(caplog):
    store = FlakyStore([RuntimeError("a bug"), MemoryError()])
    subscriber = WeightSubscriber(store, poll_s=0.001, retry_s=0.001)
    try:
        subscriber._follow_in_background()
        fetched = subscriber.take(timeout=60)
        assert fetched is not None and fetched[0] == 1  # the thread survived both
        assert subscriber.fetch_failures == 2
        assert "unexpected error in a fetch" in caplog.text and "a bug" in caplog.text
    finally:
        subscriber.close()
    assert store.closed


def test_a_read_overtaken_by_publishes_is_read_again_at_the_next_poll_not_after_an_outages_wait(caplog):
    """With publishes every few ms, the weights host may hold a newer version than the manifest
    read, twice in a row: a race, not an outage. The subscriber reads again at its next poll (an
    outage's retry_s here is an hour: the test would time out), counts it and logs nothing."""
    overtaken = [HostAheadError("host holds v2, newer than the v1 read", "h"), SupersededReadError("read twice")]
    store = FlakyStore(overtaken)
    subscriber = WeightSubscriber(store, poll_s=0.001, retry_s=3600.0)
    try:
        subscriber._follow_in_background()
        fetched = subscriber.take(timeout=60)
        assert fetched is not None and fetched[0] == 1
        assert subscriber.overtaken == 2 and subscriber.fetch_failures == 0
        assert "acting with the current weights" not in caplog.text
    finally:
        subscriber.close()
