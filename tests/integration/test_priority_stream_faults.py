"""Priority streams under faults (replay/priority_stream.py, replay/sharded.py, replay/mixing.py):
updates are applied in the order sent however full the window, a busy shard is neither refused
nor failed over, one shard's error or hang costs the others nothing, and no count goes missing
on close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import make_batch, wait_until
from replay import (
    InvalidBatchError,
    MixedReplay,
    PriorityStreamConfig,
    ReplayError,
    ReplayUnavailableError,
    ShardedReplay,
)
from replay import keys as keylib

PLAIN = PriorityStreamConfig(coalesce_keys=0)


def filled(start_server, connect, **kwargs):
    """A prioritized shard of 64 items and a client that inserted them."""
    server = start_server(capacity=64, selector="prioritized", alpha=1.0, seed=0, **kwargs)
    writer = connect(server.address)
    writer.insert(make_batch(64))
    writer.flush()
    return server, writer


def hang_updates(server, monkeypatch):
    """Makes the shard's first priority update wait for the returned event (`entered` set)."""
    release, entered = threading.Event(), threading.Event()
    update = server.table.update_priorities
    first = [True]

    def hang(*args):
        if first[0]:
            first[0] = False
            entered.set()
            release.wait(30)
        return update(*args)

    monkeypatch.setattr(server.table, "update_priorities", hang)
    return release, entered


def priority_of(server, key) -> float:
    _, slot, _ = keylib.split_keys(np.array([key], dtype=np.uint64))
    return float(server.table.selector.priorities(slot)[0])


def test_an_older_held_update_never_overwrites_a_newer_one_when_the_window_is_full(start_server, connect, monkeypatch):
    server, writer = filled(start_server, connect)
    keys = np.unique(np.concatenate([s.keys for s in writer.sample_batches(64, 20)]))[:8]
    for trial in range(8):
        release, entered = hang_updates(server, monkeypatch)
        config = PriorityStreamConfig(max_in_flight=1, coalesce_keys=4, coalesce_s=0.03)
        client = connect(server.address, priorities=config)
        client.send_priorities(keys[:4], np.full(4, 1.0))  # sent at once (4 keys): the shard hangs on it
        wait_until(entered.is_set)
        client.send_priorities(keys[4:5], np.full(1, 2.0))  # held; the timer waits for room with it
        time.sleep(0.08)
        newer = threading.Thread(target=client.send_priorities, args=(keys[4:8], np.full(4, 3.0 + trial)))
        newer.start()  # a newer priority of the same key, also waiting for room
        time.sleep(0.05)
        release.set()
        newer.join()
        assert client.flush_priorities(timeout=10).lost == 0
        assert priority_of(server, keys[4]) == 3.0 + trial  # the newer value, every time
        client.close()


def test_a_shard_whose_insert_stream_slots_are_taken_still_takes_priority_streams(start_server, connect):
    # 1 Sample + 2 priority streams + 4 reserved: one Insert stream slot, held by the writer.
    server, writer = filled(start_server, connect, max_workers=8, max_concurrent_samples=1)
    assert server.config.max_insert_streams == 1
    keys = writer.sample(8).keys
    learner = connect(server.address, priorities=PLAIN)
    learner.send_priorities(keys, np.full(8, 2.0))
    counts = learner.flush_priorities(timeout=10)
    assert (counts.applied, counts.lost) == (8, 0)


def test_a_busy_refusal_of_the_priority_stream_is_retried_with_the_updates_kept(start_server, connect):
    server, writer = filled(start_server, connect, max_priority_streams=1)
    keys = writer.sample(8).keys
    holder = connect(server.address, priorities=PLAIN)
    holder.send_priorities(keys, np.ones(8))
    holder.flush_priorities(timeout=10)  # its stream holds the shard's only priority slot
    learner = connect(server.address, priorities=PLAIN, retry_for_s=20)
    learner.send_priorities(keys, np.full(8, 2.0))  # refused as busy: retried with backoff
    time.sleep(0.3)
    holder.close()  # frees the slot
    counts = learner.flush_priorities(timeout=20)
    assert (counts.applied, counts.lost) == (8, 0)


def test_a_busy_shard_is_not_failed_over_and_its_error_does_not_blame_credentials(start_server, connect):
    server, writer = filled(start_server, connect, max_priority_streams=1)
    keys = writer.sample(8).keys
    holder = connect(server.address, priorities=PLAIN)
    holder.send_priorities(keys, np.ones(8))
    holder.flush_priorities(timeout=10)
    sharded = ShardedReplay(addresses=[server.address], failover_after_s=0.3, priorities=PLAIN)
    try:
        sharded.wait_for_shards(1, timeout=10)
        sharded.send_priorities(keys, np.full(8, 2.0))
        with pytest.raises(ReplayError, match="busy") as busy:
            sharded.flush_priorities(timeout=10)  # refused for retry_for_s (0.3 s)
        assert not isinstance(busy.value, ReplayUnavailableError)
        assert "token" not in str(busy.value) and "TLS" not in str(busy.value)
        assert sharded.failovers == 0
        assert sharded.priority_counts().lost == 8
        holder.close()
        sharded.send_priorities(keys, np.full(8, 3.0))  # the shard is still in: this one goes
        assert sharded.flush_priorities(timeout=10).applied == 8
    finally:
        sharded.close()


def two_shards(start_server, connect):
    """Two prioritized shards (ids 0 and 1) of 64 items each, and 8 keys of each."""
    shards, keys = [], []
    for shard_id in (0, 1):
        server, writer = filled(start_server, connect, shard_id=shard_id)
        shards.append(server)
        keys.append(writer.sample(8).keys)
    return shards, keys


def test_one_shards_error_does_not_cost_the_other_shard_its_updates(start_server, connect):
    shards, keys = two_shards(start_server, connect)
    sharded = ShardedReplay(addresses=[s.address for s in shards], priorities=PLAIN)
    try:
        sharded.wait_for_shards(2, timeout=10)
        shard0 = sharded._membership.all()[0].client
        shard0.send_priorities(keys[1], np.ones(8))  # shard 1's keys: shard 0 refuses them
        wait_until(lambda: shard0.priority_counts().rejected == 8)
        with pytest.raises(InvalidBatchError, match="belongs to shard"):
            sharded.send_priorities(np.concatenate(keys), np.full(16, 2.0))
        counts = sharded.flush_priorities(timeout=10)
        assert counts.applied == 8  # shard 1's part went, though shard 0 raised first
        assert priority_of(shards[1], keys[1][0]) == 2.0
        assert sharded.failovers == 0
        with pytest.raises(InvalidBatchError, match="item 0 is -1"):
            sharded.send_priorities(np.concatenate(keys), np.full(16, -1.0))  # nothing sent anywhere
        assert sharded.flush_priorities(timeout=10).applied == 8
    finally:
        sharded.close()


def test_one_sources_error_does_not_cost_the_other_source_its_updates(start_server, connect):
    shards, keys = two_shards(start_server, connect)
    offline = connect(shards[0].address, priorities=PLAIN)
    online = connect(shards[1].address, priorities=PLAIN)
    mixed = MixedReplay({"offline": (offline, 0.5), "online": (online, 0.5)})
    try:
        offline.send_priorities(keys[1], np.ones(8))  # shard 1's keys: shard 0 refuses them
        wait_until(lambda: offline.priority_counts().rejected == 8)
        with pytest.raises(InvalidBatchError, match="belongs to shard"):
            mixed.send_priorities(np.concatenate(keys), np.full(16, 2.0))
        assert online.flush_priorities(timeout=10).applied == 8  # sent, though offline raised first
        with pytest.raises(InvalidBatchError, match="is nan"):
            mixed.send_priorities(np.concatenate(keys), np.full(16, np.nan))  # nothing sent anywhere
        assert mixed.flush_priorities(timeout=10).applied == 8
    finally:
        mixed.close()


def test_a_sharded_flush_waits_once_for_all_hung_shards(start_server, connect, monkeypatch):
    shards, keys = two_shards(start_server, connect)
    releases = [hang_updates(server, monkeypatch)[0] for server in shards]
    for release in releases:
        threading.Timer(15, release.set).start()
    config = PriorityStreamConfig(coalesce_keys=0, max_wait_s=1.0)
    sharded = ShardedReplay(addresses=[s.address for s in shards], priorities=config)
    try:
        sharded.wait_for_shards(2, timeout=10)
        sharded.send_priorities(np.concatenate(keys), np.full(16, 2.0))
        started = time.monotonic()
        counts = sharded.flush_priorities()  # each shard given up after 1 s without an answer
        assert time.monotonic() - started < 1.8  # at once, not one after the other
        assert (counts.lost, sharded.failovers) == (16, 2)
    finally:
        for release in releases:
            release.set()
        sharded.close()


def test_closing_a_sharded_replay_keeps_its_priority_counts(start_server, connect):
    shards, keys = two_shards(start_server, connect)
    sharded = ShardedReplay(addresses=[s.address for s in shards], priorities=PLAIN)
    sharded.wait_for_shards(2, timeout=10)
    sharded.send_priorities(np.concatenate(keys), np.full(16, 2.0))
    sharded.close()  # answers waited for, then counted in the totals
    assert sharded.priority_counts().applied == 16


def test_priorities_sent_after_close_are_refused_and_counted_lost(start_server, connect):
    server, writer = filled(start_server, connect)
    keys = writer.sample(8).keys
    client = connect(server.address, priorities=PLAIN)
    client.send_priorities(keys, np.ones(8))
    client.close()
    with pytest.raises(ReplayError, match="closed"):
        client.send_priorities(keys, np.ones(8))
    counts = client.priority_counts()
    assert (counts.applied, counts.lost) == (8, 8)


def test_a_flush_without_timeout_gives_a_hung_shard_up_after_max_wait_s(start_server, connect, monkeypatch):
    server, writer = filled(start_server, connect)
    keys = writer.sample(8).keys
    release, entered = hang_updates(server, monkeypatch)
    threading.Timer(15, release.set).start()  # without the bound, the flush would wait for this
    client = connect(server.address, priorities=PriorityStreamConfig(coalesce_keys=0, max_wait_s=0.5))
    try:
        client.send_priorities(keys, np.ones(8))
        wait_until(entered.is_set)
        started = time.monotonic()
        with pytest.raises(ReplayUnavailableError, match="answered no priority update"):
            client.flush_priorities()
        assert time.monotonic() - started < 5
        assert client.priority_counts().lost == 8
    finally:
        release.set()


def test_one_failed_stream_raises_once_and_is_not_reopened_by_the_timer(start_server, connect, monkeypatch):
    server, writer = filled(start_server, connect)
    keys = writer.sample(8).keys
    release, entered = hang_updates(server, monkeypatch)
    config = PriorityStreamConfig(max_in_flight=1, coalesce_keys=8, coalesce_s=0.01, max_wait_s=0.3)
    client = connect(server.address, priorities=config)
    try:
        client.send_priorities(keys, np.ones(8))  # sent (8 keys): the shard hangs on it
        wait_until(entered.is_set)
        client.send_priorities(keys[:2], np.ones(2))  # held: the timer gives the stream up after 0.3 s
        wait_until(lambda: client.priority_counts().lost == 10)
        client.sample(2)  # pushes what is held: nothing, and no second error
        with pytest.raises(ReplayUnavailableError):
            client.send_priorities(keys[:1], np.ones(1))
        release.set()
        client.send_priorities(keys, np.full(8, 2.0))  # one error, raised once: this one goes
        counts = client.flush_priorities(timeout=10)
        assert (counts.applied, counts.lost) == (8, 11)
    finally:
        release.set()


def test_merged_requests_stay_within_the_shards_max_priority_updates(start_server, connect, monkeypatch):
    server, writer = filled(start_server, connect, max_priority_updates=16)
    keys = writer.sample(8).keys
    release, entered = hang_updates(server, monkeypatch)
    config = PriorityStreamConfig(coalesce_keys=0, max_in_flight=64, max_request_keys=16)
    client = connect(server.address, priorities=config)
    client.send_priorities(keys, np.ones(8))
    wait_until(entered.is_set)
    for _ in range(10):  # queued while the shard is busy: merged, two sends a request at most
        client.send_priorities(keys, np.full(8, 2.0))
    release.set()
    counts = client.flush_priorities(timeout=10)
    assert (counts.applied, counts.rejected) == (88, 0)


def test_a_stream_the_shards_watch_cancels_with_requests_unanswered_is_reopened_and_resent(
    start_server, connect, monkeypatch
):
    # An old stream is cancelled once it stays open insert_idle_s past its age: here while the
    # shard still works on its request (the client did nothing wrong, and the shard is healthy).
    server, writer = filled(start_server, connect, insert_stream_max_age_s=0.05, insert_idle_s=0.2)
    keys = writer.sample(8).keys
    release, entered = hang_updates(server, monkeypatch)
    threading.Timer(1.0, release.set).start()
    client = connect(server.address, priorities=PLAIN)
    try:
        client.send_priorities(keys, np.full(8, 2.0))
        wait_until(entered.is_set)
        counts = client.flush_priorities(timeout=20)
        assert (counts.applied, counts.lost) == (8, 0)
    finally:
        release.set()


def test_a_sharded_replays_priority_streams_give_a_hung_shard_up_after_failover_after_s(
    start_server, connect, monkeypatch
):
    server, writer = filled(start_server, connect)
    keys = writer.sample(8).keys
    release, entered = hang_updates(server, monkeypatch)
    threading.Timer(15, release.set).start()
    sharded = ShardedReplay(addresses=[server.address], failover_after_s=0.5, priorities=PLAIN)
    try:
        sharded.wait_for_shards(1, timeout=10)
        sharded.send_priorities(keys, np.ones(8))
        wait_until(entered.is_set)
        started = time.monotonic()
        counts = sharded.flush_priorities()  # no answer for failover_after_s: the shard is failed over
        assert time.monotonic() - started < 5
        assert (counts.lost, sharded.failovers) == (8, 1)
    finally:
        release.set()
        sharded.close()
