"""Priority updates on the UpdatePrioritiesStream (replay/priority_stream.py), against real shards:
applied as the unary call applies them, coalesced to the last value per key, stale keys counted,
and a dead or hung shard costing the sender a bounded wait and a count, never a hang."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import make_batch, wait_until
from replay import (
    InvalidBatchError,
    PriorityStreamConfig,
    ReplayClient,
    ReplayUnavailableError,
    ShardedReplay,
)
from replay.priority_stream import latest_per_key

PLAIN = PriorityStreamConfig(coalesce_keys=0)
"""Every send one update on the stream, no coalescing."""


def keys_by_id(client: ReplayClient, n: int) -> np.ndarray:
    """The key of each of the n items (item id = its `action`), from samples of the shard."""
    keys = np.zeros(n, dtype=np.uint64)
    for sample in client.sample_batches(n, 50):
        keys[sample.data["action"]] = sample.keys
    assert np.all(keys), "every item was drawn at least once"
    return keys


@pytest.mark.parametrize("config", [PLAIN, PriorityStreamConfig()], ids=["stream", "coalesced"])
def test_streamed_priorities_shift_what_is_sampled(start_server, connect, config):
    server = start_server(capacity=64, selector="prioritized", alpha=1.0, seed=3)
    client = connect(server.address, priorities=config)
    client.insert(make_batch(40))
    client.flush()
    keys = keys_by_id(client, 40)
    odd = np.arange(40) % 2 == 1
    for part in np.array_split(np.arange(40), 8):  # 8 sends of 5 keys, as a learner sends them
        client.send_priorities(keys[part], np.where(odd[part], 1.0, 0.0))
    counts = client.flush_priorities(timeout=30)
    assert (counts.applied, counts.dropped_stale, counts.lost, counts.rejected) == (40, 0, 0, 0)
    drawn = np.concatenate([s.data["action"] for s in client.sample_batches(64, 8)])
    assert np.all(drawn % 2 == 1)  # priority 0: never drawn
    assert client.info().priority_mass == pytest.approx(20.0)


def test_coalescing_sends_the_last_priority_of_each_key_once(start_server, connect):
    server = start_server(capacity=64, selector="prioritized", alpha=1.0, seed=3)
    # Held until flushed: neither the size (1000 keys) nor the time (60 s) is reached.
    client = connect(server.address, priorities=PriorityStreamConfig(coalesce_keys=1000, coalesce_s=60.0))
    client.insert(make_batch(30))
    client.flush()
    keys = keys_by_id(client, 30)
    for value in (5.0, 7.0, 3.0):
        client.send_priorities(keys, np.full(30, value))
    assert server.table.info().priority_mass == pytest.approx(30.0)  # nothing sent yet
    counts = client.flush_priorities(timeout=30)
    assert (counts.applied, counts.coalesced) == (30, 60)  # one update per key reached the shard
    assert client.info().priority_mass == pytest.approx(30 * 3.0)  # the last value of each


def test_latest_per_key_keeps_the_last_value_given_in_order():
    keys = np.array([7, 3, 7, 9, 3, 7], dtype=np.uint64)
    unique, priorities = latest_per_key(keys, np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert unique.tolist() == [3, 7, 9] and priorities.tolist() == [5.0, 6.0, 4.0]


def test_stale_keys_are_dropped_and_counted(start_server, connect):
    server = start_server(capacity=10, selector="prioritized", seed=3)
    client = connect(server.address, priorities=PLAIN)
    client.insert(make_batch(10))
    client.flush()
    old = client.sample(10).keys
    client.insert(make_batch(10, start=10))  # overwrites every slot
    client.flush()
    client.send_priorities(old, np.full(10, 9.0))
    counts = client.flush_priorities(timeout=30)
    assert (counts.applied, counts.dropped_stale) == (0, 10)
    assert client.info().dropped_priority_updates == 10


def test_a_refused_update_is_raised_and_counted_and_the_stream_goes_on(start_server, connect):
    server = start_server(capacity=16, selector="prioritized", seed=3)
    client = connect(server.address, priorities=PLAIN)
    client.insert(make_batch(16))
    client.flush()
    keys = client.sample(4).keys
    with pytest.raises(InvalidBatchError, match="item 1 is nan"):
        client.send_priorities(keys, np.array([1.0, np.nan, 1.0, 1.0]))  # refused before it is queued
    client.send_priorities(keys + np.uint64(1 << 60), np.ones(4))  # keys of another shard
    with pytest.raises(InvalidBatchError, match="belongs to shard"):
        client.flush_priorities(timeout=30)
    client.send_priorities(keys, np.full(4, 2.0))
    counts = client.flush_priorities(timeout=30)
    assert (counts.rejected, counts.applied, counts.lost) == (4, 4, 0)


def test_a_stream_the_shard_ends_for_its_age_is_reopened_without_losing_updates(start_server, connect):
    server = start_server(capacity=256, selector="prioritized", seed=3, insert_stream_max_age_s=0.01)
    client = connect(server.address, priorities=PriorityStreamConfig(coalesce_keys=0, max_in_flight=4))
    client.insert(make_batch(256))
    client.flush()
    samples = client.sample_batches(8, 100)
    for sample in samples:
        client.send_priorities(sample.keys, np.full(8, 2.0))
    counts = client.flush_priorities(timeout=60)
    assert (counts.applied, counts.lost, counts.rejected) == (800, 0, 0)


def test_a_hung_shard_costs_the_sender_max_wait_s_and_its_updates_are_counted_lost(start_server, connect, monkeypatch):
    server = start_server(capacity=64, selector="prioritized", seed=3)
    client = connect(server.address, priorities=PriorityStreamConfig(coalesce_keys=0, max_in_flight=2, max_wait_s=0.5))
    client.insert(make_batch(64))
    client.flush()
    keys = client.sample(8).keys
    release, entered = threading.Event(), threading.Event()
    update = server.table.update_priorities

    def hang(*args):
        entered.set()
        release.wait(30)
        return update(*args)

    monkeypatch.setattr(server.table, "update_priorities", hang)
    try:
        client.send_priorities(keys, np.ones(8))
        wait_until(entered.is_set)
        client.send_priorities(keys, np.ones(8))
        with pytest.raises(ReplayUnavailableError, match="answered no priority update for 0.5s"):
            client.send_priorities(keys, np.ones(8))  # the window is full: waits 0.5 s, then gives up
        assert client.priority_counts().lost == 24
    finally:
        release.set()
    monkeypatch.setattr(server.table, "update_priorities", update)
    client.send_priorities(keys, np.full(8, 3.0))  # the next send opens a new stream
    counts = client.flush_priorities(timeout=30)
    assert (counts.applied, counts.lost) == (8, 24)


@pytest.fixture
def shard_process():
    """A prioritized shard in its own process (`system.bench.priorities`), to be killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "system.bench.priorities", "--serve", "1000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    port = proc.stdout.readline().strip()
    assert port.isdigit(), "the shard started"
    yield proc, f"127.0.0.1:{port}"
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_killed_shard_does_not_hang_the_priority_path_and_its_updates_are_counted(shard_process):
    proc, address = shard_process
    sharded = ShardedReplay(addresses=[address], failover_after_s=0.5, priorities=PLAIN)
    try:
        sharded.wait_for_shards(1, timeout=30)
        batch = {name: column[:500] for name, column in _bench_batch().items()}
        sharded.insert(batch)
        sharded.flush()
        keys = sharded.sample(64).keys
        sharded.send_priorities(keys, np.full(64, 2.0))
        assert sharded.flush_priorities(timeout=30).applied == 64
        proc.kill()
        proc.wait()
        for _ in range(20):  # as a learner goes on: every send returns, none raises
            sharded.send_priorities(keys, np.full(64, 3.0))
        counts = sharded.flush_priorities(timeout=30)
        assert (counts.applied, counts.lost) == (64, 20 * 64)  # nothing after the kill applied; all counted
        assert sharded.failovers == 1
    finally:
        sharded.close()


def _bench_batch() -> dict[str, np.ndarray]:
    from system.bench.priorities import SPEC
    from system.bench.replay import random_batch

    return random_batch(SPEC, 500, np.random.default_rng(0))
