"""`WeightSubscriber`: an actor's view of the learner's weight store, kept current off the step loop.

A daemon thread checks the announced version (one small GET every `poll_s`) and fetches new
weights; the step loop only calls `take()`, so Redis round trips never stall env stepping. A Redis
outage is logged once and the actor acts with the weights it has; so is a malformed value (a
version that is not a number, a blob that is not weights), which is also counted and skipped until
the next valid publish replaces it.
"""

from __future__ import annotations

import logging
import threading

import torch

from learner import MalformedValues, MalformedWeightsError, WeightStore, WeightStoreError

log = logging.getLogger(__name__)


class WeightSubscriber:
    """Follows the newest published weights of a run.

    Args:
        store: the run's parameter store.
        poll_s: seconds between version checks.
        known_version: the version the caller already has (0: none).
    """

    def __init__(self, store: WeightStore, poll_s: float = 0.05, known_version: int = 0):
        self.store, self.poll_s = store, poll_s
        self._seen = known_version  # newest version fetched (or handed over)
        self.malformed = MalformedValues(log)
        """Malformed values read from the store, skipped (by key; the first of each is logged)."""
        self._pending: tuple[int, dict[str, torch.Tensor]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="weight-subscriber", daemon=True)
        self._thread.start()

    def fetch_now(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Synchronously fetches weights newer than the ones seen (for an actor's first step).

        Raises:
            WeightStoreError: the store is unreachable (a malformed value only gives None).
        """
        fetched = self._fetch()
        if fetched is not None:
            with self._lock:
                self._seen = max(self._seen, fetched[0])
        return fetched

    def take(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The newest weights fetched since the last call, or None (cheap when nothing is new)."""
        if self._pending is None:
            return None
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def _fetch(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        try:
            return self.store.fetch(known_version=self._seen)
        except MalformedWeightsError as exc:
            self.malformed.add(exc.key or "weights", str(exc))
            return None

    def _follow(self) -> None:
        outage = False
        while not self._stop.wait(self.poll_s):
            try:
                fetched = self._fetch()
            except WeightStoreError as exc:
                if not outage:
                    log.warning("weights: %s; acting with the current weights until it is back", exc)
                outage = True
                continue
            if outage:
                log.info("weights: the parameter store is reachable again")
                outage = False
            if fetched is not None and fetched[0] > self._seen:
                with self._lock:
                    self._seen, self._pending = fetched[0], fetched

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.close()
