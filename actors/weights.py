"""`WeightSubscriber`: an actor's view of the learner's weight store, kept current off the step loop.

A daemon thread checks the announced version (one small GET every `poll_s`) and fetches new
weights (from Redis or Ray's object store, wherever the learner put them); the step loop only calls
`take()`, so fetches never stall env stepping. The thread starts after the actor's first,
synchronous `fetch_now()` (or its first `take()`), so the weights are not downloaded twice at the
start. A failed fetch (Redis down, the weights host or the learner that owns the payload gone, a
host holding less than announced, an object that is not the announced publish, a pull that timed
out, a Redis read overtaken by newer publishes twice) is logged once per outage, counted in `fetch_failures` and retried every `retry_s`, and the actor acts
with the weights it has meanwhile; a malformed value (a version that is not a number, a payload
that is not weights) is counted and skipped until the next valid publish replaces it. Versions
handed out never go down. An unexpected error in a fetch (a bug) is logged and counted like a
failure: it never ends the thread.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from learner import (
    HostAheadError,
    MalformedValues,
    MalformedWeightsError,
    SupersededReadError,
    WeightsHostError,
    WeightStoreError,
)

if TYPE_CHECKING:
    from learner import SharedWeights, WeightStore

log = logging.getLogger(__name__)


class WeightSubscriber:
    """Follows the newest published weights of a run.

    Args:
        store: the run's parameter store.
        poll_s: seconds between version checks.
        known_version: the version the caller already has (0: none).
        retry_s: seconds between tries while fetches fail.
    """

    def __init__(self, store: WeightStore, poll_s: float = 0.05, known_version: int = 0, retry_s: float = 1.0):
        self.store, self.poll_s, self.retry_s = store, poll_s, retry_s
        self.fetch_failures = 0
        """Fetches that failed (store unreachable, weights host or payload gone, pull timed out)."""
        self.overtaken = 0
        """Fetches the learner's publishes overtook (`HostAheadError`, `SupersededReadError`): a
        race on a busy machine, not an outage; read again at the next poll."""
        self._failing = False  # in an outage: logged at its start, retried every retry_s
        self._seen = known_version  # newest version fetched (or handed over); only grows
        self.malformed = MalformedValues(log)
        """Malformed values read from the store, skipped (by key; the first of each is logged)."""
        self._pending: tuple[int, SharedWeights] | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def fetch_now(self) -> tuple[int, SharedWeights] | None:
        """Synchronously fetches weights newer than the ones seen (for an actor's first step), then
        follows the store in the background.

        Raises:
            WeightStoreError: Redis is unreachable. A malformed value, an unreachable object
                store (`WeightsHostError`) or reads overtaken by publishes (`SupersededReadError`)
                give None (counted, logged, retried in the background).
        """
        fetched = None
        try:
            fetched = self._claim(self._fetch())
        except (HostAheadError, SupersededReadError):
            self.overtaken += 1  # newer weights exist: the background thread reads them at its next poll
        except WeightsHostError as exc:
            self._failed(exc)
        finally:
            # Only now: a thread started before the fetched version was recorded as seen would
            # download the same weights again (it did, under load).
            self._follow_in_background()
        return fetched

    def _claim(self, fetched: tuple[int, SharedWeights] | None) -> tuple[int, SharedWeights] | None:
        """Records `fetched` as seen and returns it, or None when it is not newer than the weights
        already seen (the thread, or a later fetch_now, had it or newer)."""
        if fetched is None:
            return None
        with self._lock:
            if fetched[0] <= self._seen:
                return None
            self._seen = fetched[0]
            if self._pending is not None and self._pending[0] <= fetched[0]:
                self._pending = None
        return fetched

    @property
    def pending_version(self) -> int | None:
        """The version fetched in the background and not yet taken (None: nothing new)."""
        pending = self._pending
        return None if pending is None else pending[0]

    def take(self, timeout: float = 0.0) -> tuple[int, SharedWeights] | None:
        """The newest weights fetched since the last call, or None (cheap when nothing is new).

        Args:
            timeout: seconds to wait for new weights when none are pending (0: do not wait).
        """
        self._follow_in_background()
        if self._pending is None and timeout <= 0:
            return None
        with self._arrived:
            if timeout > 0:
                self._arrived.wait_for(lambda: self._pending is not None, timeout)
            pending, self._pending = self._pending, None
        return pending

    def _follow_in_background(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="weight-subscriber", daemon=True)
            self._thread.start()

    def _fetch(self) -> tuple[int, SharedWeights] | None:
        with self._lock:
            seen = self._seen
        try:
            return self.store.fetch(known_version=seen)
        except MalformedWeightsError as exc:
            self.malformed.add(exc.key or "weights", str(exc))
            return None

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.fetch_failures += 1
            first = not self._failing
            self._failing = True
        if first:
            log.warning("weights: %s; acting with the current weights until it is back", exc)

    def _follow(self) -> None:
        while not self._stop.wait(self.retry_s if self._failing else self.poll_s):
            try:
                fetched = self._fetch()
            except (HostAheadError, SupersededReadError):
                # Publishes overtook the read (frequent publishes, a busy machine): newer weights
                # exist, so read again at the next poll, not after an outage's retry_s.
                self.overtaken += 1
                continue
            except WeightStoreError as exc:
                self._failed(exc)
                continue
            except Exception as exc:  # a bug: logged (its traceback once per outage) and counted, the thread goes on
                if not self._failing:
                    log.exception("weights: unexpected error in a fetch")
                self._failed(exc)
                continue
            if self._failing:
                log.info("weights: the parameter store is reachable again")
                self._failing = False
            if fetched is None:
                continue
            with self._arrived:
                if fetched[0] > self._seen:
                    self._seen, self._pending = fetched[0], fetched
                    self._arrived.notify_all()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()
