"""`GlobalSampleLimiter`: one samples-per-insert ratio over all the shards of a run.

With `samples_per_insert` set, sampling waits until the sum of all shards' samples stays within
Reverb's window of spi * (sum of all shards' inserts), whatever the speed of each writer. The
counters ride along on every sample response, so the accounting costs no extra round trip until
sampling must wait. Shards can still run their own limiter as a backstop that makes writers wait.

The two limits can wait on each other when the shards' windows are out of balance: after a shard
restored an older checkpoint, or when the last writer left writes to one shard while another sits
below its share, that shard reaches its own max_diff before the sum reaches the global window, and
then nothing moves unless the learner samples. So a sample is also admitted when a freshly read
live shard reports inserts waiting on its own limiter: the learner runs ahead of the global ratio
only by what frees those writers, bounded by the shards' own windows.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from replay.errors import DeadlineExceededError, InvalidBatchError
from replay.membership import Membership
from replay.rate_limiter import RateLimiter


class GlobalSampleLimiter:
    """Admits samples against the shards' summed counters.

    Args:
        limiter: the window arithmetic (min_size, samples_per_insert, error_buffer).
        membership: the shards whose counters are summed (and re-read while waiting).
    """

    def __init__(self, limiter: RateLimiter, membership: Membership):
        self.limiter = limiter
        self._membership = membership
        self._lock = threading.Lock()
        self._reserved = 0  # samples admitted whose draw has not returned yet

    @contextlib.contextmanager
    def admitted(self, wanted: int, deadline: float | None) -> Iterator[None]:
        """Blocks until `wanted` samples are admitted and holds them reserved while the body draws.

        The reservation makes check-and-draw atomic across this client's threads (a prefetcher
        samples from several); it is returned once the draw's counters are in.

        Raises:
            InvalidBatchError: `wanted` exceeds the limiter's window (it could never pass).
            DeadlineExceededError: the limiter, or an empty replay, held the sample past `deadline`.
        """
        self._reserve(wanted, deadline)
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= wanted

    def _reserve(self, wanted: int, deadline: float | None) -> None:
        limiter = self.limiter
        window = limiter.max_diff - limiter.min_diff
        if wanted > window:
            raise InvalidBatchError(
                f"a sample of {wanted} items exceeds the global rate limiter's window of {window:.0f}: "
                "raise error_buffer or sample fewer items per call"
            )
        delay = 0.001
        fresh = False  # whether the shards' counters were read during this wait
        while True:
            with self._lock:
                inserts, samples = self._membership.totals()
                samples += self._reserved
                live = self._membership.live()
                admitted = limiter.sampleable(wanted, inserts, samples) >= wanted or (
                    fresh and inserts >= limiter.min_size and any(s.writers_waiting for s in live)
                )
                if admitted and any(s.mass > 0 for s in live):
                    self._reserved += wanted
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceededError(
                    f"global limiter held a sample of {wanted} past its deadline: inserts={inserts} "
                    f"(min_size={limiter.min_size}), samples={samples}, "
                    f"samples_per_insert={limiter.samples_per_insert}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            self._membership.read_infos()
            fresh = True
