"""`Table` alone (no server): storage, keys, eviction, stale priority updates, the limiter's wait."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import CARTPOLE_SPEC, make_batch
from replay import keys as keylib
from replay.errors import DeadlineExceededError, InvalidBatchError, RequestCancelledError
from replay.limits import MAX_PRIORITY
from replay.rate_limiter import RateLimiter
from replay.selectors import PrioritizedSelector, UniformSelector
from replay.table import Table


def prioritized_table(capacity: int = 4, shard_id: int = 3) -> Table:
    selector = PrioritizedSelector(capacity, alpha=1.0)  # P(i) = p_i / sum p: easy to check by hand
    return Table(CARTPOLE_SPEC, capacity, selector, RateLimiter(), shard_id=shard_id, seed=0)


def test_insert_stores_whole_items_and_sampling_returns_them_intact():
    table = Table(CARTPOLE_SPEC, 8, UniformSelector(), RateLimiter(), seed=0)
    assert table.insert(make_batch(5)) == 5
    drawn = table.sample(4, num_batches=3)
    ids = drawn.data["action"]
    assert ids.shape == (12,) and set(ids) <= set(range(5))
    np.testing.assert_array_equal(drawn.data["obs"][:, 0], ids.astype(np.float32))
    np.testing.assert_array_equal(drawn.data["next_obs"][:, 3], (ids + 4).astype(np.float32))
    np.testing.assert_allclose(drawn.probabilities, 1 / 5)
    assert (drawn.table_size, drawn.priority_mass, drawn.inserts, drawn.samples) == (5, 5.0, 5, 12)


def test_keys_name_the_shard_the_slot_and_its_generation():
    table = prioritized_table()
    table.insert(make_batch(4))
    drawn = table.sample(16)
    shards, slots, generations = keylib.split_keys(drawn.keys)
    assert set(shards) == {3}
    np.testing.assert_array_equal(slots, drawn.data["action"])  # item i went to slot i
    assert set(generations) == {1}


def test_prioritized_probabilities_are_priority_over_the_total():
    table = prioritized_table()
    table.insert(make_batch(4, priority=[1.0, 2.0, 3.0, 4.0]))
    drawn = table.sample(8, num_batches=4)
    priorities = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(drawn.probabilities, priorities[drawn.data["action"]] / 10.0)
    assert drawn.priority_mass == 10.0


def test_overwriting_evicts_the_oldest_and_bumps_the_slot_generation():
    table = prioritized_table()
    table.insert(make_batch(4))
    table.insert(make_batch(2, start=4))  # items 4 and 5 take slots 0 and 1
    arrays, counters = table.state()
    np.testing.assert_array_equal(arrays["column/action"], [4, 5, 2, 3])
    np.testing.assert_array_equal(arrays["generations"], [2, 2, 1, 1])
    assert (counters["size"], counters["next_slot"], counters["inserts"]) == (4, 2, 6)


def test_a_batch_larger_than_capacity_keeps_its_last_items():
    table = Table(CARTPOLE_SPEC, 4, UniformSelector(), RateLimiter())
    assert table.insert(make_batch(10)) == 10
    arrays, counters = table.state()
    # Ten writes round a ring of four: items 8, 9 sit in slots 0, 1 and items 6, 7 in slots 2, 3.
    np.testing.assert_array_equal(arrays["column/action"], [8, 9, 6, 7])
    assert (counters["size"], counters["next_slot"], counters["inserts"]) == (4, 2, 10)


def test_priority_updates_for_overwritten_slots_are_dropped_and_counted():
    table = prioritized_table()
    table.insert(make_batch(4, priority=[1.0, 2.0, 3.0, 4.0]))
    old = table.sample(10, num_batches=10)
    _, slots, _ = keylib.split_keys(old.keys)
    assert set(slots) == {0, 1, 2, 3}
    table.insert(make_batch(2, start=4))  # new occupants of slots 0, 1 get the max priority, 4

    applied, dropped = table.update_priorities(old.keys, np.full(len(old.keys), 5.0))

    assert applied == int(np.isin(slots, [2, 3]).sum())
    assert dropped == int(np.isin(slots, [0, 1]).sum())
    assert table.info().dropped_priority_updates == dropped
    np.testing.assert_allclose(table.selector.priorities(np.arange(4)), [4.0, 4.0, 5.0, 5.0])
    assert table.info().priority_mass == pytest.approx(18.0)


def test_keys_of_another_shard_are_refused_whole():
    table = prioritized_table(shard_id=3)
    table.insert(make_batch(4))
    foreign = keylib.make_keys(4, np.array([0]), np.array([1]))
    with pytest.raises(InvalidBatchError, match="belongs to shard 4"):
        table.update_priorities(foreign, np.array([9.0]))
    assert table.info().priority_mass == 4.0


def test_a_malformed_batch_changes_nothing():
    table = Table(CARTPOLE_SPEC, 8, UniformSelector(), RateLimiter())
    table.insert(make_batch(3))
    bad = make_batch(2, start=3)
    del bad["reward"]
    with pytest.raises(InvalidBatchError, match="reward"):
        table.insert(bad)
    info = table.info()
    assert (info.size, info.inserts) == (3, 3)


def test_the_limiter_admits_an_insert_in_pieces_and_reports_what_got_in():
    # spi=1, min_size=2, error_buffer=2: diff = inserts - samples must stay <= 4.
    table = Table(CARTPOLE_SPEC, 100, UniformSelector(), RateLimiter(2, 1.0, 2.0))
    with pytest.raises(DeadlineExceededError) as held:
        table.insert(make_batch(10), timeout=0.05)
    assert held.value.inserted == 4
    assert table.info().inserts == 4


def test_sampling_below_min_size_waits_until_its_deadline():
    table = Table(CARTPOLE_SPEC, 100, UniformSelector(), RateLimiter(min_size=5))
    table.insert(make_batch(4))
    with pytest.raises(DeadlineExceededError, match="min_size=5"):
        table.sample(1, timeout=0.05)
    table.insert(make_batch(1, start=4))
    assert table.sample(1, timeout=0.05).table_size == 5


def test_a_cancelled_sample_stops_waiting_and_uncounts_what_it_drew():
    # spi 1, min_size 4, buffer 4: 4 inserts allow 4 samples; a sample of 6 draws 4, then waits.
    table = Table(CARTPOLE_SPEC, 16, UniformSelector(), RateLimiter(4, 1.0, 4.0), seed=0)
    table.insert(make_batch(4))
    cancelled = threading.Event()
    threading.Timer(0.2, cancelled.set).start()  # no wake-up: the wait polls the event
    started = time.monotonic()
    with pytest.raises(RequestCancelledError):
        table.sample(6, cancelled=cancelled, timeout=10)
    assert time.monotonic() - started < 5
    assert table.info().samples == 0  # the 4 drawn before the wait never reached a caller
    assert table.sample(4, timeout=1).samples == 4


def test_priorities_above_the_cap_are_stored_at_the_cap():
    table = prioritized_table()
    table.insert(make_batch(4))
    keys = table.sample(16).keys
    slots = keylib.split_keys(keys)[1]
    table.update_priorities(keys[np.unique(slots, return_index=True)[1]], np.full(len(np.unique(slots)), 1e308))
    assert table.info().priority_mass == pytest.approx(len(np.unique(slots)) * MAX_PRIORITY)


def test_only_delivered_samples_reach_the_never_decreasing_delivered_counter():
    table = Table(CARTPOLE_SPEC, 16, UniformSelector(), RateLimiter(4, 1.0, 4.0), seed=0)
    table.insert(make_batch(4))
    table.sample(4)
    table.settle_samples(4, delivered=False)  # the response never reached its caller
    assert (table.info().samples, table.info().delivered_samples) == (0, 0)
    table.sample(4, timeout=1)  # the budget came back
    table.settle_samples(4, delivered=True)
    assert (table.info().samples, table.info().delivered_samples) == (4, 4)


def test_a_shard_starved_of_inserts_is_still_sampled_and_its_next_writer_stays_inside_the_window():
    """Fewer writers than shards: the learner keeps drawing this shard's share though nothing new
    arrives; the samples past the window are forgiven, so a writer that comes back may run at most
    the window (2 * error_buffer / spi items) ahead, not the whole backlog of draws."""
    limiter = RateLimiter(min_size=1, samples_per_insert=1.0, error_buffer=16, limit_samples=False)
    table = Table(CARTPOLE_SPEC, 1000, UniformSelector(), limiter, seed=0)
    table.insert(make_batch(10))
    for _ in range(50):  # 1,600 draws of 10 items: Reverb's limiter would hold the 27th item
        assert table.sample(32, timeout=0.01).data["action"].shape == (32,)
    info = table.info()
    assert (
        info.samples == 1600 and info.diff == limiter.min_diff
    )  # counted, but only the window's worth held against it
    began = time.monotonic()
    with pytest.raises(DeadlineExceededError) as held:
        table.insert(make_batch(100, start=10), timeout=0.2)
    assert held.value.inserted == 32 and time.monotonic() - began >= 0.2  # 2 * 16 / 1.0, then it waits


def test_a_credit_frees_a_waiting_insert_without_counting_as_a_sample_and_stops_at_the_window():
    """What the sharded sampler's global limiter relies on: a credit is a draw that never happened."""
    limiter = RateLimiter(min_size=1, samples_per_insert=1.0, error_buffer=16, limit_samples=False)
    table = Table(CARTPOLE_SPEC, 1000, UniformSelector(), limiter, seed=0)
    table.insert(make_batch(17))  # diff 17 = max_diff: the next item waits
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (table.insert(make_batch(10, start=17), timeout=5), finished.set()))
    thread.start()
    deadline = time.monotonic() + 5
    while table.info().waiting_inserts == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert table.credit(10) == 10
    assert finished.wait(timeout=5), table.info()
    thread.join()
    info = table.info()
    assert (info.inserts, info.samples, info.delivered_samples, info.credited) == (27, 0, 0, 10)
    assert info.diff == 17.0  # 27 inserts - 10 credited
    assert table.credit(1000) == 32 and table.info().diff == limiter.min_diff  # clipped at min_diff
    assert table.credit(5) == 0
    with pytest.raises(DeadlineExceededError) as held:  # the writer runs at most the window ahead
        table.insert(make_batch(100, start=27), timeout=0.1)
    assert held.value.inserted == 32
