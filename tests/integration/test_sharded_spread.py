"""Every writer's data is sampled: numbered writers cover every shard, and a learner draws from a
shard that was empty when it first looked. Real redis-server, real shards on port 0."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import make_batch, shard_kwargs
from replay import DeadlineExceededError, ShardedReplay, indexed_order


def inserts_by_shard(reader: ShardedReplay) -> dict[int, int]:
    return {shard_id: info.inserts for shard_id, info in reader.info().shards.items()}


def test_numbered_writers_cover_every_shard_whatever_the_run_name(start_server, redis_server):
    """Actors write as `{run}-actor-{i}` with index i: for 20 run names, 2 actors on 2 shards
    always get one shard each (the hash of the name alone put both on one shard for some)."""
    for shard_id in (0, 1):
        start_server(shard_id=shard_id, **shard_kwargs(redis_server))
    with ShardedReplay(redis_server.url, "test") as reader:
        reader.wait_for_shards(2)
        for run in (f"run-{n}" for n in range(20)):
            before = inserts_by_shard(reader)
            for actor_id, items in ((0, 3), (1, 5)):
                writer = ShardedReplay(
                    redis_server.url, "test", writer_id=f"{run}-actor-{actor_id}", writer_index=actor_id
                )
                writer.wait_for_shards(2)
                writer.insert(make_batch(items))
                writer.flush()
                writer.close()
            after = inserts_by_shard(reader)
            assert {i: after[i] - before[i] for i in after} == {0: 3, 1: 5}, run


def test_a_numbered_writer_fails_over_in_id_order_and_comes_back(start_server, connect):
    servers = [start_server(shard_id=shard_id) for shard_id in (3, 5, 9)]
    assert indexed_order(1, [9, 3, 5]) == [5, 9, 3] and indexed_order(4, [9, 3, 5]) == [5, 9, 3]
    writer = ShardedReplay(addresses=[s.address for s in servers], writer_index=4, failover_after_s=0.2)
    writer.wait_for_shards(3)
    writer.insert(make_batch(7))
    writer.flush()
    assert [s.table.info().inserts for s in servers] == [0, 7, 0]  # 4 % 3 = 1: the second id, 5

    port = servers[1].port
    servers[1].stop(grace=0, checkpoint=False)
    writer.insert(make_batch(4))
    writer.flush()
    assert [s.table.info().inserts for s in servers] == [0, 7, 4]  # then 9, the next id

    back = start_server(shard_id=5, port=port)
    probe = connect(back.address)
    deadline = time.monotonic() + 10
    while back.table.info().inserts == 0 and time.monotonic() < deadline:
        writer.insert(make_batch(1))
        writer.flush()
        time.sleep(0.05)
    assert back.table.info().inserts > 0 and probe.info().shard_id == 5
    writer.close()


def test_a_shard_that_was_empty_at_the_first_sample_is_drawn_from_and_its_writer_goes_on(
    start_server, redis_server, connect
):
    """The shard's limiter (samples_per_insert) holds its writer until the learner samples it; the
    learner took it as empty at its first sample, and must still find its data within seconds."""
    full = start_server(shard_id=0, capacity=10_000, selector="uniform", **shard_kwargs(redis_server))
    late = start_server(
        shard_id=1,
        capacity=10_000,
        selector="uniform",
        samples_per_insert=1.0,
        error_buffer=64,
        **shard_kwargs(redis_server),
    )
    filler = connect(full.address)
    filler.insert(make_batch(1000))
    filler.flush()
    learner = ShardedReplay(redis_server.url, "test", discovery_s=0.2)
    learner.wait_for_shards(2)
    learner.sample(32)  # its first look: shard 1 holds nothing

    writer = connect(late.address)
    written = threading.Event()

    def write() -> None:  # 320 items: past the limiter's window of ~64 unless shard 1 is sampled
        for n in range(20):
            writer.insert(make_batch(16, start=10_000 + 16 * n))
        writer.flush()
        written.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    drawn_from_late = 0
    while not written.is_set() and time.monotonic() < deadline:
        try:
            batch = learner.sample(32, timeout=2)
        except DeadlineExceededError:  # shard 1 is between inserts: its limiter holds the sample
            continue
        drawn_from_late += int((batch.data["action"] >= 10_000).sum())
        time.sleep(0.005)
    assert written.wait(timeout=1), f"shard 1's writer stayed blocked: {late.table.info()}"
    assert drawn_from_late > 0 and late.table.info().inserts == 320
    learner.close()


def test_a_shard_without_writers_never_holds_up_the_learner(start_server, redis_server, connect):
    """Fewer actors than shards (a scale-down to 1 actor on 2 shards): shard 1 gets no more inserts
    while the learner keeps drawing its share of shard 1's items, far past its limiter's window. As
    `qfleet train` configures shards (samples_per_insert set, limit_samples false), every draw goes on."""
    limited = dict(capacity=10_000, selector="uniform", samples_per_insert=1.0, error_buffer=64, limit_samples=False)
    shards = [start_server(shard_id=i, **limited, **shard_kwargs(redis_server)) for i in (0, 1)]
    for shard, start in zip(shards, (0, 10_000), strict=True):
        client = connect(shard.address)
        client.insert(make_batch(60, start=start))
        client.flush()
    learner = ShardedReplay(redis_server.url, "test", discovery_s=0.2)
    learner.wait_for_shards(2)
    drawn_from_idle = 0
    for _ in range(40):  # ~640 items of shard 1: ten times its window of 64 past its 60 inserts
        batch = learner.sample(32, timeout=5)
        drawn_from_idle += int((batch.data["action"] >= 10_000).sum())
    assert drawn_from_idle > 124, drawn_from_idle  # past 60 inserts + 64: Reverb's limiter held it there
    writer = connect(shards[1].address)  # a writer coming back runs at most the window ahead
    with pytest.raises(DeadlineExceededError):
        writer.insert(make_batch(1000, start=20_000), timeout=0.5)
        writer.flush()
    assert shards[1].table.info().inserts - 60 <= 128 + 1  # 2 * error_buffer / spi
    learner.close()
