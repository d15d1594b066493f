"""The rate limiter: Reverb's `SampleToInsertRatio` / `MinSize` semantics, for batches.

With `samples_per_insert` (spi) set, the limiter keeps

    diff = inserts * spi - samples

inside [min_diff, max_diff], where min_diff = spi * min_size - error_buffer and
max_diff = spi * min_size + error_buffer (Reverb's definition, `reverb/rate_limiters.py`):

- while fewer than `min_size` items were inserted, inserts always proceed and samples wait;
- an insert of k items proceeds while diff + k * spi <= max_diff, else it waits for samples;
- a sample of k items proceeds while diff - k >= min_diff, else it waits for inserts.

Without spi only `min_size` applies. A batch is admitted in as many pieces as the window allows,
so a batch larger than the window still goes through instead of waiting forever. The limiter is
pure arithmetic; the table owns the lock and the waiting.

A shard of a sharded run paces only its inserts (`limit_samples=False`): the samplers' global
limiter already holds the learner to the ratio over all shards, and a shard that gets few inserts
(fewer actors than shards, a scale-down) would otherwise block every draw that includes it while
the learner draws its share of the shard's items. Samples past the window are then *forgiven*
(`excess`): the table stops counting them against the shard, so a shard starved of inserts does
not build up an allowance that would let its next writer run further ahead than the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from replay.errors import RateLimiterConfigError


@dataclass
class RateLimiter:
    """Admission arithmetic for inserts and samples.

    Args:
        min_size: inserted items needed before any sample; >= 1.
        samples_per_insert: target ratio of sampled to inserted items, or None for no ratio.
        error_buffer: half-width of the allowed window around the ratio, in sampled items; None
            picks max(1024, 2 * max(1, spi), 0.1 * spi * min_size), roomy enough that batches of a
            few hundred items pass whole (Acme sizes it as a fraction of spi * min_size too).
        limit_samples: samples wait for the ratio (Reverb's); False: only inserts do, and samples
            past the window are forgiven (`excess`), for shards whose samplers pace themselves.
    """

    min_size: int = 1
    samples_per_insert: float | None = None
    error_buffer: float | None = None
    limit_samples: bool = True

    def __post_init__(self) -> None:
        if self.min_size < 1:
            raise RateLimiterConfigError(f"min_size must be >= 1, got {self.min_size}")
        spi = self.samples_per_insert
        if spi is None:
            self.min_diff, self.max_diff = -math.inf, math.inf
            return
        if not spi > 0 or not math.isfinite(spi):
            raise RateLimiterConfigError(f"samples_per_insert must be a finite number > 0, got {spi}")
        if self.error_buffer is None:
            self.error_buffer = max(1024.0, 2.0 * max(1.0, spi), 0.1 * spi * self.min_size)
        if self.error_buffer < max(1.0, spi):
            raise RateLimiterConfigError(
                f"error_buffer={self.error_buffer} with samples_per_insert={spi} could block both "
                f"inserts and samples forever: it must be >= max(1, samples_per_insert) = {max(1.0, spi)}"
            )
        offset = spi * self.min_size
        self.min_diff = offset - self.error_buffer
        self.max_diff = offset + self.error_buffer

    def check_capacity(self, capacity: int) -> None:
        """Refuses a table too small to ever reach `min_size` (samples would wait forever)."""
        if self.min_size > capacity:
            raise RateLimiterConfigError(
                f"min_size={self.min_size} exceeds capacity={capacity}: the table can never hold enough items to sample"
            )

    def diff(self, inserts: int, samples: int) -> float:
        """inserts * spi - samples (0 without a ratio)."""
        return inserts * self.samples_per_insert - samples if self.samples_per_insert else 0.0

    def insertable(self, wanted: int, inserts: int, samples: int) -> int:
        """How many of `wanted` items may be inserted now (0 = wait)."""
        spi = self.samples_per_insert
        if spi is None:
            return wanted
        free_before_min = max(0, self.min_size - inserts)
        if free_before_min >= wanted:
            return wanted
        room = self.max_diff - self.diff(inserts + free_before_min, samples)
        by_ratio = int(math.floor(room / spi + 1e-9)) if room >= 0 else 0
        return min(wanted, free_before_min + max(0, by_ratio))

    def sampleable(self, wanted: int, inserts: int, samples: int) -> int:
        """How many of `wanted` items may be sampled now (0 = wait)."""
        if inserts < self.min_size:
            return 0
        if self.samples_per_insert is None or not self.limit_samples:
            return wanted
        room = self.diff(inserts, samples) - self.min_diff
        return min(wanted, max(0, int(math.floor(room + 1e-9))))

    def excess(self, inserts: int, samples: int) -> int:
        """Samples beyond the window's lower edge (0 inside it): what a table with
        `limit_samples=False` forgives, so that its diff never falls below min_diff."""
        if self.samples_per_insert is None or self.limit_samples or inserts < self.min_size:
            return 0
        return max(0, math.ceil(self.min_diff - self.diff(inserts, samples) - 1e-9))

    def creditable(self, wanted: int, inserts: int, samples: int) -> int:
        """How many of `wanted` items may be credited now: counted as sampled without being drawn,
        as far as diff stays >= min_diff (0 without a ratio). min_size does not apply: a credit
        only frees inserts."""
        if self.samples_per_insert is None:
            return 0
        room = self.diff(inserts, samples) - self.min_diff
        return min(wanted, max(0, int(math.floor(room + 1e-9))))
