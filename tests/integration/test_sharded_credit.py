"""One global samples-per-insert with fewer writers than shards: the learner keeps the target ratio
and the writer keeps going, whichever shard it writes to. Real redis-server, real shards on port 0,
configured as `qfleet train` configures them (samples_per_insert set, limit_samples false)."""

from __future__ import annotations

import threading
import time

from conftest import make_batch, shard_kwargs
from replay import DeadlineExceededError, ReplayClient, ShardedReplay

CAPACITY = 1000
SPI = 0.5
GLOBAL_BUFFER = 64  # the learner's window: its samples stay within spi * inserts - min_diff
BATCH = 32
SHARD_LIMITER = dict(
    capacity=CAPACITY,
    selector="uniform",
    samples_per_insert=SPI,
    error_buffer=SPI * CAPACITY + 100,  # wide enough for the fill, as train sizes it for learning_starts
    min_size=1,
    limit_samples=False,
)


def start_full_shard(start_server, connect, redis_server, shard_id: int, **extra):
    shard = start_server(shard_id=shard_id, **SHARD_LIMITER, **shard_kwargs(redis_server), **extra)
    client = connect(shard.address)
    client.insert(make_batch(CAPACITY, start=100_000 * shard_id))
    client.flush()
    return shard


def open_learner(redis_server) -> ShardedReplay:
    learner = ShardedReplay(
        redis_server.url,
        "test",
        samples_per_insert=SPI,
        min_size=2 * CAPACITY,  # the window's offset is the fill: it starts at spi * (both shards full)
        error_buffer=GLOBAL_BUFFER,
        discovery_s=0.2,
    )
    learner.wait_for_shards(2)
    return learner


class Writer(threading.Thread):
    """Inserts batches of 50 into one shard as fast as its rate limiter lets it (`client` may change)."""

    def __init__(self, client: ReplayClient):
        super().__init__(daemon=True)
        self.client = client
        self.stop = threading.Event()
        self.items = 0

    def run(self) -> None:
        while not self.stop.is_set():
            client = self.client
            try:
                client.insert(make_batch(50, start=1_000_000), timeout=0.5)  # never left pending at close
                client.flush(timeout=0.5)
                self.items += 50
            except DeadlineExceededError:
                continue

    def __enter__(self) -> Writer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(timeout=5)


def sample_for(learner: ShardedReplay, seconds: float) -> int:
    """Samples batches of 32 for `seconds`; returns the items drawn."""
    drawn = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            drawn += len(learner.sample(BATCH, timeout=0.5).keys)
        except DeadlineExceededError:
            continue
    return drawn


def assert_at_the_ratio(drawn: int, new_inserts: int) -> None:
    # At most the window ahead of the ratio (one batch may be reserved past it) ...
    assert drawn <= SPI * new_inserts + GLOBAL_BUFFER + BATCH, (drawn, new_inserts)
    # ... and the learner kept up: the writer ran at most a window and a batch ahead of it.
    assert drawn >= SPI * new_inserts - 2 * GLOBAL_BUFFER - 50, (drawn, new_inserts)


def test_one_writer_on_two_full_shards_runs_at_the_learners_ratio(start_server, connect, redis_server):
    """1 actor on 2 full shards: half of every draw lands on the shard without a writer. The learner
    still samples 0.5 items per new insert (within its window), and the writer is never stuck."""
    shards = [start_full_shard(start_server, connect, redis_server, i) for i in (0, 1)]
    learner = open_learner(redis_server)
    try:
        with Writer(connect(shards[0].address)):
            drawn = sample_for(learner, 4.0)
        info = {i: shard.table.info() for i, shard in enumerate(shards)}
    finally:
        learner.close()
    new_inserts = info[0].inserts - CAPACITY
    assert info[1].inserts == CAPACITY and new_inserts >= 1000, f"the writer was held back: {new_inserts} in 4 s"
    assert_at_the_ratio(drawn, new_inserts)
    # The credits stood in for the draws that went to shard 1; they are no samples.
    assert info[0].credited > 0 and info[0].samples + info[1].samples == drawn


def test_the_last_writer_moving_to_the_other_shard_goes_on_at_the_ratio(start_server, connect, redis_server):
    """The only writer leaves shard 0 for shard 1 midway: neither shard's window holds it for good."""
    shards = [start_full_shard(start_server, connect, redis_server, i) for i in (0, 1)]
    learner = open_learner(redis_server)
    try:
        with Writer(connect(shards[0].address)) as writer:
            drawn = sample_for(learner, 2.0)
            moved_at = writer.items
            writer.client = connect(shards[1].address)
            drawn += sample_for(learner, 2.0)
        inserts = [shard.table.info().inserts - CAPACITY for shard in shards]
    finally:
        learner.close()
    assert inserts[1] >= 500, f"the writer was held back on its new shard: {inserts}"
    assert abs(inserts[0] - moved_at) <= 50  # a batch in flight when it moved
    assert_at_the_ratio(drawn, sum(inserts))


def test_a_shard_restored_from_an_older_checkpoint_frees_its_writer(start_server, connect, redis_server, tmp_path):
    """Shard 0 restarts from a checkpoint taken before most of its inserts and samples: its window
    and the global one are out of balance, and still the writer and the learner both go on."""
    shards = [start_full_shard(start_server, connect, redis_server, 0, checkpoint_dir=str(tmp_path))]
    shards.append(start_full_shard(start_server, connect, redis_server, 1))
    shards[0].checkpoint()
    learner = open_learner(redis_server)
    try:
        with Writer(connect(shards[0].address)) as writer:
            sample_for(learner, 2.0)
            shards[0].stop(grace=0, checkpoint=False)
            restored = start_server(
                shard_id=0, **SHARD_LIMITER, **shard_kwargs(redis_server), checkpoint_dir=str(tmp_path)
            )
            assert restored.table.info().inserts == CAPACITY  # the older counters
            writer.client = connect(restored.address)
            sample_for(learner, 1.0)  # the learner finds the restarted shard
            before = writer.items
            drawn = sample_for(learner, 3.0)
            written = writer.items - before
    finally:
        learner.close()
    assert written >= 500 and drawn >= 200, f"stuck after the restore: {written} inserted, {drawn} drawn"
