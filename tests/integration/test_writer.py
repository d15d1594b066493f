"""`TransitionWriter` against a real shard on a free port: what it sends when, and how every
transition it was given ends up counted as inserted or lost."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import actors.writer
from actors import TransitionWriter
from conftest import make_batch, wait_until
from replay import DeadlineExceededError, ReplayClient, ReplayTLSError, ShardedReplay, generate_credentials


def stored_ids(server) -> list[int]:
    """The item numbers (make_batch's `action` column) the shard holds, sorted."""
    arrays, _ = server.table.state()
    return sorted(arrays["column/action"].tolist())


def sharded(server, insert_wait_s: float = 5.0) -> ShardedReplay:
    address = f"127.0.0.1:{server.port}"
    return ShardedReplay(addresses=[address], discovery_s=0.05, failover_after_s=0.2, insert_wait_s=insert_wait_s)


@pytest.fixture
def writers():
    """Builds writers; closes every one at teardown."""
    made: list[TransitionWriter] = []

    def make(replay, **kwargs) -> TransitionWriter:
        writer = TransitionWriter(replay, **{"batch_items": 100, **kwargs})
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


def test_transitions_go_out_in_messages_of_batch_items_and_the_rest_at_flush(start_server, writers):
    server = start_server(capacity=1000)
    writer = writers(sharded(server))
    writer.add(make_batch(60))
    writer.add(make_batch(30, start=60))
    assert server.table.info().inserts == 0  # 90 < batch_items: still buffered
    writer.add(make_batch(20, start=90))  # 110 >= 100: one message of the first 100, 10 kept
    assert wait_until(lambda: server.table.info().inserts == 100, 5)
    assert writer.sent == 100
    writer.add(make_batch(250, start=110))  # 260 held: two more messages of 100, 60 kept
    assert wait_until(lambda: server.table.info().inserts == 300, 5)
    assert writer.sent == 300
    writer.flush()
    assert stored_ids(server) == list(range(360))
    assert (writer.sent, writer.inserted, writer.lost) == (360, 360, 0)


def test_inserted_counts_acknowledged_transitions_as_of_the_last_flush(start_server, writers):
    server = start_server(capacity=1000)
    writer = writers(sharded(server), batch_items=10)
    writer.add(make_batch(12))
    writer.add(make_batch(3, start=12))
    assert (writer.sent, writer.inserted) == (10, 0)  # one message of 10 out, not flushed yet
    writer.flush()
    assert (writer.sent, writer.inserted) == (15, 15)


def test_close_flushes_what_is_buffered_and_closes_the_replay(start_server, writers):
    server = start_server(capacity=1000)
    writer = writers(sharded(server))
    writer.add(make_batch(7))
    writer.close()
    assert stored_ids(server) == list(range(7))
    assert writer.inserted == 7


def test_transitions_no_shard_takes_within_insert_wait_s_are_counted_lost_once(start_server, writers, caplog):
    server = start_server(capacity=1000)
    writer = writers(sharded(server, insert_wait_s=0.3), name="actor 7")
    writer.add(make_batch(40))
    writer.flush()
    server.stop(grace=0.1, checkpoint=False)
    with caplog.at_level(logging.ERROR, logger="actors.writer"):
        writer.add(make_batch(30, start=40))
        writer.flush()
    assert (writer.sent, writer.inserted, writer.lost) == (70, 40, 30)
    assert "actor 7: lost 30 transitions, no replay shard took them" in caplog.text
    writer.flush()  # nothing pending: nothing counted twice
    assert (writer.inserted, writer.lost) == (40, 30)


def test_a_shard_back_within_insert_wait_s_gets_the_held_transitions_and_nothing_is_lost(start_server, writers):
    server = start_server(capacity=1000)
    replay = sharded(server, insert_wait_s=30.0)
    writer = writers(replay)
    port = server.port
    server.stop(grace=0.1, checkpoint=False)
    writer.add(make_batch(50))
    flushing = threading.Thread(target=writer.flush)
    flushing.start()
    try:
        assert wait_until(lambda: replay.failovers >= 1, 10)  # the writer found no shard and holds the batch
        back = start_server(capacity=1000, port=port)
    finally:
        flushing.join(timeout=30)
    assert not flushing.is_alive()
    assert (writer.sent, writer.inserted, writer.lost) == (50, 50, 0)
    assert stored_ids(back) == list(range(50))


def test_a_message_also_goes_out_at_insert_max_bytes(start_server, writers, monkeypatch):
    import actors.writer

    server = start_server(capacity=1000)
    batch = make_batch(10)
    monkeypatch.setattr(actors.writer, "INSERT_MAX_BYTES", sum(column.nbytes for column in batch.values()))
    writer = writers(sharded(server), batch_items=1000)
    writer.add(batch)
    assert wait_until(lambda: server.table.info().inserts == 10, 5)
    assert stored_ids(server) == list(range(10))


def test_a_replay_that_refuses_the_credentials_stops_the_writer_instead_of_losing_forever(
    start_server, writers, caplog
):
    """A failed TLS handshake (another run's certificate) is raised at once and logged once; no
    transition is counted lost, as with a shard that is merely down."""
    run = generate_credentials()
    server = start_server(capacity=1000, credentials=run)
    client = ReplayClient(server.address, credentials=generate_credentials().for_clients(), retry_for_s=30)
    writer = writers(client, batch_items=10)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="actors.writer"):
        for _ in range(2):
            writer.add(make_batch(10))
            with pytest.raises(ReplayTLSError):
                writer.flush()
    assert time.monotonic() - started < 5 and writer.refused and writer.lost == 0
    assert caplog.text.count("replay refuses this actor's credentials") == 1
    assert server.table.info().inserts == 0


def test_a_writer_held_back_by_the_shards_rate_limiter_reports_its_wait_until_samples_release_it(
    start_server, connect, writers, monkeypatch
):
    monkeypatch.setattr(actors.writer, "HELD_BACK_AFTER_S", 0.2)
    server = start_server(capacity=1000, samples_per_insert=1.0, error_buffer=10)  # ~11 items ahead at most
    waits: list[float] = []
    writer = writers(sharded(server), batch_items=50, on_held_back=waits.append)
    flushed = threading.Event()

    def write() -> None:
        writer.add(make_batch(50))
        writer.flush()
        flushed.set()

    threading.Thread(target=write, daemon=True).start()
    assert wait_until(lambda: len(waits) >= 2, 5), "the held-back flush was not reported"
    assert not flushed.is_set() and waits[-1] > waits[0] >= 0.2
    reader = connect(server.address)

    def sample_some() -> bool:
        try:
            reader.sample(5, timeout=0.5)
        except DeadlineExceededError:  # the shard is between pieces of the insert
            pass
        return flushed.is_set()

    assert wait_until(sample_some, 10, step=0)
    assert (writer.inserted, writer.lost) == (50, 0)
