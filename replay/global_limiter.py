"""`GlobalSampleLimiter`: one samples-per-insert ratio over all the shards of a run.

With `samples_per_insert` set, sampling waits until the sum of all shards' samples stays within
Reverb's window of spi * (sum of all shards' inserts), whatever the speed of each writer. The
counters ride along on every sample response, so the accounting costs no extra round trip until
sampling must wait. The learner's samples never leave that window: the achieved ratio is the
target, within the window, however the writers are spread over the shards.

The sums are the run's, not the live shards' (`Membership.totals`): a shard that crashes and comes
back empty, or from an older checkpoint, still counts the inserts it acknowledged and lost (its
Info's lost_transitions) and the samples its earlier process served. So a lost shard moves the
window by neither: forgetting those samples would let the learner draw them again at once (a burst
of updates beyond the ratio), and forgetting those inserts would close the window by spi of each.
The actors did make those env steps, and the learner did learn from the samples.

Shards also run their own limiter, which holds only their writers (`limit_samples=False`). Its
window sees only the draws that land on that shard, by mass, not by who writes there: with one
writer on shard A and a full, frozen shard B, half the draws go to B, so A's window gets half of
what it needs to free its writer, the writer waits, and the global window then waits for inserts
that cannot come. So while the global window makes a sample wait, every live shard whose freshly
read Info shows writers waiting is *credited* (`ReplayClient.credit`): items counted against its
own window as if drawn, which are not samples anywhere (not in its `samples`, not in the global
sums). They stand in for the draws that went to shards without writers. The sample itself keeps
waiting for the inserts that the credit frees.

Why this cannot deadlock: sampling waits only on the global window, which opens with inserts (a
restarted shard's too: from its first Info on, which the waiting sample's fresh reads take, each of
its new inserts adds one to the sum, whatever it lost). A writer waits only on its shard's window (before min_size nothing waits), i.e. diff + spi > max_diff
there, so diff - min_diff > 2 * error_buffer - spi >= spi (a limiter's error_buffer is >= spi):
each credit (>= spi items) lowers that diff by at least spi or down to min_diff, which frees an
item of the waiting insert at once or after a few credits (the shard admits batches in pieces).
So whenever the global window waits and some writer waits, fresh reads credit its shard until
inserts move; when no writer waits, inserts are only slow, and the sample waits for them as
Reverb's would. This covers the cases where the windows get out of balance: a shard restored an
older checkpoint (its diff restarts anywhere, even above max_diff, and credits lower it as draws
would), the last writer moved to another shard (that shard's writer is credited; the shard it
left blocks nothing, its excess draws are forgiven), fewer writers than shards.

Why it stays bounded: a shard grants a credit only down to its window's lower edge (the same bound
as a sample), so its writers run at most its window ahead; and credits are asked for only while
the learner waits on the global window, each of one sample's size.
"""

from __future__ import annotations

import contextlib
import math
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
        fresh = False  # whether the shards' counters were read since this wait last credited
        while True:
            with self._lock:
                inserts, samples = self._membership.totals()
                samples += self._reserved
                live = self._membership.live()
                by_ratio = limiter.sampleable(wanted, inserts, samples) >= wanted
                if by_ratio and any(s.mass > 0 for s in live):
                    self._reserved += wanted
                    return
            waiting = [s for s in live if s.writers_waiting]
            if fresh and not by_ratio and waiting:
                self._membership.credit(waiting, self._credit_size(wanted))
                fresh, delay = False, 0.001  # the freed inserts come within milliseconds
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

    def _credit_size(self, wanted: int) -> int:
        """What one credit asks of a shard: this sample's worth of its window (enough inserts for
        the sample to pass), and at least one insert's (spi items)."""
        return max(wanted, math.ceil(self.limiter.samples_per_insert or 1.0))
