"""A shard lost mid-run moves neither the learner's samples-per-insert window nor the inserts its
UTD counts: the run's counters go on over the shard's restart. Real redis-server, real shards on
port 0, configured as `qfleet train` configures them (samples_per_insert set, limit_samples false).
"""

from __future__ import annotations

from conftest import make_batch, shard_kwargs, wait_until
from replay import DeadlineExceededError, ShardedReplay

CAPACITY = 1000
SPI = 0.5
GLOBAL_BUFFER = 64  # the learner's window: its samples stay within spi * inserts - min_diff
MIN_SIZE = 100
BATCH = 32
SHARD = dict(
    capacity=CAPACITY,
    selector="uniform",
    samples_per_insert=SPI,
    error_buffer=10_000,  # its writers never wait here: only the global window matters
    min_size=1,
    limit_samples=False,
)


def sample_until_held(learner: ShardedReplay) -> int:
    """Samples batches until the global window holds one back; returns the items drawn."""
    drawn = 0
    while True:
        try:
            drawn += len(learner.sample(BATCH, timeout=1.0).keys)
        except DeadlineExceededError:
            return drawn


def test_a_shard_restarted_empty_leaves_the_learners_window_and_insert_count_where_they_were(
    start_server, connect, redis_server
):
    """Shard 0 took 3,000 inserts (1,000 kept), shard 1 1,000: the uniform draws split evenly, so
    shard 1 served ~1,000 samples for its 500 of the ratio. It restarts empty. Forgetting its
    counters would let the learner draw its ~1,000 samples again, less 500 for its inserts: a burst
    of ~500 samples beyond the ratio, and an achieved ratio counted against 3,000 inserts, not 4,000.
    """
    shards = [start_server(shard_id=i, **SHARD, **shard_kwargs(redis_server)) for i in (0, 1)]
    for shard, count in zip(shards, (3 * CAPACITY, CAPACITY), strict=True):
        client = connect(shard.address)
        client.insert(make_batch(count))
        client.flush()
    learner = ShardedReplay(
        redis_server.url,
        "test",
        samples_per_insert=SPI,
        min_size=MIN_SIZE,
        error_buffer=GLOBAL_BUFFER,
        discovery_s=0.2,
    )
    try:
        learner.wait_for_shards(2)
        drawn = sample_until_held(learner)
        assert drawn >= SPI * 4 * CAPACITY - GLOBAL_BUFFER  # the window was open to the ratio
        served = {i: shard.table.info().samples for i, shard in enumerate(shards)}
        assert served[1] >= 0.8 * SPI * 4 * CAPACITY / 2  # shard 1 served about half
        before = learner.stats()

        shards[1].stop(grace=0, checkpoint=False)  # lost: it had no checkpoint directory
        restarted = start_server(shard_id=1, **SHARD, **shard_kwargs(redis_server))
        assert restarted.lost_transitions == CAPACITY
        client = connect(restarted.address)
        client.insert(make_batch(200, start=10_000))
        client.flush()
        # The learner follows the restarted process and has read its counters.
        assert wait_until(lambda: learner.info().shards.get(1) is not None, timeout=10)
        assert wait_until(lambda: learner.info().shards[1].inserts == 200, timeout=10)

        # The run's counters went on: the lost inserts still count, and so do the samples served.
        after = learner.stats()
        assert after["inserts"] == before["inserts"] + 200 == 4 * CAPACITY + 200
        assert after["samples"] >= before["samples"]
        # Only the new inserts' share of samples, within the window: no burst.
        more = sample_until_held(learner)
        assert more <= SPI * 200 + GLOBAL_BUFFER + BATCH, (more, before, after)
        final = learner.stats()
        assert final["achieved_samples_per_insert"] <= SPI + (GLOBAL_BUFFER + BATCH) / final["inserts"], final
    finally:
        learner.close()


def test_a_fixed_address_shard_restarted_empty_counts_its_lost_inserts_once(start_server, connect, redis_server):
    """The same restart behind a fixed address (one handle, the same address): the new process is
    told by its boot id, so its lost inserts count once, not on top of its predecessor's, and the
    samples its predecessor served still count."""
    shard = start_server(shard_id=0, **SHARD, **shard_kwargs(redis_server))
    client = connect(shard.address)
    client.insert(make_batch(CAPACITY))
    client.flush()
    learner = ShardedReplay(
        addresses=[shard.address],
        samples_per_insert=SPI,
        min_size=MIN_SIZE,
        error_buffer=GLOBAL_BUFFER,
        discovery_s=0.2,
    )
    try:
        drawn = sample_until_held(learner)
        before = learner.stats()
        assert before["inserts"] == CAPACITY and before["samples"] == drawn > 0

        shard.stop(grace=0, checkpoint=False)
        restarted = start_server(shard_id=0, port=shard.port, **SHARD, **shard_kwargs(redis_server))
        assert restarted.lost_transitions == CAPACITY
        client = connect(restarted.address)
        client.insert(make_batch(200, start=10_000))
        client.flush()
        assert wait_until(lambda: learner.info().shards.get(0) is not None, timeout=10)
        assert wait_until(lambda: learner.info().shards[0].inserts == 200, timeout=10)

        after = learner.stats()
        assert after["inserts"] == CAPACITY + 200, (before, after)
        assert after["samples"] >= before["samples"], (before, after)
        more = sample_until_held(learner)
        assert more <= SPI * 200 + GLOBAL_BUFFER + BATCH, (more, before, after)
    finally:
        learner.close()
