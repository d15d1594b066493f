"""replay/wire.py writes and reads the same bytes as the generated protobuf classes."""

import numpy as np
import pytest

from replay import codec, wire
from replay._proto import replay_pb2
from replay.errors import InvalidBatchError


def _columns():
    rng = np.random.default_rng(0)
    return {
        "action": np.arange(5, dtype=np.int64),
        "next_obs": rng.integers(0, 255, (5, 3, 2), dtype=np.uint8),
        "obs": rng.integers(0, 255, (5, 3, 2), dtype=np.uint8),
        "reward": rng.random(5).astype(np.float32),
    }


def _reference_sample_response(columns, keys, probabilities, weights) -> replay_pb2.SampleResponse:
    message = replay_pb2.SampleResponse(table_size=7, priority_mass=3.5, inserts=9, samples=2)
    for name, column in columns.items():
        codec.encode_tensor(column, message.batch.columns[name])
    codec.encode_tensor(keys, message.keys)
    codec.encode_tensor(probabilities, message.probabilities)
    codec.encode_tensor(weights, message.weights)
    return message


def test_sample_response_bytes_equal_protobufs():
    columns = _columns()
    keys, probabilities, weights = np.arange(5, dtype=np.uint64), np.full(5, 0.2), np.linspace(0.5, 1.0, 5)
    raw = wire.encode_sample_response(
        columns, keys, probabilities, weights, table_size=7, priority_mass=3.5, inserts=9, samples=2
    )
    reference = _reference_sample_response(columns, keys, probabilities, weights)
    # Deterministic protobuf serialization sorts map keys; _columns() is sorted already.
    assert raw == reference.SerializeToString(deterministic=True)


def test_sample_response_read_without_copies():
    columns = _columns()
    keys, probabilities, weights = np.arange(5, dtype=np.uint64), np.full(5, 0.2), np.linspace(0.5, 1.0, 5)
    raw = _reference_sample_response(columns, keys, probabilities, weights).SerializeToString()
    view = wire.decode_sample_response(raw)
    assert sorted(view.data) == sorted(columns)
    for name, column in columns.items():
        assert view.data[name].dtype == column.dtype and np.array_equal(view.data[name], column)
        assert view.data[name].base is not None and not view.data[name].flags.writeable  # a view of `raw`
    np.testing.assert_array_equal(view.keys, keys)
    np.testing.assert_array_equal(view.probabilities, probabilities)
    np.testing.assert_array_equal(view.weights, weights)
    assert (view.table_size, view.priority_mass, view.inserts, view.samples) == (7, 3.5, 9, 2)


def test_unknown_fields_are_skipped():
    columns = _columns()
    keys, ones = np.arange(5, dtype=np.uint64), np.ones(5)
    counters = {"table_size": 5, "priority_mass": 5.0, "inserts": 5, "samples": 5}
    raw = wire.encode_sample_response(columns, keys, ones, ones, **counters)
    newer = raw + bytes([15 << 3 | 2, 3]) + b"abc" + bytes([14 << 3 | 0, 0x96, 0x01])  # fields 15, 14
    assert wire.decode_sample_response(newer).table_size == 5


def test_insert_request_round_trip():
    columns = _columns()
    raw = wire.encode_insert_request(columns, writer_id=2**62 + 3, sequence=300, timeout_ms=0)
    parsed = replay_pb2.InsertRequest.FromString(raw)
    assert (parsed.writer_id, parsed.sequence, parsed.timeout_ms) == (2**62 + 3, 300, 0)
    for name, tensor in parsed.batch.columns.items():
        np.testing.assert_array_equal(codec.decode_tensor(tensor, name), columns[name])
    view = wire.decode_insert_request(parsed.SerializeToString())
    assert (view.writer_id, view.sequence, view.timeout_ms) == (2**62 + 3, 300, 0)
    assert {k: v.tolist() for k, v in view.columns().items()} == {k: v.tolist() for k, v in columns.items()}


def test_big_endian_arrays_go_out_little_endian():
    raw = wire.encode_insert_request({"x": np.arange(3, dtype=">i4")}, writer_id=1, sequence=1, timeout_ms=5)
    column = wire.decode_insert_request(raw).columns()["x"]
    assert column.dtype == np.dtype("<i4") and column.tolist() == [0, 1, 2]


def test_malformed_messages_are_named():
    raw = wire.encode_insert_request(_columns(), writer_id=1, sequence=1, timeout_ms=0)
    with pytest.raises(InvalidBatchError, match="malformed InsertRequest"):
        wire.decode_insert_request(raw[:-3]).columns()
    with pytest.raises(InvalidBatchError, match="malformed SampleResponse"):
        wire.decode_sample_response(b"\x0a\xff")

    message = replay_pb2.InsertRequest(writer_id=1, sequence=1)
    codec.encode_tensor(np.zeros(4, np.float32), message.batch.columns["reward"])
    message.batch.columns["reward"].shape[:] = [5]  # 16 bytes for 5 float32
    with pytest.raises(InvalidBatchError, match="column 'reward': 16 bytes, expected 20"):
        wire.decode_insert_request(message.SerializeToString()).columns()
    message.batch.columns["reward"].dtype = "object"
    with pytest.raises(InvalidBatchError, match="column 'reward'.*not a numeric dtype"):
        wire.decode_insert_request(message.SerializeToString()).columns()


def test_a_message_with_too_many_fields_is_malformed():
    raw = wire.encode_insert_request(_columns(), writer_id=1, sequence=1, timeout_ms=0)
    assert wire.decode_insert_request(raw + b"\x78\x00" * 18).sequence == 1  # room for newer writers
    with pytest.raises(InvalidBatchError, match="more than 22 fields"):
        wire.decode_insert_request(raw + b"\x78\x00" * 20)


def test_columns_outside_the_allowed_names_are_refused_before_they_are_read():
    raw = wire.encode_insert_request(_columns(), writer_id=1, sequence=1, timeout_ms=0)
    view = wire.decode_insert_request(raw)
    assert set(view.columns(set(_columns()))) == set(_columns())
    with pytest.raises(InvalidBatchError, match="is not in the spec"):
        view.columns({"only"})


def test_an_insert_request_carries_its_writer_tag_and_receipts_as_the_proto_declares():
    receipts = [(1, 2**63 - 5, 4096, 0), (0, 7, 0, 1)]
    raw = wire.encode_insert_request(
        _columns(), writer_id=3, sequence=9, timeout_ms=0, writer_tag=2**62 + 1, resent_from=receipts
    )
    parsed = replay_pb2.InsertRequest.FromString(raw)
    assert parsed.writer_tag == 2**62 + 1
    assert list(parsed.resent_from) == [1, 2**63 - 5, 4096, 0, 0, 7, 0, 1]
    view = wire.decode_insert_request(raw)
    assert (view.writer_tag, view.resent_from) == (2**62 + 1, tuple(receipts))


def test_receipts_past_the_limit_are_not_read_but_counted_for_the_shard_to_show():
    receipts = [(0, stream, 1, 0) for stream in range(1, wire.MAX_RESENT_FROM + 7)]
    raw = wire.encode_insert_request(_columns(), writer_id=3, sequence=1, timeout_ms=0, resent_from=receipts)
    view = wire.decode_insert_request(raw)
    assert view.resent_from == tuple(receipts[: wire.MAX_RESENT_FROM]) and view.receipts_beyond == 6
    within = wire.encode_insert_request(_columns(), writer_id=3, sequence=1, timeout_ms=0, resent_from=receipts[:64])
    assert wire.decode_insert_request(within).receipts_beyond == 0


def _varint_field(field: int, raw_value: bytes) -> bytes:
    return bytes([field << 3]) + raw_value


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # writer_id = 2**64 + 5: ten bytes whose last carries bits beyond the 64th
        (_varint_field(2, b"\x85\x80\x80\x80\x80\x80\x80\x80\x80\x02"), "varint beyond 64 bits"),
        (_varint_field(2, b"\x00"), r"no stream id \(writer_id 0\)"),
    ],
)
def test_an_insert_request_a_ledger_could_not_record_is_refused(extra, expected):
    raw = wire.encode_insert_request(_columns(), writer_id=3, sequence=1, timeout_ms=0)
    with pytest.raises(InvalidBatchError, match=expected):
        wire.decode_insert_request(raw + extra)  # the last value of a field wins


def test_the_largest_64_bit_value_is_read_and_a_receipt_beyond_the_shard_ids_is_refused():
    raw = wire.encode_insert_request(_columns(), writer_id=2**64 - 1, sequence=1, timeout_ms=0)
    assert wire.decode_insert_request(raw).writer_id == 2**64 - 1
    ok = wire.encode_insert_request(_columns(), writer_id=3, sequence=1, timeout_ms=0, resent_from=[(1023, 1, 0, 0)])
    assert wire.decode_insert_request(ok).resent_from == ((1023, 1, 0, 0),)
    bad = wire.encode_insert_request(_columns(), writer_id=3, sequence=1, timeout_ms=0, resent_from=[(1024, 1, 0, 0)])
    with pytest.raises(InvalidBatchError, match=r"receipt of shard 1024 \(shard ids are 0..1023\)"):
        wire.decode_insert_request(bad)
