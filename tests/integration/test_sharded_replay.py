"""Many shards as one replay: real redis-server, real shards on port 0, no mocks."""

from __future__ import annotations

import logging
import pickle
import threading
import time
import weakref

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conftest import make_batch, shard_kwargs, wait_until, writer_for
from replay import (
    MixedReplay,
    Prefetcher,
    PriorityCounts,
    ReplayAuthenticationError,
    ReplayCredentials,
    ReplayError,
    ReplayServer,
    ShardedReplay,
    ShardRegistry,
    Spec,
    SpecMismatchError,
    generate_credentials,
)
from replay.metrics import ShardedCollector


def test_clients_discover_joins_and_leaves_within_seconds(start_server, redis_server):
    start_server(shard_id=0, **shard_kwargs(redis_server))
    sharded = ShardedReplay(redis_server.url, "test", discovery_s=0.2)
    assert sharded.wait_for_shards(1) == [0]
    clone = pickle.loads(pickle.dumps(sharded))  # e.g. handed to a Ray actor
    assert clone.run == "test" and clone.shard_ids() == [0]
    clone.close()

    joined = start_server(shard_id=1, **shard_kwargs(redis_server))
    started = time.monotonic()
    assert wait_until(lambda: sharded.shard_ids() == [0, 1], timeout=5)
    assert time.monotonic() - started < 2.0

    joined.stop(grace=0.1, checkpoint=False)  # a clean stop deregisters at once
    assert wait_until(lambda: sharded.shard_ids() == [0], timeout=5)
    sharded.close()


def test_a_shard_with_another_spec_is_refused_naming_both_specs(start_server, redis_server):
    start_server(shard_id=0, **shard_kwargs(redis_server))
    other = Spec({"obs": ((8,), "uint8"), "action": ((), "int64")})
    with pytest.raises(SpecMismatchError) as refused:
        ReplayServer(other, shard_id=1, port=0, **shard_kwargs(redis_server)).start()
    assert '"shape":[8]' in str(refused.value) and '"shape":[4]' in str(refused.value)
    registry = ShardRegistry(redis_server.url, "test")
    assert sorted(registry.live_shards()) == [0]
    registry.close()


def test_writers_are_routed_by_a_stable_hash_of_their_id(start_server, redis_server):
    for shard_id in range(3):
        start_server(shard_id=shard_id, **shard_kwargs(redis_server))
    counts = {}
    for shard_id in range(3):
        writer = ShardedReplay(redis_server.url, "test", writer_id=writer_for(shard_id, [0, 1, 2]))
        writer.wait_for_shards(3)
        writer.insert(make_batch(10 + shard_id))
        writer.flush()
        counts[shard_id] = 10 + shard_id
        writer.close()
    with ShardedReplay(redis_server.url, "test") as reader:
        info = reader.info()
    assert {i: s.inserts for i, s in info.shards.items()} == counts


def test_global_prioritized_sampling_matches_one_table(start_server, redis_server, connect):
    """Shards of different sizes and priorities sample like a single table holding everything."""
    alpha, beta = 0.6, 0.4
    servers = [
        start_server(shard_id=i, capacity=100, alpha=alpha, seed=i, **shard_kwargs(redis_server)) for i in range(3)
    ]
    sizes = [5, 12, 23]
    priorities, start = [], 0
    for server, size in zip(servers, sizes, strict=True):
        shard_priorities = np.linspace(0.5, 6.0, size) * (1 + server.config.shard_id)
        client = connect(server.address)
        client.insert(make_batch(size, start=start, priority=shard_priorities))
        client.flush()
        priorities.append(shard_priorities)
        start += size
    priorities = np.concatenate(priorities)
    expected = priorities**alpha / np.sum(priorities**alpha)

    sharded = ShardedReplay(redis_server.url, "test", seed=0, beta=beta)
    sharded.wait_for_shards(3)
    counts = np.zeros(start)
    draws = 0
    for batch in sharded.sample_batches(256, 150):
        ids = batch.data["action"]
        counts += np.bincount(ids, minlength=start)
        draws += len(ids)
        np.testing.assert_allclose(batch.probabilities, expected[ids], rtol=1e-9)
        weights = (start * expected[ids]) ** -beta
        np.testing.assert_allclose(batch.weights, weights / weights.max(), rtol=1e-9)
        assert batch.table_size == start
    chi_square = np.sum((counts - draws * expected) ** 2 / (draws * expected))
    assert chi_square < 73.4, f"chi-square {chi_square:.1f} over 39 dof (p < 0.001 threshold 73.4)"
    sharded.close()


def test_priority_updates_are_routed_by_the_shard_in_each_key(start_server, redis_server, connect):
    for shard_id in (0, 1):
        server = start_server(shard_id=shard_id, **shard_kwargs(redis_server))
        client = connect(server.address)
        client.insert(make_batch(50, start=50 * shard_id))
        client.flush()
    sharded = ShardedReplay(redis_server.url, "test")
    sharded.wait_for_shards(2)
    batch = sharded.sample(64)
    result = sharded.update_priorities(batch.keys, np.full(64, 3.0))
    assert (result.applied, result.dropped_stale) == (64, 0)
    info = sharded.info()
    for shard_id, shard in info.shards.items():
        mine = np.unique(batch.keys[(batch.keys >> np.uint64(54)).astype(int) == shard_id])
        assert shard.priority_mass == pytest.approx(50 - len(mine) + len(mine) * 3.0**0.6)
    sharded.close()


def test_uneven_writers_keep_the_global_samples_per_insert(start_server, redis_server):
    """A 4x-fast writer and a 1x writer on different shards; the learner samples at spi=4."""
    target = 4.0
    for shard_id in (0, 1):
        start_server(shard_id=shard_id, capacity=100_000, selector="uniform", **shard_kwargs(redis_server))
    stop = threading.Event()

    def write(shard_id: int, pause: float) -> None:
        writer = ShardedReplay(redis_server.url, "test", writer_id=writer_for(shard_id, [0, 1]))
        writer.wait_for_shards(2)
        i = 0
        while not stop.is_set():
            writer.insert(make_batch(20, start=i))
            i += 20
            stop.wait(pause)  # paces the writer; returns at once when the test ends
        writer.flush()
        writer.close()

    # ~2,000 and ~500 inserts/s: the learner (batches of 128) can sample 4x that, so the global
    # limiter, not the learner's speed, decides the ratio.
    writers = [threading.Thread(target=write, args=(0, 0.01)), threading.Thread(target=write, args=(1, 0.04))]
    for writer in writers:
        writer.start()
    learner = ShardedReplay(redis_server.url, "test", samples_per_insert=target, min_size=100, error_buffer=200)
    learner.wait_for_shards(2)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        learner.sample(128, timeout=5)
    stop.set()
    for writer in writers:
        writer.join()
    info = learner.info()
    per_shard = {i: s.inserts for i, s in info.shards.items()}
    assert per_shard[0] > 2.5 * per_shard[1], f"writers were not uneven: {per_shard}"
    # Reverb's window: samples = spi * (inserts - min_size) within +-error_buffer.
    achieved = info.samples / (info.inserts - 100)
    assert abs(achieved - target) / target < 0.05, f"achieved {achieved:.3f} vs {target} ({info})"
    assert abs(info.achieved_samples_per_insert - info.samples / info.inserts) < 1e-12

    registry = CollectorRegistry()
    registry.register(ShardedCollector(learner))
    scraped = generate_latest(registry).decode()
    assert 'qfleet_replay_target_samples_per_insert{run="test"} 4.0' in scraped
    achieved_line = next(x for x in scraped.splitlines() if x.startswith("qfleet_replay_achieved_samples_per_insert{"))
    assert float(achieved_line.split()[-1]) == pytest.approx(info.samples / info.inserts, rel=0.01)
    assert 'qfleet_replay_live_shards{run="test"} 2.0' in scraped
    learner.close()


def test_prefetcher_keeps_batches_ready_and_surfaces_errors(start_server, connect):
    server = start_server(capacity=1000)
    client = connect(server.address)
    client.insert(make_batch(500))
    client.flush()
    with Prefetcher(client, 64, depth=4, threads=2) as prefetcher:
        assert wait_until(lambda: prefetcher.ready == 4)
        batches = [next(prefetcher) for _ in range(20)]
        assert wait_until(lambda: prefetcher.ready == 4)
    assert prefetcher.ready == 0  # close() dropped the batches it held: none waits for collection
    assert all(b.data["obs"].shape == (64, 4) for b in batches)

    torch = pytest.importorskip("torch")
    with Prefetcher(client, 32, depth=2, device="cpu") as prefetcher:
        batch = next(prefetcher)
    assert isinstance(batch.data["obs"], torch.Tensor) and batch.data["obs"].shape == (32, 4)
    assert batch.weights.dtype == torch.float32
    np.testing.assert_array_equal(batch.data["action"].numpy(), batch.sample.data["action"])

    server.stop(grace=0.1, checkpoint=False)
    broken = Prefetcher(connect(server.address, retry_for_s=0.2), 8, threads=1)
    # The sampler stops once it has queued its error; a queued error is not a batch ready.
    assert wait_until(lambda: "prefetch-0" not in {thread.name for thread in threading.enumerate()}, timeout=20)
    assert broken.ready == 0
    with pytest.raises(Exception, match="unavailable"):
        broken.get(timeout=20)
    broken.close()


def test_a_prefetcher_serves_whole_requests_within_its_depth(start_server, connect):
    server = start_server(capacity=1000)
    client = connect(server.address)
    client.insert(make_batch(500))
    client.flush()
    with Prefetcher(client, 16, depth=10, threads=2, batches_per_request=4) as prefetcher:
        assert wait_until(lambda: prefetcher.ready == 8)  # floor(10 / 4) = two requests of 4 queued
        seen = []
        for _ in range(20):
            seen.append(prefetcher.get(timeout=20))
            assert prefetcher.ready <= 8 + 3  # two requests, plus the rest of the one being served
        assert prefetcher.ready <= 8 + 3
    assert prefetcher.delivered == 20
    assert all(batch.data["obs"].shape == (16, 4) for batch in seen)
    with Prefetcher(client, 16, depth=2, threads=2, batches_per_request=4) as prefetcher:
        assert wait_until(lambda: prefetcher.ready == 4)  # a request bigger than depth: one queued
        first = prefetcher.get(timeout=20)
        assert first.data["obs"].shape == (16, 4)
        assert prefetcher.ready <= 4 + 3


def test_a_prefetcher_frees_released_batches_on_its_samplers_keeping_the_newest(start_server, connect):
    server = start_server(capacity=1000)
    client = connect(server.address)
    client.insert(make_batch(500))
    client.flush()
    with Prefetcher(client, 16, depth=2, threads=1, batches_per_request=2, device="cpu") as prefetcher:
        released = []
        for _ in range(3):
            batch = prefetcher.get(timeout=20)
            released.append(weakref.ref(batch))
            prefetcher.release(batch)
        del batch
        # The sampler frees what was released before its next request; taking batches makes room for it.
        assert wait_until(
            lambda: prefetcher.get(timeout=20) is not None and released[0]() is None and released[1]() is None,
            timeout=30,
        )
        assert released[2]() is not None  # the newest released batch waits for the next release


def test_mixed_sources_draw_fixed_fractions(start_server, connect):
    online = start_server(shard_id=0, capacity=1000)
    offline = start_server(shard_id=900, capacity=1000)
    online_client, offline_client = connect(online.address), connect(offline.address)
    online_client.insert(make_batch(100, start=0))
    offline_client.insert(make_batch(100, start=1000))
    online_client.flush()
    offline_client.flush()
    mixed = MixedReplay({"offline": (offline_client, 0.25), "online": (online_client, 0.75)})
    for batch in mixed.sample_batches(102, 5):
        from_offline = int((batch.data["action"] >= 1000).sum())
        assert from_offline == 26 and len(batch.keys) == 102  # 25.5 rounds to 26, 76.5 to 76
    result = mixed.update_priorities(batch.keys, np.ones(102))
    assert result.applied == 102
    with pytest.raises(ValueError, match="sum to 1.1"):
        MixedReplay({"a": (online_client, 0.6), "b": (offline_client, 0.5)})
    with pytest.raises(ValueError, match="both have shard id 0"):
        MixedReplay({"a": (online_client, 0.5), "b": (connect(online.address), 0.5)})
    stats = mixed.stats()
    assert (stats["inserts"], stats["samples"]) == (200, 5 * 102)
    mixed.close()


def test_a_mixed_sources_priorities_reach_a_shard_that_joined_it_after_the_mix_was_made(
    start_server, redis_server, connect
):
    """The online phase of an offline -> online run: a shard restarted or added later still gets
    the learner's priorities (keys route by the sources' shards as they are now)."""
    offline = start_server(shard_id=512)
    offline_client = connect(offline.address)
    offline_client.insert(make_batch(50, start=1000))
    offline_client.flush()
    start_server(shard_id=0, **shard_kwargs(redis_server))
    online = ShardedReplay(redis_server.url, "test", discovery_s=0.2)
    online.wait_for_shards(1)
    mixed = MixedReplay({"offline": (offline_client, 0.5), "online": (online, 0.5)})
    late = start_server(shard_id=1, selector="prioritized", **shard_kwargs(redis_server))
    assert wait_until(lambda: online.shard_ids() == [0, 1], timeout=5)
    late_client = connect(late.address)
    late_client.insert(make_batch(50))
    late_client.flush()
    keys = late_client.sample(8).keys
    result = mixed.update_priorities(keys, np.full(8, 5.0))
    assert (result.applied, result.dropped_stale) == (8, 0)
    mixed.close()
    online.close()  # its sources are the caller's to close: the watcher would outlive its Redis


# -- a shard that refuses this client's credentials ----------------------------------------------

RUN_CREDENTIALS = generate_credentials()
WRONG_CREDENTIALS = {
    "another run's token": ReplayCredentials(generate_credentials().token, RUN_CREDENTIALS.cert_pem),
    "another run's certificate": generate_credentials().for_clients(),
}


@pytest.mark.parametrize("wrong", WRONG_CREDENTIALS.values(), ids=WRONG_CREDENTIALS.keys())
def test_a_fixed_address_that_refuses_the_credentials_fails_construction_at_once(start_server, wrong):
    server = start_server(credentials=RUN_CREDENTIALS)
    started = time.monotonic()
    with pytest.raises(ReplayAuthenticationError, match=f"replay shard {server.address}"):
        ShardedReplay(addresses=[server.address], credentials=wrong, failover_after_s=30)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("wrong", WRONG_CREDENTIALS.values(), ids=WRONG_CREDENTIALS.keys())
def test_a_shard_found_later_that_refuses_is_logged_once_and_named_by_the_calls(start_server, caplog, wrong):
    """The shard is down at construction and comes up with other credentials: the watcher logs the
    refusal once (no traceback per discovery round) and inserts raise it, not "no live shard"."""
    reserved = start_server()
    port = reserved.port
    reserved.stop(grace=0, checkpoint=False)
    sharded = ShardedReplay(
        addresses=[f"127.0.0.1:{port}"], credentials=wrong, discovery_s=0.05, failover_after_s=0.2, insert_wait_s=1
    )
    try:
        with caplog.at_level(logging.INFO, logger="replay.membership"):
            start_server(port=port, credentials=RUN_CREDENTIALS)
            assert wait_until(lambda: "refuses this client's credentials" in caplog.text, 10)
            time.sleep(0.5)  # ten more discovery rounds
        assert caplog.text.count("refuses this client's credentials") == 1
        assert "shard discovery failed" not in caplog.text and sharded.shard_ids() == []
        with pytest.raises(ReplayAuthenticationError):
            sharded.insert(make_batch(5))
        with pytest.raises(ReplayAuthenticationError):
            sharded.wait_for_shards(1, timeout=0.3)
    finally:
        sharded.close()


def test_streamed_priorities_reach_only_shards_that_draw_by_priority(start_server, connect):
    """A uniform shard discards priorities: the learner's stream skips it (counted `unused`) and
    still updates the prioritized shard beside it; with only uniform shards nothing is sent, and
    keys of a shard that is not there are still counted lost."""
    prioritized = start_server(shard_id=0, capacity=100, selector="prioritized", alpha=1.0, seed=0)
    uniform = start_server(shard_id=1, capacity=100, selector="uniform", seed=1)
    for server, start in ((prioritized, 0), (uniform, 50)):
        client = connect(server.address)
        client.insert(make_batch(50, start=start))
        client.flush()
    sharded = ShardedReplay(None, "test", [prioritized.address, uniform.address], seed=0)
    try:
        batch = sharded.sample(64)
        on_uniform = int(((batch.keys >> np.uint64(54)).astype(int) == 1).sum())
        assert 0 < on_uniform < 64
        sharded.send_priorities(batch.keys, np.full(64, 3.0))
        counts = sharded.flush_priorities(timeout=30)
        assert counts.unused == on_uniform and counts.lost == 0
        assert counts.applied + counts.coalesced == 64 - on_uniform
        unique_prioritized = len(np.unique(batch.keys[(batch.keys >> np.uint64(54)).astype(int) == 0]))
        expected = 50 - unique_prioritized + 3.0 * unique_prioritized
        assert sharded.info().shards[0].priority_mass == pytest.approx(expected)
    finally:
        sharded.close()

    only_uniform = ShardedReplay(None, "test", [uniform.address], seed=0)
    try:
        keys = only_uniform.sample(16).keys
        only_uniform.send_priorities(keys, np.full(16, 2.0))
        strangers = keys.copy()
        strangers[:4] = (strangers[:4] & np.uint64((1 << 54) - 1)) | np.uint64(7 << 54)  # shard 7: none
        only_uniform.send_priorities(strangers[:4], np.full(4, 2.0))
        assert only_uniform.flush_priorities(timeout=30) == PriorityCounts(unused=16, lost=4)
    finally:
        only_uniform.close()


def test_a_shard_restarted_with_a_prioritized_selector_gets_priorities_again(start_server, connect):
    """A uniform shard replaced on the same address by a prioritized one: from the new process's
    first answer the learner sends it priorities again (not only after its next Info)."""
    uniform = start_server(shard_id=0, capacity=100, selector="uniform", seed=0)
    client = connect(uniform.address)
    client.insert(make_batch(50))
    client.flush()
    sharded = ShardedReplay(None, "test", [uniform.address], seed=0)
    try:
        sharded.send_priorities(sharded.sample(8).keys, np.full(8, 2.0))
        assert sharded.priority_counts().unused == 8
        uniform.stop(grace=0.2, checkpoint=False)
        restarted = start_server(shard_id=0, capacity=100, selector="prioritized", alpha=1.0, seed=1, port=uniform.port)
        fresh = connect(restarted.address)
        fresh.insert(make_batch(50))
        fresh.flush()
        keys = wait_for_sample_from(sharded, restarted)
        sharded.send_priorities(keys, np.full(len(keys), 3.0))
        counts = sharded.flush_priorities(timeout=30)
        assert counts.unused == 8 and counts.applied + counts.coalesced == len(keys)
        assert restarted.table.info().priority_mass > 50.0  # they reached the new process
    finally:
        sharded.close()


def wait_for_sample_from(sharded: ShardedReplay, server) -> np.ndarray:
    """Keys of the first batch `sharded` draws from `server`'s process (retrying while the client
    still reconnects to the restarted address)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            batch = sharded.sample(8, timeout=5)
        except ReplayError:
            if time.monotonic() > deadline:
                raise
            continue
        if server.table.info().samples > 0:
            return batch.keys
        assert time.monotonic() < deadline, "never sampled from the restarted shard"
