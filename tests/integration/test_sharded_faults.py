"""Faults of a sharded replay, with shards run as `qfleet replay serve` processes and real Redis.

Each test counts transitions inserted (acknowledged) vs present afterwards vs reported lost.
"""

from __future__ import annotations

import logging
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


def test_redis_restart_mid_run_components_re_register_and_carry_on(start_server, redis_server, caplog):
    caplog.set_level(logging.INFO, logger="replay.membership")
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
    # Said once, not at every round: a user's log is not flooded while Redis is away.
    warned = [r for r in caplog.records if "keeping the last known shards" in r.getMessage()]
    assert len(warned) == 1 and redis_server.url.split("@")[-1].split("/")[0] in warned[0].getMessage()

    redis_server.start()  # same port, empty
    registry = ShardRegistry(redis_server.url, "faults")
    assert wait_until(lambda: sorted(registry.live_shards()) == [0, 1], timeout=5)
    start_server(shard_id=2, **shard_kwargs(redis_server, run="faults"))
    assert wait_until(lambda: sharded.shard_ids() == [0, 1, 2], timeout=5)
    assert sharded.info().inserts == 200
    assert any("shard registry reachable again" in r.getMessage() for r in caplog.records)
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


def test_what_a_dead_shard_stored_of_batches_handed_back_to_the_writer_counts_lost_once(tmp_path):
    """One shard, killed (no final checkpoint) while a batch was cut short by its rate limiter; no
    shard takes the re-send within insert_wait_s, so the batches go back to the caller, who counts
    them lost. The shard comes back: what it had stored of them is given back, not stored twice,
    and the run's lost count is exact."""
    from types import SimpleNamespace

    from replay import ReplayServer, ReplayUnavailableError
    from system.train.records import RunCounters, take_shard_accounting

    settings = dict(checkpoint_dir=str(tmp_path), samples_per_insert=1.0, error_buffer=10, min_size=1)
    shard = ReplayServer(CARTPOLE_SPEC, port=0, limit_samples=False, **settings).start()
    writer = ShardedReplay(addresses=[shard.address], writer_id="run-actor-0", insert_wait_s=1.0)
    restarted = None
    try:
        for i in range(4):  # batch 1 acknowledged, batch 2 cut short by the limiter, 3 and 4 wait
            writer.insert(make_batch(10, start=10 * i))
        assert wait_until(lambda: shard.table.info().waiting_inserts == 1)
        stored = shard.table.info().inserts
        assert stored > 10
        shard.stop(grace=0, checkpoint=False)  # as a SIGKILL: nothing after the last checkpoint
        counted_lost = 0
        try:
            writer.insert(make_batch(10, start=100))
            writer.flush(10)
        except ReplayUnavailableError as exc:
            counted_lost = sum(len(batch["action"]) for batch in exc.unacknowledged)
        assert counted_lost == 40  # batches 2..5: none was acknowledged

        restarted = ReplayServer(CARTPOLE_SPEC, port=shard.port, limit_samples=False, **settings).start()
        assert restarted.lost_transitions == stored
        assert wait_until(lambda: writer.shard_ids() == [0], timeout=10)  # the discovery round sees it back
        writer.insert(make_batch(5, start=500))  # carries the receipt, handed back
        writer.flush(10)
        counters = RunCounters({}, eval_every_steps=0)
        counters.fleet_lost = counted_lost
        take_shard_accounting(
            counters,
            [
                SimpleNamespace(
                    inserts=restarted.table.info().inserts,
                    lost_transitions=restarted.lost_transitions,
                    accounting=restarted.accounting(),
                )
            ],
        )
        present = restarted.table.info().inserts
        acknowledged = 10 + 5
        assert (counters.transitions_stored_twice, counters.transitions_given_back) == (0, stored - 10)
        assert counters.transitions_inserted == acknowledged == present + counters.shards_lost - stored + 10
        assert counters.transitions_lost == 50  # 55 sent, 5 in replay
        assert counters.transitions_unattributed == 0
    finally:
        writer.close()
        for server in (shard, restarted):
            if server is not None:
                server.stop(grace=0, checkpoint=False)


def test_closing_a_client_whose_stream_backs_off_hands_its_batches_back_at_the_next_flush(tmp_path):
    """The shard died and the stream backs off before reconnecting; the client is closed (the shard
    re-registered elsewhere: Membership drops it). The batches it held come back for the writer
    to send elsewhere or count lost, instead of vanishing."""
    from replay import ReplayClient, ReplayServer, ReplayUnavailableError

    settings = dict(samples_per_insert=1.0, error_buffer=10, min_size=1, checkpoint_dir=str(tmp_path))
    server = ReplayServer(CARTPOLE_SPEC, port=0, **settings).start()
    client = ReplayClient(server.address, retry_for_s=30)
    for i in range(4):  # the rate limiter holds batches 2..4 unacknowledged
        client.insert(make_batch(10, start=10 * i))
    assert wait_until(lambda: server.table.info().waiting_inserts == 1)
    server.stop(grace=0, checkpoint=False)
    time.sleep(0.3)  # the stream is now backing off (a 30 s budget)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 5
    with pytest.raises(ReplayUnavailableError, match="the client was closed") as caught:
        client.flush(timeout=1)
    assert [batch["action"][0] for batch in caught.value.unacknowledged] == [10, 20, 30]
    client.flush(timeout=1)  # handed back once
    client.close()


def test_a_sender_waiting_on_a_client_closed_while_its_stream_backs_off_gets_the_batches_back(start_server):
    import threading

    from replay import ReplayClient, ReplayUnavailableError

    server = start_server(samples_per_insert=1.0, error_buffer=10, min_size=1)
    client = ReplayClient(server.address, retry_for_s=30, max_in_flight=1)
    client.insert(make_batch(10))
    client.insert(make_batch(10, start=10))  # held by the rate limiter: the window is full
    assert wait_until(lambda: server.table.info().waiting_inserts == 1)
    server.stop(grace=0, checkpoint=False)
    time.sleep(0.3)  # backing off
    outcome: list[BaseException] = []

    def sender() -> None:
        try:
            client.insert(make_batch(10, start=20))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    assert not wait_until(lambda: not thread.is_alive(), timeout=0.3)  # waiting for room
    client.close()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the sender was never released"
    (error,) = outcome
    assert isinstance(error, ReplayUnavailableError)
    assert [batch["action"][0] for batch in error.unacknowledged] == [10]  # the batch in flight (it holds its own)


def test_a_shard_killed_mid_stream_and_restarted_leaves_the_accounting_exact(redis_server, tmp_path):
    """Two shards on a real registry; the writer's shard holds its batches on its rate limiter and
    has stored part of one when it is killed (no final checkpoint). The writer re-sends what had
    no acknowledgement to the other shard, with a receipt; the killed shard restarts from its
    checkpoint directory. Every item acknowledged to the writer is accounted for exactly:
    acknowledged == present + lost by shards - stored twice, with some stored twice."""
    from replay import ReplayServer, reconcile, writer_tag

    def start(shard_id: int, port: int = 0, **limits) -> ReplayServer:
        settings = shard_kwargs(redis_server, run="exact", checkpoint_dir=str(tmp_path / f"ckpt{shard_id}"))
        return ReplayServer(CARTPOLE_SPEC, port=port, shard_id=shard_id, **settings, **limits).start()

    limited = dict(samples_per_insert=1.0, error_buffer=10, min_size=1)
    shards = [start(0, **limited), start(1)]
    writer_id = writer_for(0, [0, 1])
    writer = ShardedReplay(redis_server.url, "exact", writer_id=writer_id, discovery_s=0.2, max_in_flight=4)
    restarted = None
    try:
        writer.wait_for_shards(2)
        for i in range(4):  # batch 1 acknowledged; batch 2 cut short by shard 0's limiter; 3, 4 wait
            writer.insert(make_batch(10, start=10 * i))
        assert wait_until(lambda: shards[0].table.info().waiting_inserts == 1)
        stored = shards[0].table.info().inserts
        assert 10 < stored < 20
        shards[0].stop(grace=0, checkpoint=False)  # killed mid-stream: nothing after its last checkpoint
        writer.insert(make_batch(10, start=40))
        writer.flush(timeout=30)  # batches 2..5 re-sent to shard 1, the receipt with them
        acknowledged = 50

        restarted = start(0, port=shards[0].port, **limited)
        assert restarted.lost_transitions == stored
        shard_list = [restarted, shards[1]]
        result = reconcile(shard.accounting() for shard in shard_list)
        present = sum(shard.table.info().inserts for shard in shard_list)
        assert result.stored_twice == stored - 10 > 0 and result.given_back == 0
        assert acknowledged == present + restarted.lost_transitions - result.stored_twice
        assert result.by_writer == {writer_tag(writer_id): acknowledged}
        assert (result.unresolved, result.refused) == (0, 0)
    finally:
        writer.close()
        for server in (*shards, restarted):
            if server is not None:
                server.stop(grace=0, checkpoint=False)


def test_more_receipts_than_one_request_carries_all_reach_the_shard_over_the_next_inserts(tmp_path):
    """After many failovers a writer may hold more receipts than one insert request carries: it
    spreads them over its next requests, so the shard's ledger keeps every one and drops none."""
    from replay import ReplayServer
    from replay.accounting import writer_tag
    from replay.insert_ledger import Receipt
    from replay.wire import MAX_RESENT_FROM

    shard = ReplayServer(CARTPOLE_SPEC, port=0, checkpoint_dir=str(tmp_path)).start()
    writer = ShardedReplay(addresses=[shard.address], writer_id="run-actor-0")
    try:
        tag = writer_tag("run-actor-0")
        held = [(0, stream, 10, 0) for stream in range(1, MAX_RESENT_FROM + 37)]
        writer._writer._receipts = list(held)  # as if its earlier streams to shard 0 had been given up on
        writer.insert(make_batch(10))
        writer.flush(10)
        assert len(shard.ledger.receipts()) == MAX_RESENT_FROM  # one request's worth; the rest wait
        writer.insert(make_batch(10, start=10))
        writer.flush(10)
        assert set(shard.ledger.receipts()) == {Receipt(*r, tag) for r in held}
        assert shard.ledger.dropped_receipts == 0
    finally:
        writer.close()
        shard.stop(grace=0, checkpoint=False)
