import math

import pytest

from replay.errors import RateLimiterConfigError
from replay.rate_limiter import RateLimiter


def test_min_size_only_blocks_samples_until_enough_inserts():
    limiter = RateLimiter(min_size=10)
    assert limiter.sampleable(5, inserts=9, samples=0) == 0
    assert limiter.sampleable(5, inserts=10, samples=0) == 5
    assert limiter.insertable(1_000_000, inserts=0, samples=0) == 1_000_000


def test_ratio_window_follows_reverb_definition():
    # spi=2, min_size=10, error_buffer=20: diff = 2*inserts - samples kept in [0, 40].
    limiter = RateLimiter(min_size=10, samples_per_insert=2.0, error_buffer=20.0)
    assert (limiter.min_diff, limiter.max_diff) == (0.0, 40.0)
    # Stage 1: the first min_size inserts always pass, whatever the ratio says.
    assert limiter.insertable(10, inserts=0, samples=0) == 10
    # 10 inserted, nothing sampled: diff=20; 10 more items would make it 40 (allowed), 11 -> 42.
    assert limiter.insertable(11, inserts=10, samples=0) == 10
    assert limiter.insertable(5, inserts=20, samples=0) == 0
    # Sampling k items needs diff - k >= min_diff.
    assert limiter.sampleable(100, inserts=20, samples=0) == 40
    assert limiter.sampleable(100, inserts=20, samples=40) == 0
    assert limiter.insertable(100, inserts=20, samples=40) == 20


def test_batches_straddling_min_size_are_admitted_up_to_the_window():
    limiter = RateLimiter(min_size=10, samples_per_insert=1.0, error_buffer=5.0)
    # 10 free inserts, then diff may rise from 10 to max_diff=15: 5 more.
    assert limiter.insertable(100, inserts=0, samples=0) == 15


def test_configurations_that_could_block_forever_are_refused():
    with pytest.raises(RateLimiterConfigError, match="error_buffer"):
        RateLimiter(min_size=1, samples_per_insert=8.0, error_buffer=4.0)
    with pytest.raises(RateLimiterConfigError, match="min_size"):
        RateLimiter(min_size=0)
    with pytest.raises(RateLimiterConfigError, match="exceeds capacity"):
        RateLimiter(min_size=200).check_capacity(100)
    with pytest.raises(RateLimiterConfigError, match="samples_per_insert"):
        RateLimiter(samples_per_insert=math.inf)


def test_default_error_buffer_lets_a_training_batch_through_whole():
    limiter = RateLimiter(min_size=1000, samples_per_insert=8.0)
    assert limiter.max_diff - limiter.min_diff >= 2 * 256


def test_a_limiter_that_paces_only_inserts_never_holds_samples_and_forgives_their_excess():
    """A shard of a sharded run (limit_samples=False): its samplers keep the ratio themselves."""
    limiter = RateLimiter(min_size=1, samples_per_insert=1.0, error_buffer=10, limit_samples=False)
    assert (limiter.min_diff, limiter.max_diff) == (-9.0, 11.0)
    assert limiter.sampleable(5, inserts=0, samples=0) == 0  # min_size still holds
    assert limiter.sampleable(500, inserts=1, samples=0) == 500  # far past the window: not held
    assert limiter.excess(inserts=1, samples=500) == 500 - 1 - 9  # diff -499 is 490 below min_diff
    assert limiter.excess(inserts=1, samples=10) == 0  # diff -9: inside the window
    assert limiter.insertable(100, inserts=1, samples=10) == 20  # max_diff 11 from diff -9: 20 items
    reverb = RateLimiter(min_size=1, samples_per_insert=1.0, error_buffer=10)
    assert reverb.sampleable(500, inserts=1, samples=0) == 10 and reverb.excess(1, 500) == 0


def test_a_credit_counts_as_sampled_down_to_the_windows_lower_edge_and_ignores_min_size():
    """Credits free inserts as draws would, never past min_diff (writers stay within the window)."""
    limiter = RateLimiter(min_size=100, samples_per_insert=2.0, error_buffer=10, limit_samples=False)
    assert (limiter.min_diff, limiter.max_diff) == (190.0, 210.0)
    assert limiter.creditable(5, inserts=105, samples=0) == 5  # diff 210 -> 205: room 20
    assert limiter.creditable(500, inserts=105, samples=0) == 20  # clipped at min_diff
    assert limiter.creditable(5, inserts=105, samples=20) == 0  # diff 190: at the edge already
    assert limiter.creditable(5, inserts=99, samples=0) == 5  # before min_size too: diff 198
    assert limiter.insertable(10, inserts=105, samples=0) == 0 and limiter.insertable(10, 105, 4) == 2
    reverb = RateLimiter(min_size=100, samples_per_insert=2.0, error_buffer=10)
    assert reverb.creditable(500, inserts=105, samples=0) == 20  # the same bound as its samples
    assert RateLimiter(min_size=1).creditable(5, inserts=10, samples=0) == 0  # no ratio: nothing to credit
