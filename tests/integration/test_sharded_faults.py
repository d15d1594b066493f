"""Faults of a sharded replay, with shards run as `qfleet replay serve` processes and real Redis.

Each test counts transitions inserted (acknowledged) vs present afterwards vs reported lost.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from conftest import CARTPOLE_SPEC, make_batch, shard_kwargs, wait_until, writer_for
from replay import ShardedReplay, ShardRegistry


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(CARTPOLE_SPEC.to_json())
    return str(path)


def serve_args(spec_file, redis_server, shard_id, checkpoint_dir):
    where = ["--redis-url", redis_server.url, "--run", "faults", "--shard-id", str(shard_id)]
    timing = ["--heartbeat-s", "0.2", "--registry-ttl-s", "1.0"]
    storage = ["--checkpoint-dir", str(checkpoint_dir), "--capacity", "100000"]
    return ["replay", "serve", "--spec", spec_file, *where, *timing, *storage]


def start_pair(qfleet_serve, spec_file, redis_server, tmp_path):
    return [qfleet_serve(*serve_args(spec_file, redis_server, i, tmp_path / f"ckpt{i}")) for i in (0, 1)]


def test_sigkill_mid_run_fails_over_restarts_from_checkpoint_and_reports_the_loss(
    qfleet_serve, spec_file, redis_server, tmp_path, connect
):
    shards = start_pair(qfleet_serve, spec_file, redis_server, tmp_path)
    writer = ShardedReplay(redis_server.url, "faults", writer_id=writer_for(0, [0, 1]), discovery_s=0.2)
    learner = ShardedReplay(redis_server.url, "faults", discovery_s=0.2)
    writer.wait_for_shards(2)
    learner.wait_for_shards(2)

    writer.insert(make_batch(500))
    writer.flush()
    assert connect(shards[0].address).checkpoint().size == 500
    writer.insert(make_batch(300, start=500))  # after the checkpoint: lost with the process
    writer.flush()
    inserted = 800
    registry = ShardRegistry(redis_server.url, "faults")
    # A heartbeat reports the shard's insert count: what the restarted shard counts as lost.
    assert wait_until(lambda: registry.last_state(0).get("inserts") == inserted, timeout=5)
    registry.close()
    shards[0].proc.kill()
    shards[0].proc.wait()

    killed_at = time.monotonic()
    writer.insert(make_batch(200, start=800))
    writer.flush()
    failover_s = time.monotonic() - killed_at
    inserted += 200
    print(f"writer failed over in {failover_s:.2f}s")
    assert failover_s < 2.0, f"writer took {failover_s:.2f}s to fail over"
    assert connect(shards[1].address).info().inserts == 200

    # Sampling carries on from the shard that is left.
    batch = learner.sample(64, timeout=10)
    assert set((batch.keys >> np.uint64(54)).astype(int)) == {1}

    restarted = qfleet_serve(*serve_args(spec_file, redis_server, 0, tmp_path / "ckpt0"))
    assert "lost 300 transitions" in restarted.log()
    assert wait_until(lambda: learner.shard_ids() == [0, 1], timeout=10)
    info = learner.info()
    assert info.lost_transitions == 300
    assert info.size == inserted - info.lost_transitions == 700
    assert info.shards[0].inserts == 500

    # The writer goes back to its own shard once it has returned.
    assert wait_until(lambda: 0 in writer.shard_ids(), timeout=10)
    writer.insert(make_batch(50, start=1000))
    writer.flush()
    assert connect(restarted.address).info().inserts == 550
    writer.close()
    learner.close()


def test_sigterm_loses_nothing(qfleet_serve, spec_file, redis_server, tmp_path):
    shards = start_pair(qfleet_serve, spec_file, redis_server, tmp_path)
    writer = ShardedReplay(redis_server.url, "faults", writer_id=writer_for(0, [0, 1]), discovery_s=0.2)
    writer.wait_for_shards(2)
    writer.insert(make_batch(400))
    writer.flush()
    assert shards[0].signal(signal.SIGTERM) == 0

    writer.insert(make_batch(100, start=400))  # goes to shard 1 meanwhile
    writer.flush()
    qfleet_serve(*serve_args(spec_file, redis_server, 0, tmp_path / "ckpt0"))
    assert wait_until(lambda: writer.shard_ids() == [0, 1], timeout=10)
    info = writer.info()
    assert (info.inserts, info.size, info.lost_transitions) == (500, 500, 0)
    assert info.shards[0].size == 400
    writer.close()


def test_redis_restart_mid_run_components_re_register_and_carry_on(start_server, redis_server):
    for shard_id in (0, 1):
        start_server(shard_id=shard_id, **shard_kwargs(redis_server, run="faults"))
    sharded = ShardedReplay(redis_server.url, "faults", discovery_s=0.2)
    sharded.wait_for_shards(2)
    sharded.insert(make_batch(100))
    sharded.flush()

    redis_server.stop()
    sharded.insert(make_batch(100, start=100))  # data keeps flowing without the control plane
    sharded.flush()
    assert len(sharded.sample(32).keys) == 32
    # The last known shards are kept through the discovery rounds (every 0.2 s) that fail.
    assert not wait_until(lambda: sharded.shard_ids() != [0, 1], timeout=0.6)

    redis_server.start()  # same port, empty
    registry = ShardRegistry(redis_server.url, "faults")
    assert wait_until(lambda: sorted(registry.live_shards()) == [0, 1], timeout=5)
    start_server(shard_id=2, **shard_kwargs(redis_server, run="faults"))
    assert wait_until(lambda: sharded.shard_ids() == [0, 1, 2], timeout=5)
    assert sharded.info().inserts == 200
    sharded.close()
    registry.close()


def test_a_writer_waiting_on_a_closed_clients_stream_gets_its_batches_back_to_send_elsewhere(start_server):
    """A hung shard's writer blocks with its batches in flight; when its client is closed (the shard
    left the registry) the writer gets them back in a ReplayUnavailableError instead of waiting for
    ever, so ShardWriter fails over."""
    import threading

    from replay import ReplayClient, ReplayUnavailableError

    # A window of 10 inserts ahead of samples and nobody sampling: the second batch waits on the shard.
    server = start_server(capacity=1000, samples_per_insert=1.0, min_size=1, error_buffer=10)
    client = ReplayClient(server.address, max_in_flight=1, credentials=None)
    client.insert(make_batch(5))
    client.flush(timeout=10)
    client.insert(make_batch(50, start=5))  # admitted in part, then waits for samples
    outcome: list[BaseException] = []

    def third_insert() -> None:
        try:
            client.insert(make_batch(5, start=55))  # blocks: one batch in flight already
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=third_insert)
    writer.start()
    time.sleep(0.5)
    assert writer.is_alive()
    client.close()
    writer.join(timeout=30)
    assert not writer.is_alive(), "the waiting writer was never released"
    (error,) = outcome
    assert isinstance(error, ReplayUnavailableError)
    assert [batch["action"][0] for batch in error.unacknowledged] == [5]
