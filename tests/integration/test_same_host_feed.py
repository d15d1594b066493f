"""The same-host feed over real gRPC (servers on port 0, shard processes): samples through the
learner's shared memory equal those of the response, priorities still apply, and anything odd
falls back to the response (replay/same_host.py)."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest

from conftest import CARTPOLE_SPEC, make_batch, wait_until
from replay import ReplayClient, ShardedReplay, generate_credentials
from replay import same_host as same_host_module
from replay.same_host import NAME_PREFIX, REGION_DIR


def feed_files() -> set[str]:
    return {name for name in os.listdir(REGION_DIR) if name.startswith(NAME_PREFIX)}


@pytest.fixture
def made_regions(monkeypatch) -> list[str]:
    """Names of the regions this test's clients create (other test runs share /dev/shm)."""
    names: list[str] = []

    class Recorded(same_host_module.FeedRegion):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            names.append(self.name)

    monkeypatch.setattr(same_host_module, "FeedRegion", Recorded)
    return names


def test_batches_through_the_region_equal_the_responses_for_the_same_seed(start_server, connect):
    credentials = generate_credentials()
    servers = [start_server(capacity=1000, selector="prioritized", seed=3, credentials=credentials) for _ in (0, 1)]
    feed = connect(servers[0].address, credentials=credentials, same_host_feed="auto")
    inline = connect(servers[1].address, credentials=credentials)
    for client in (feed, inline):
        client.insert(make_batch(500))
        client.flush()

    for _ in range(6):  # the first goes inline and sizes the slots; the rest through the region
        a, b = feed.sample_batches(64, 4, beta=0.5), inline.sample_batches(64, 4, beta=0.5)
        for through_region, in_response in zip(a, b, strict=True):
            np.testing.assert_array_equal(through_region.keys, in_response.keys)
            np.testing.assert_array_equal(through_region.weights, in_response.weights)
            for name in CARTPOLE_SPEC:
                np.testing.assert_array_equal(through_region.data[name], in_response.data[name])
                assert through_region.data[name].dtype == in_response.data[name].dtype
    counts = feed.same_host_feed_counts()
    assert (counts.in_region, counts.inline, counts.refused, counts.regions) == (5, 1, 0, 1)
    assert inline.same_host_feed_counts() is None


def test_priorities_of_keys_sampled_through_the_region_apply(start_server, connect):
    server = start_server(capacity=1000, selector="prioritized", alpha=1.0, seed=1)
    client = connect(server.address, same_host_feed="auto")
    client.insert(make_batch(100))
    client.flush()
    client.sample(32)  # inline: sizes the slots
    sample = client.sample(32)
    assert client.same_host_feed_counts().in_region == 1
    np.testing.assert_array_equal(sample.data["obs"][:, 0], sample.data["action"].astype(np.float32))
    result = client.update_priorities(sample.keys, np.full(32, 4.0))
    distinct = len(np.unique(sample.keys))
    assert (result.applied, result.dropped_stale) == (32, 0)
    assert client.info().priority_mass == pytest.approx(100 - distinct + 4.0 * distinct)


def test_no_region_file_outlives_the_first_answer_through_it_nor_the_client(start_server, connect, made_regions):
    server = start_server(capacity=1000)
    client = connect(server.address, same_host_feed="auto")
    client.insert(make_batch(200))
    client.flush()
    client.sample(16)
    client.sample(16)  # through a new region: the shard mapped it, the learner unlinked it
    assert client.same_host_feed_counts().in_region == 1 and len(made_regions) == 1
    assert not feed_files() & set(made_regions)  # a learner killed now leaves nothing in /dev/shm
    client.close()
    assert not feed_files() & set(made_regions)


def test_a_shard_on_another_host_is_never_sent_a_region(start_server, connect):
    server = start_server(capacity=1000)
    server.host = "elsewhere/00000000-0000-0000-0000-000000000000"
    client = connect(server.address, same_host_feed="auto")
    client.insert(make_batch(200))
    client.flush()
    for _ in range(3):
        client.sample(16)
    counts = client.same_host_feed_counts()
    assert (counts.in_region, counts.regions) == (0, 0) and server.refused_regions == 0


def test_a_region_the_shard_refuses_falls_back_to_the_response_logged_once_then_off(
    start_server, connect, monkeypatch, caplog
):
    server = start_server(capacity=1000)
    client = connect(server.address, same_host_feed="auto")
    client.insert(make_batch(200))
    client.flush()
    real_fchmod = os.fchmod
    # Regions readable by others, as a wide umask or another tool might leave them: refused.
    monkeypatch.setattr(same_host_module.os, "fchmod", lambda fd, mode: real_fchmod(fd, 0o644))
    with caplog.at_level(logging.WARNING, logger="replay.same_host"):
        for _ in range(6):
            sample = client.sample(32)
            np.testing.assert_array_equal(sample.data["obs"][:, 0], sample.data["action"].astype(np.float32))
    counts = client.same_host_feed_counts()
    assert (counts.in_region, counts.refused, counts.regions) == (0, 3, 3)  # then the feed stays off
    assert server.refused_regions == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "replay.same_host"]
    assert sum("answered inline" in m for m in warnings) == 1 and "mode 0o644" in warnings[0]
    assert sum("is off for this client" in m for m in warnings) == 1


def test_a_shard_killed_mid_run_leaves_the_learner_sampling_the_other_through_its_region(qfleet_serve, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(CARTPOLE_SPEC.to_json())
    shards = [
        qfleet_serve("replay", "serve", "--spec", str(spec), "--shard-id", str(i), "--capacity", "10000")
        for i in (0, 1)
    ]
    addresses = [shard.address for shard in shards]
    learner = ShardedReplay(addresses=addresses, seed=0, same_host_feed="auto", failover_after_s=0.5)
    try:
        for i, address in enumerate(addresses):
            with ReplayClient(address) as client:
                client.insert(make_batch(500, start=1000 * i))
                client.flush()
        errors: list[Exception] = []
        drawn = [0]
        stop = threading.Event()

        def sample_on() -> None:
            while not stop.is_set():
                try:
                    batch = learner.sample(64, timeout=10)
                    np.testing.assert_array_equal(batch.data["obs"][:, 0], batch.data["action"].astype(np.float32))
                    drawn[0] += 1
                except Exception as exc:  # reported by the test
                    errors.append(exc)
                    return

        sampler = threading.Thread(target=sample_on, daemon=True)
        sampler.start()
        assert wait_until(lambda: all(c.in_region > 0 for c in learner.same_host_feed_counts().values()), timeout=30)
        shards[0].proc.kill()
        shards[0].proc.wait()
        after_kill = drawn[0]
        assert wait_until(lambda: drawn[0] > after_kill + 20 or errors, timeout=60), "sampling stopped"
        stop.set()
        sampler.join(timeout=30)
        assert not errors, errors
        assert learner.shard_ids() == [1]
        assert learner.same_host_feed_counts()[1].in_region > 20
        batch = learner.sample(64, timeout=10)
        assert set((batch.keys >> np.uint64(54)).astype(int)) == {1}
    finally:
        learner.close()


def test_a_shard_restarted_on_its_address_gets_a_new_region_after_one_inline_answer(start_server, connect):
    first = start_server(capacity=1000, seed=5)
    client = connect(first.address, same_host_feed="auto")
    client.insert(make_batch(300))
    client.flush()
    client.sample(32)
    client.sample(32)
    port = first.port
    first.stop(grace=0, checkpoint=False)
    second = start_server(capacity=1000, seed=5, port=port)  # knows nothing of the old (unlinked) region
    client.insert(make_batch(300))
    client.flush()
    for _ in range(3):
        sample = client.sample(32)
        np.testing.assert_array_equal(sample.data["obs"][:, 0], sample.data["action"].astype(np.float32))
    counts = client.same_host_feed_counts()
    assert (counts.in_region, counts.refused, counts.regions) == (3, 1, 2)
    assert second.refused_regions == 1


def test_a_sharded_draw_whose_share_per_shard_varies_reuses_a_few_regions(start_server, connect):
    servers = [start_server(capacity=1000, shard_id=i, seed=i) for i in (0, 1)]
    for i, server in enumerate(servers):
        client = connect(server.address)
        client.insert(make_batch(300, start=1000 * i))
        client.flush()
    learner = ShardedReplay(addresses=[s.address for s in servers], seed=0, same_host_feed="auto")
    try:
        for _ in range(30):
            batch = learner.sample(64, timeout=10)
            np.testing.assert_array_equal(batch.data["obs"][:, 0], batch.data["action"].astype(np.float32))
        counts = learner.same_host_feed_counts()
        assert sorted(counts) == [0, 1]
        for shard_counts in counts.values():  # shares of ~32 of 64: slots for 32, then 64 at most
            assert shard_counts.regions <= 2 and shard_counts.in_region >= 25 and shard_counts.refused == 0
    finally:
        learner.close()


def test_a_sample_naming_a_slot_is_retried_inline_never_resent_into_the_same_slot(start_server, connect):
    # One sample at a time: while another client's sample waits on the rate limiter, the feed's
    # call is answered SHARD_BUSY (retried); resent as it was, two attempts could write one slot.
    server = start_server(
        capacity=1000, samples_per_insert=1.0, min_size=10, error_buffer=5.0, max_concurrent_samples=1
    )
    feed = connect(server.address, same_host_feed="auto")
    other = connect(server.address)
    feed.insert(make_batch(10))
    feed.flush()
    feed.sample(2)  # inline: sizes the slots (the limiter lets 3 more items through)
    waiting = threading.Thread(target=other.sample, args=(4,), daemon=True)
    waiting.start()
    assert wait_until(lambda: feed.info().rate_limiter.waiting_samples == 1, timeout=30)
    got = []
    sampling = threading.Thread(target=lambda: got.append(feed.sample(2, timeout=60)), daemon=True)
    sampling.start()
    assert wait_until(lambda: feed.same_host_feed_counts().retired == 1, timeout=30)
    feed.insert(make_batch(6, start=10))  # within the window: releases the waiting sample, then the retry
    feed.flush()
    sampling.join(60)
    waiting.join(60)
    assert got and got[0].data["action"].shape == (2,)
    np.testing.assert_array_equal(got[0].data["obs"][:, 0], got[0].data["action"].astype(np.float32))
    counts = feed.same_host_feed_counts()
    assert (counts.in_region, counts.retired, server.refused_regions) == (0, 1, 0)
