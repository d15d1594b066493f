"""One client cannot starve or exhaust a shard: every request is bounded before it takes the lock.

Real shards on port 0, real clients, and raw gRPC calls for what a well-behaved client never sends.
"""

from __future__ import annotations

import math
import queue
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import make_batch, wait_until
from replay import (
    CheckpointError,
    InvalidBatchError,
    ReplayClient,
    ReplayError,
    ReplayServer,
    ReplayUnavailableError,
    grpc_options,
    wire,
)
from replay import checkpoint as ckpt
from replay._proto import replay_pb2

_SERVICE = "/qfleet.replay.ReplayService"


class RawInsert:
    """An Insert stream that sends exactly the bytes it is given (or nothing)."""

    def __init__(self, channel: grpc.Channel):
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        method = channel.stream_stream(
            f"{_SERVICE}/Insert",
            request_serializer=lambda raw: raw,
            response_deserializer=replay_pb2.InsertResponse.FromString,
        )
        self.call = method(iter(self.requests.get, None))

    def send(self, raw: bytes) -> replay_pb2.InsertResponse:
        self.requests.put(raw)
        return next(self.call)

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


@pytest.fixture
def raw_channel():
    """Opens raw gRPC channels to a shard; closes every one at teardown."""
    channels: list[grpc.Channel] = []

    def open_channel(address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address, options=grpc_options(512))
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def insert_bytes(columns: dict[str, np.ndarray], writer_id: int = 1, sequence: int = 1) -> bytes:
    return wire.encode_insert_request(columns, writer_id=writer_id, sequence=sequence, timeout_ms=0)


# -- Sample: items, bytes, waits ---------------------------------------------------------------------


def test_a_sample_of_a_billion_items_is_refused_at_once_and_counts_nothing(start_server, connect, monkeypatch):
    server = start_server(capacity=1000, min_size=1)
    client = connect(server.address)
    client.insert(make_batch(100))
    client.flush()
    reached = []

    def sample(*args, **kwargs):  # the table (and its lock) must not be reached at all
        reached.append(args)
        raise AssertionError("the table was asked for the sample")

    monkeypatch.setattr(server.table, "sample", sample)
    started = time.monotonic()
    with pytest.raises(InvalidBatchError, match="max_sample_items"):
        client.sample_batches(1000, 1_000_000)
    assert time.monotonic() - started < 2.0  # one round trip, even on a loaded machine
    assert reached == []
    assert client.info().samples == 0


def test_a_response_over_the_clients_message_limit_fails_fast_and_is_drawn_once(start_server, connect):
    server = start_server(capacity=1000)
    client = connect(server.address, max_message_mb=1)  # the shard allows 512 MiB: only the client refuses
    client.insert(make_batch(100))
    client.flush()

    started = time.monotonic()
    with pytest.raises(ReplayError, match="RESOURCE_EXHAUSTED"):
        client.sample(20_000)  # 20k items of 40 + 24 bytes: more than 1 MiB
    assert time.monotonic() - started < 5.0  # not retried for retry_for_s=30
    assert client.info().samples == 20_000  # drawn and handed over once, not once per retry


def test_a_sample_whose_response_exceeds_the_message_size_is_refused_naming_it(start_server, connect):
    server = start_server(capacity=1000, max_message_mb=1)
    client = connect(server.address)
    client.insert(make_batch(100))
    client.flush()

    with pytest.raises(InvalidBatchError, match="max_message_mb=1"):
        client.sample(20_000)  # 20k items of 40 + 24 bytes: more than 1 MiB
    assert len(client.sample(1000).keys) == 1000  # well under the limit: served
    assert client.info().samples == 1000


def test_a_cancelled_blocked_sample_frees_its_budget_within_two_seconds(start_server, connect, raw_channel):
    # spi 1, min_size 10, error_buffer 10: the sampling budget is inserts - samples.
    server = start_server(capacity=1000, samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    client = connect(server.address)
    client.insert(make_batch(10))
    client.flush()
    client.sample(10, timeout=5)  # spends the whole budget

    sample = raw_channel(server.address).unary_unary(
        f"{_SERVICE}/Sample", request_serializer=replay_pb2.SampleRequest.SerializeToString
    )
    blocked = sample.future(replay_pb2.SampleRequest(batch_size=5, num_batches=1, beta=-1.0))
    assert wait_until(lambda: client.info().rate_limiter.waiting_samples == 1, timeout=5)
    blocked.cancel()
    assert wait_until(lambda: client.info().rate_limiter.waiting_samples == 0, timeout=2)

    client.insert(make_batch(5, start=10))
    client.flush()
    assert len(client.sample(5, timeout=2).keys) == 5  # the cancelled call took none of it
    assert client.info().samples == 15


class PacedWriter:
    """Inserts `batch` items every `period_s` on its own thread (a steady actor), until paused."""

    def __init__(self, client: ReplayClient, batch: int = 32, period_s: float = 0.02):
        self.client, self.batch, self.period_s = client, batch, period_s
        self.running, self.stopped = threading.Event(), threading.Event()
        self._inserting = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = 0
        while not self.stopped.is_set():
            if not self.running.wait(0.05):
                continue
            with self._inserting:
                if not self.running.is_set():
                    continue
                self.client.insert(make_batch(self.batch, start=start))
            start += self.batch
            time.sleep(self.period_s)

    def pause(self) -> None:
        """Returns once no insert of this writer is on its way: none starts after it."""
        self.running.clear()
        with self._inserting:
            pass
        self.client.flush(timeout=10)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


def sampling_rate(client: ReplayClient, window_s: float = 1.0, windows: int = 3) -> float:
    """The best of `windows` measurements of batches of 32 sampled per second (noise only lowers one)."""
    best = 0.0
    for _ in range(windows):
        batches, started = 0, time.monotonic()
        while time.monotonic() - started < window_s:
            client.sample(32, timeout=5)
            batches += 1
        best = max(best, batches / (time.monotonic() - started))
    return best


def test_cancelled_blocked_samples_take_nothing_from_the_learners_budget(start_server, connect, raw_channel):
    # spi 1: what the limiter lets the learner draw is exactly what the writer inserted; a cancelled
    # Sample that still took its draw (or held its slot) would show in the counters below.
    server = start_server(capacity=100_000, samples_per_insert=1.0, min_size=100, error_buffer=400.0)
    learner = connect(server.address)
    writer = PacedWriter(connect(server.address))
    try:
        writer.running.set()
        sampling_rate(learner, windows=1)  # spends the limiter's initial slack: steady state from here

        # The writer stops; the learner spends what is left; then four Samples block and are cancelled.
        writer.pause()
        with pytest.raises(ReplayError):
            while True:
                learner.sample(32, timeout=0.3)
        spent = server.table.info()
        sample = raw_channel(server.address).unary_unary(
            f"{_SERVICE}/Sample", request_serializer=replay_pb2.SampleRequest.SerializeToString
        )
        blocked = [sample.future(replay_pb2.SampleRequest(batch_size=300, num_batches=1, beta=-1.0)) for _ in range(4)]
        assert wait_until(lambda: learner.info().rate_limiter.waiting_samples == 4, timeout=60)
        for call in blocked:
            call.cancel()
        assert wait_until(lambda: learner.info().rate_limiter.waiting_samples == 0, timeout=60)
        after = server.table.info()
        assert (after.samples, after.diff, after.inserts) == (spent.samples, spent.diff, spent.inserts)
        assert all(call.cancelled() for call in blocked)

        # 320 new items: the learner draws 320 (spi 1), and only it: a cancelled Sample that
        # still waited for budget would take its 300 as the items arrive.
        writer.client.insert(make_batch(320, start=10**6))
        writer.client.flush(timeout=10)
        for _ in range(10):
            learner.sample(32, timeout=30)
        assert server.table.info().samples == spent.samples + 320
    finally:
        writer.close()


def test_a_sample_timeout_beyond_the_shards_max_wait_is_honoured(start_server, connect):
    server = start_server(capacity=1000, min_size=10, max_sample_wait_s=0.2)
    client = connect(server.address)
    client.insert(make_batch(5))
    client.flush()
    result: queue.SimpleQueue = queue.SimpleQueue()
    waiter = threading.Thread(target=lambda: result.put(_outcome(lambda: client.sample(5, timeout=30))))
    waiter.start()
    # Several of the shard's 0.2 s waits pass: the client asks again until its own deadline.
    assert wait_until(lambda: client.info().rate_limiter.sample_wait_seconds > 1.0, timeout=20)
    assert waiter.is_alive()
    client.insert(make_batch(5, start=5))
    client.flush()
    waiter.join(timeout=20)
    assert len(result.get(timeout=1).keys) == 5


def _outcome(call):
    """What `call` returned, or the exception it raised."""
    try:
        return call()
    except Exception as exc:  # handed to the test thread, which fails on it
        return exc


# -- concurrency and streams --------------------------------------------------------------------------


def test_sixty_five_idle_insert_streams_do_not_stop_a_fresh_info(start_server, connect, raw_channel):
    server = start_server(capacity=1000)
    fresh = connect(server.address, retry_for_s=0)
    channel = raw_channel(server.address)
    streams = [RawInsert(channel) for _ in range(65)]
    for writer, stream in enumerate(streams):
        stream.requests.put(insert_bytes(make_batch(1, start=writer), writer_id=writer + 1))  # then idle
    try:
        # Every stream the shard admitted holds a handler thread now; those beyond the cap were
        # refused at once, not queued behind the others.
        cap = server.config.max_insert_streams
        assert wait_until(lambda: fresh.info(timeout=5).inserts == cap, timeout=20)
        assert wait_until(lambda: sum(s.call.done() for s in streams) == 65 - cap, timeout=20)
        assert {s.call.code() for s in streams if s.call.done()} == {grpc.StatusCode.RESOURCE_EXHAUSTED}

        started = time.monotonic()
        assert fresh.info(timeout=5).size == cap
        assert time.monotonic() - started < 3.0
    finally:
        for stream in streams:
            stream.close()


def test_an_idle_insert_stream_is_cancelled_and_its_client_reopens_on_the_next_insert(
    start_server, connect, raw_channel
):
    server = start_server(capacity=1000, insert_idle_s=0.3)
    client = connect(server.address)
    client.insert(make_batch(10))
    client.flush()

    idle = RawInsert(raw_channel(server.address))  # opened after the client's last batch
    assert wait_until(idle.call.done, timeout=5)
    assert idle.call.code() == grpc.StatusCode.CANCELLED
    idle.close()

    client.insert(make_batch(10, start=10))  # the client's stream was cancelled too
    client.flush(timeout=5)
    assert client.info().inserts == 20


def test_insert_streams_past_their_max_age_reconnect_without_losing_or_repeating_a_batch(start_server, connect):
    server = start_server(capacity=10_000, insert_stream_max_age_s=0.001)  # ends after each batch
    client = connect(server.address, max_in_flight=4)
    for b in range(40):
        client.insert(make_batch(25, start=b * 25))
    client.flush(timeout=10)
    info = client.info()
    assert (info.inserts, info.size) == (1000, 1000)  # re-sent batches were recognised, none lost


def test_a_writer_refused_by_a_full_shard_gets_its_batches_back_as_unavailable(start_server, connect, raw_channel):
    # 1 Sample + 2 priority streams + 4 reserved + 1 Insert stream: a second Insert stream is
    # refused as long as the first is open.
    server = start_server(capacity=1000, max_workers=8, max_concurrent_samples=1)
    holder = RawInsert(raw_channel(server.address))
    assert holder.send(insert_bytes(make_batch(1))).inserted == 1
    writer = connect(server.address, retry_for_s=0.5)
    writer.insert(make_batch(3, start=1))
    with pytest.raises(ReplayUnavailableError) as refused:
        writer.flush(timeout=20)
    assert len(refused.value.unacknowledged) == 1  # for the caller to send elsewhere or count
    assert len(refused.value.unacknowledged[0]["obs"]) == 3
    holder.close()


# -- priorities -------------------------------------------------------------------------------------


def test_priorities_of_1e308_leave_priority_mass_and_weights_finite(start_server, connect):
    server = start_server(capacity=100, selector="prioritized", alpha=1.0, seed=3)
    client = connect(server.address)
    client.insert(make_batch(20))
    client.flush()
    keys = np.unique(client.sample(20).keys)[:2]
    assert len(keys) == 2

    client.update_priorities(keys, np.full(2, 1e308))
    assert math.isfinite(client.info().priority_mass)
    sample = client.sample(64)
    assert np.all(np.isfinite(sample.weights)) and np.all(np.isfinite(sample.probabilities))
    with pytest.raises(InvalidBatchError, match="finite value"):
        client.update_priorities(keys, np.array([np.inf, -1.0]))


def test_a_priority_update_of_more_keys_than_the_cap_is_refused_before_the_table(start_server, connect, monkeypatch):
    server = start_server(capacity=1000, selector="prioritized", max_priority_updates=100)
    client = connect(server.address)
    client.insert(make_batch(200))
    client.flush()
    keys = client.sample(200).keys
    reached = []
    update = server.table.update_priorities
    monkeypatch.setattr(server.table, "update_priorities", lambda *a: reached.append(len(a[0])) or update(*a))

    with pytest.raises(InvalidBatchError, match="priority update of 101 keys exceeds max_priority_updates=100"):
        client.update_priorities(keys[:101], np.ones(101))
    assert reached == []  # refused before the table (and its lock)
    client.update_priorities(keys[:100], np.ones(100))  # at the cap: applied
    assert reached == [100]


# -- decoding ----------------------------------------------------------------------------------------


def _entry(name: bytes, tensor: bytes) -> bytes:
    """One map<string, Tensor> entry of a Batch: {1: name, 2: tensor}, with its field key."""
    body = b"\x0a" + bytes([len(name)]) + name + b"\x12" + bytes([len(tensor)]) + tensor
    return b"\x0a" + bytes([len(body)]) + body


def _length_prefixed(field_key: bytes, body: bytes) -> bytes:
    length, out = len(body), bytearray()
    while length > 0x7F:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return field_key + bytes(out) + body


def test_a_batch_of_a_million_columns_not_in_the_spec_is_refused_quickly(start_server, raw_channel):
    server = start_server(capacity=1000)
    tensor = b"\x0a\x05uint8\x12\x01\x01\x1a\x01\x00"  # dtype uint8, shape [1], one byte
    batch = _entry(b"zz", tensor) * 1_000_000
    raw = _length_prefixed(b"\x0a", batch) + b"\x10\x01\x18\x01"  # writer 1, sequence 1
    stream = RawInsert(raw_channel(server.address))
    started = time.monotonic()
    response = stream.send(raw)
    assert time.monotonic() - started < 3.0  # about 0.1 s; decoding every column took about 10 s
    assert response.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "'zz' is not in the spec" in response.message
    stream.close()


def test_a_message_of_millions_of_unknown_fields_is_refused_quickly(start_server, raw_channel):
    server = start_server(capacity=1000)
    raw = b"\x78\x00" * 40_000_000  # field 15 (unknown), varint 0, forty million times
    stream = RawInsert(raw_channel(server.address))
    started = time.monotonic()
    response = stream.send(raw)
    assert time.monotonic() - started < 5.0  # well under 1 s; parsing every field took about 15 s
    assert response.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "more than" in response.message
    stream.close()


def test_a_shape_of_65_dimensions_fails_its_batch_and_the_stream_carries_on(start_server, connect, raw_channel):
    server = start_server(capacity=1000)
    bad = replay_pb2.InsertRequest(writer_id=1, sequence=1)
    for name, value in make_batch(1).items():
        tensor = bad.batch.columns[name]
        tensor.dtype, tensor.data = value.dtype.name, value.tobytes()
        tensor.shape[:] = value.shape
    bad.batch.columns["obs"].shape[:] = [1] * 65  # one float32 in 65 dimensions
    bad.batch.columns["obs"].data = bad.batch.columns["obs"].data[:4]
    stream = RawInsert(raw_channel(server.address))

    response = stream.send(bad.SerializeToString())
    assert response.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "more than 32 dimensions" in response.message
    good = stream.send(insert_bytes(make_batch(4), sequence=2))
    assert (good.code, good.inserted) == (0, 4)
    stream.close()
    assert connect(server.address).info().rejected_batches == 1


def test_the_per_writer_deduplication_map_keeps_only_the_most_recent_writers(start_server, connect, raw_channel):
    server = start_server(capacity=1000, max_tracked_writers=4)
    stream = RawInsert(raw_channel(server.address))
    for writer in range(10):
        assert stream.send(insert_bytes(make_batch(1, start=writer), writer_id=writer + 1)).inserted == 1

    assert stream.send(insert_bytes(make_batch(1), writer_id=10)).inserted == 0  # recent: a re-send
    assert stream.send(insert_bytes(make_batch(1), writer_id=1)).inserted == 1  # forgotten: stored
    stream.close()
    assert connect(server.address).info().inserts == 11


# -- checkpoints ------------------------------------------------------------------------------------


def test_planted_out_of_range_checkpoints_fall_back_to_the_previous_good_one(start_server, tmp_path):
    directory = tmp_path / "replay"
    server = start_server(capacity=100, selector="prioritized", checkpoint_dir=str(directory))
    with ReplayClient(server.address) as client:
        client.insert(make_batch(30))
        client.flush()
    good, _, _ = server.checkpoint()
    server.stop(grace=0.2, checkpoint=False)

    identity = ckpt.TableIdentity(server.spec, 100, "prioritized")
    loaded = ckpt.read_checkpoint(good, identity)
    oversized = {
        name: np.concatenate([a] * 4) if name.startswith("column/") else a for name, a in loaded.arrays.items()
    }
    oversized["generations"] = np.ones(120, np.uint32)
    ckpt.write_checkpoint(directory, identity, oversized, {**loaded.counters, "size": 120, "inserts": 120})
    nan_weights = dict(loaded.arrays, **{"selector/weights": np.full(100, np.nan)})
    ckpt.write_checkpoint(directory, identity, nan_weights, loaded.counters)
    no_weights = {name: a for name, a in loaded.arrays.items() if not name.startswith("selector/")}
    planted, _ = ckpt.write_checkpoint(tmp_path / "other", identity, no_weights, loaded.counters)
    with pytest.raises(CheckpointError, match="selector/weights missing"):
        ckpt.read_checkpoint(planted, identity)  # a prioritized table could not restore from it

    restarted = ReplayServer(server.spec, capacity=100, selector="prioritized", checkpoint_dir=str(directory))
    restarted.start()
    try:
        assert restarted.restored_from == good
        assert len(restarted.refused_checkpoints) == 2
        with ReplayClient(restarted.address) as client:
            assert client.info().size == 30
            assert np.all(np.isfinite(client.sample(16).weights))
    finally:
        restarted.stop(grace=0.2, checkpoint=False)


def test_checkpoints_are_written_one_at_a_time_and_a_second_caller_is_told_busy(
    start_server, connect, raw_channel, tmp_path
):
    server = start_server(capacity=100, checkpoint_dir=str(tmp_path / "replay"))
    with ReplayClient(server.address) as client:
        client.insert(make_batch(30))
        client.flush()
    checkpoint = raw_channel(server.address).unary_unary(
        f"{_SERVICE}/Checkpoint",
        request_serializer=replay_pb2.CheckpointRequest.SerializeToString,
        response_deserializer=replay_pb2.CheckpointResponse.FromString,
    )
    with server._checkpoint_lock:  # a checkpoint (periodic, or another caller's) is being written
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as busy:
            checkpoint(replay_pb2.CheckpointRequest(), timeout=5)
        assert time.monotonic() - started < 2.0  # refused at once, not queued behind it
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a checkpoint is being written" in busy.value.details()
        written = [path.name for path in (tmp_path / "replay").iterdir() if path.name != "acknowledged-inserts"]
        assert written == []  # nothing written meanwhile (the shard's insert ledger aside)

        # ReplayClient takes the refusal as "busy" and asks again until its retry deadline.
        result: queue.SimpleQueue = queue.SimpleQueue()
        waiter = threading.Thread(target=lambda: result.put(_outcome(connect(server.address).checkpoint)))
        waiter.start()
        assert not wait_until(lambda: not waiter.is_alive(), timeout=0.5)  # still asking
    waiter.join(timeout=30)
    assert result.get(timeout=1).size == 30
    assert checkpoint(replay_pb2.CheckpointRequest(), timeout=5).size == 30  # free again: served
