"""One replay shard over real gRPC (in-process server on port 0): what writers and learners rely on."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from conftest import CARTPOLE_SPEC, make_batch, wait_until
from replay import (
    DeadlineExceededError,
    InvalidBatchError,
    RateLimiterConfigError,
    ReplayClient,
    ReplayServer,
    ReplayUnavailableError,
)
from system.local.redis_server import free_port


def test_insert_sample_update_priorities_round_trip(start_server, connect):
    server = start_server(capacity=1000, selector="prioritized", alpha=1.0, seed=1)
    client = connect(server.address)
    client.insert(make_batch(100))
    client.flush()

    info = client.info()
    assert (info.size, info.inserts, info.capacity, info.selector) == (100, 100, 1000, "prioritized")
    assert info.spec == CARTPOLE_SPEC
    assert info.priority_mass == pytest.approx(100.0)  # every new item gets max priority 1.0

    sample = client.sample(32)
    ids = sample.data["action"]
    assert sample.data["obs"].shape == (32, 4) and sample.data["obs"].dtype == np.float32
    # Items come back intact: every column agrees with the item's id.
    np.testing.assert_array_equal(sample.data["obs"][:, 0], ids.astype(np.float32))
    np.testing.assert_array_equal(sample.data["next_obs"][:, 3], (ids + 4).astype(np.float32))
    np.testing.assert_allclose(sample.probabilities, 1 / 100)
    np.testing.assert_allclose(sample.weights, 1.0)

    result = client.update_priorities(sample.keys, np.full(32, 4.0))
    assert (result.applied, result.dropped_stale) == (32, 0)
    distinct = len(np.unique(sample.keys))
    assert client.info().priority_mass == pytest.approx(100 - distinct + 4.0 * distinct)
    client.close()


def test_prioritized_frequencies_match_priority_to_the_alpha(start_server, connect):
    alpha, beta, n = 0.6, 0.4, 20
    server = start_server(capacity=64, selector="prioritized", alpha=alpha, seed=7)
    client = connect(server.address)
    priorities = np.arange(1, n + 1, dtype=np.float64)
    client.insert(make_batch(n, priority=priorities))
    client.flush()

    draws = 0
    counts = np.zeros(n)
    for batch in client.sample_batches(256, 200, beta=beta):
        counts += np.bincount(batch.data["action"], minlength=n)
        draws += 256
        # Importance weights: (N * P)^-beta over the batch maximum.
        expected = (n * batch.probabilities) ** -beta
        np.testing.assert_allclose(batch.weights, expected / expected.max())

    expected_p = priorities**alpha / np.sum(priorities**alpha)
    chi_square = np.sum((counts - draws * expected_p) ** 2 / (draws * expected_p))
    assert chi_square < 43.8, f"chi-square {chi_square:.1f} over 19 dof (p < 0.001 threshold 43.8)"
    np.testing.assert_allclose(batch.probabilities, expected_p[batch.data["action"]])


def test_uniform_selector_draws_every_item_evenly(start_server, connect):
    server = start_server(capacity=100, selector="uniform", seed=3)
    client = connect(server.address)
    client.insert(make_batch(10))
    counts = np.bincount(np.concatenate([s.data["action"] for s in client.sample_batches(100, 100)]), minlength=10)
    chi_square = np.sum((counts - 1000) ** 2 / 1000)
    assert chi_square < 27.9  # 9 dof, p < 0.001


def test_fifo_eviction_and_stale_priority_updates_are_dropped_and_counted(start_server, connect):
    server = start_server(capacity=10, selector="prioritized")
    client = connect(server.address)
    client.insert(make_batch(10))
    old = client.sample(10)
    client.insert(make_batch(4, start=10))  # overwrites the 4 oldest slots
    client.flush()

    held = np.unique(np.concatenate([s.data["action"] for s in client.sample_batches(50, 20)]))
    np.testing.assert_array_equal(held, np.arange(4, 14))

    overwritten = old.data["action"] < 4
    result = client.update_priorities(old.keys, np.full(10, 50.0))
    assert result.dropped_stale == int(overwritten.sum())
    assert result.applied == 10 - result.dropped_stale
    assert client.info().dropped_priority_updates == result.dropped_stale
    # The new occupants of overwritten slots kept their own priority (the max seen so far, 1.0 at
    # insert time): the stale update did not land on them.
    for batch in client.sample_batches(64, 10):
        fresh = batch.data["action"] >= 10
        mass = batch.priority_mass
        np.testing.assert_allclose(batch.probabilities[fresh] * mass, 1.0**0.6)


BAD_BATCHES = {
    "missing column": (lambda b: b.pop("reward"), "'reward'.*missing"),
    "extra column": (lambda b: b.__setitem__("bonus", np.zeros(8, np.float32)), "'bonus'.*not in the spec"),
    "wrong dtype": (lambda b: b.__setitem__("obs", b["obs"].astype(np.float64)), "'obs'.*float64, expected float32"),
    "wrong item shape": (
        lambda b: b.__setitem__("obs", np.zeros((8, 5), np.float32)),
        r"'obs'.*\(5,\), expected \(4,\)",
    ),
    "mismatched lengths": (lambda b: b.__setitem__("action", np.arange(7)), "'action'.*7 items"),
    "nan priority": (lambda b: b.__setitem__("priority", np.array([1.0] * 7 + [np.nan])), "'priority'.*item 7 is nan"),
    "negative priority": (lambda b: b.__setitem__("priority", -np.ones(8)), "'priority'.*item 0 is -1"),
    "infinite priority": (lambda b: b.__setitem__("priority", np.full(8, np.inf)), "'priority'.*inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
def test_bad_batch_is_rejected_whole_and_the_stream_goes_on(start_server, case, connect):
    server = start_server(capacity=100)
    client = connect(server.address)
    client.insert(make_batch(8))
    client.flush()
    before = client.info()

    damage, message = BAD_BATCHES[case]
    bad = make_batch(8, start=100)
    damage(bad)
    client.insert(bad)
    with pytest.raises(InvalidBatchError, match=message):
        client.flush()

    after = client.info()
    assert (after.size, after.inserts, after.priority_mass) == (before.size, before.inserts, before.priority_mass)
    assert after.rejected_batches == before.rejected_batches + 1
    # Same client, same stream: the next good batch goes in.
    client.insert(make_batch(8, start=200))
    client.flush()
    assert client.info().inserts == before.inserts + 8


def test_bad_priority_updates_are_rejected_whole(start_server, connect):
    server = start_server(capacity=100)
    client = connect(server.address)
    client.insert(make_batch(10))
    sample = client.sample(10)
    mass = client.info().priority_mass
    with pytest.raises(InvalidBatchError, match="item 3 is nan"):
        client.update_priorities(sample.keys, np.array([1.0, 2, 3, np.nan, 5, 6, 7, 8, 9, 10]))
    with pytest.raises(InvalidBatchError, match=r"expected \(10,\)"):
        client.update_priorities(sample.keys, np.ones(9))
    assert client.info().priority_mass == mass


def test_rate_limiter_blocks_inserts_until_samples_release_them(start_server, connect):
    # spi=2, min_size=10, error_buffer=20 -> diff = 2*inserts - samples within [0, 40].
    server = start_server(capacity=1000, samples_per_insert=2.0, min_size=10, error_buffer=20.0)
    client = connect(server.address)
    client.insert(make_batch(20))  # 10 free + 10 up to diff=40
    client.flush()
    with pytest.raises(DeadlineExceededError) as raised:
        client.insert(make_batch(5, start=20), timeout=0.3)
        client.flush()
    assert raised.value.inserted == 0
    assert client.info().rate_limiter.diff == 40.0

    writer = connect(server.address)
    done = threading.Event()
    threading.Thread(
        target=lambda: (writer.insert(make_batch(5, start=30)), writer.flush(), done.set()), daemon=True
    ).start()
    assert wait_until(lambda: client.info().rate_limiter.waiting_inserts == 1, timeout=5)
    assert not done.is_set()

    client.sample(10)  # diff 40 -> 30: room for 5 inserts (10 units)
    assert done.wait(5), "the blocked insert was not released by sampling"
    info = client.info()
    assert (info.inserts, info.samples, info.rate_limiter.diff) == (25, 10, 40.0)
    assert info.rate_limiter.insert_wait_seconds > 0
    writer.close()


def test_rate_limiter_blocks_samples_until_inserts_release_them(start_server, connect):
    server = start_server(capacity=1000, samples_per_insert=1.0, min_size=10, error_buffer=5.0)
    client = connect(server.address)
    with pytest.raises(DeadlineExceededError, match="min_size=10"):
        client.sample(1, timeout=0.2)  # below min_size

    client.insert(make_batch(10))
    client.flush()
    # min_diff = spi * min_size - error_buffer = 5: after 10 inserts (diff 10) only 5 samples fit.
    assert len(client.sample(5).keys) == 5
    assert client.info().rate_limiter.diff == 5.0
    with pytest.raises(DeadlineExceededError):
        client.sample(1, timeout=0.2)

    got = []
    reader = threading.Thread(target=lambda: got.append(client.sample(4)), daemon=True)
    reader.start()
    assert wait_until(lambda: client.info().rate_limiter.waiting_samples == 1, timeout=5)
    assert not got
    client.insert(make_batch(4, start=10))
    reader.join(5)
    assert got and got[0].data["action"].shape == (4,)


def test_a_sample_larger_than_the_window_is_served_in_pieces(start_server, connect):
    server = start_server(capacity=1000, samples_per_insert=1.0, min_size=1, error_buffer=4.0)
    client = connect(server.address)
    # 68 items: all admitted once the 64 are drawn (the window lets inserts run 5 ahead), so
    # nothing is left waiting on the limiter when the client closes.
    writer = threading.Thread(target=lambda: [client.insert(make_batch(2, start=i)) for i in range(0, 68, 2)])
    writer.start()
    sample = client.sample(64, timeout=10)
    writer.join()
    client.flush(timeout=10)
    assert sample.data["action"].shape == (64,) and server.table.info().inserts == 68


def test_deadlock_prone_configurations_are_refused_before_serving():
    with pytest.raises(RateLimiterConfigError, match="error_buffer"):
        ReplayServer(CARTPOLE_SPEC, samples_per_insert=32.0, error_buffer=8.0)
    with pytest.raises(ValueError, match="min_size"):
        ReplayServer(CARTPOLE_SPEC, capacity=100, min_size=500)


def test_sixteen_concurrent_writers_lose_nothing(start_server, connect):
    writers, batches, per_batch = 16, 25, 64
    server = start_server(capacity=writers * batches * per_batch, selector="uniform", max_workers=32)

    def write(w: int) -> None:
        client = ReplayClient(server.address, max_in_flight=4)
        for b in range(batches):
            client.insert(make_batch(per_batch, start=(w * batches + b) * per_batch))
        client.flush()
        client.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    total = writers * batches * per_batch
    assert connect(server.address).info().inserts == total
    arrays, counters = server.table.state()
    assert counters["size"] == total
    np.testing.assert_array_equal(np.sort(arrays["column/action"]), np.arange(total))


def test_client_pickles_as_its_address_and_works_after_unpickling(start_server, connect):
    server = start_server()
    client = connect(server.address)
    client.insert(make_batch(3))
    clone = pickle.loads(pickle.dumps(client))
    assert clone.address == server.address
    clone.insert(make_batch(2, start=3))
    clone.flush()
    client.flush()
    assert clone.info().inserts == 5
    clone.close()


def test_client_retries_unavailable_and_resends_unacknowledged_batches(tmp_path, connect):
    port = free_port()
    first = ReplayServer(CARTPOLE_SPEC, port=port, checkpoint_dir=str(tmp_path)).start()
    client = connect(f"127.0.0.1:{port}", retry_for_s=20)
    client.insert(make_batch(10))
    client.flush()
    first.stop(grace=0.1)  # final checkpoint holds the 10 items

    for i in range(6):  # the shard is down: these wait and are sent once it is back
        client.insert(make_batch(5, start=10 + 5 * i))
    second = ReplayServer(CARTPOLE_SPEC, port=port, checkpoint_dir=str(tmp_path)).start()
    try:
        client.flush(timeout=30)
        info = client.info()
        assert (info.inserts, info.size) == (40, 40)
    finally:
        client.close()
        second.stop(grace=0.1, checkpoint=False)


def test_unreachable_shard_names_its_address(connect):
    client = connect(f"127.0.0.1:{free_port()}", retry_for_s=0.5)
    with pytest.raises(ReplayUnavailableError, match="127.0.0.1"):
        client.info()
    client.insert(make_batch(1))
    with pytest.raises(ReplayUnavailableError, match="127.0.0.1"):
        client.flush(timeout=10)
