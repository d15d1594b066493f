"""The shard's insert ledger and the reconciliation of stored-twice items, by hand.

A SIGKILL is simulated by opening the ledger file again after unmapping the first (what the page
cache holds is what a killed process leaves), and a kill in the middle of a write by tearing the
record being written.
"""

from __future__ import annotations

import logging
import os
import struct

import grpc
import numpy as np
import pytest

from conftest import make_batch, wait_until
from replay import (
    LedgerError,
    LedgerInUseError,
    RateLimiter,
    ShardAccounting,
    Spec,
    Table,
    make_selector,
    reconcile,
    wire,
    writer_tag,
)
from replay._proto.replay_pb2 import InsertResponse
from replay.insert_ledger import _SLOT, ALL, LEDGER_NAME, InsertLedger, Receipt

STREAM, TAG = 11, 99


def _killed(ledger: InsertLedger, tmp_path, **slots) -> InsertLedger:
    """The ledger as a restarted process finds it. Unmapping writes nothing: a MAP_SHARED page is
    the page cache, which is what a killed process leaves; its file lock goes with the process."""
    ledger.close()
    return InsertLedger(tmp_path, **slots)


class _Progress:
    def __init__(self, ledger, stream, sequence):
        self.ledger, self.stream, self.sequence = ledger, stream, sequence

    def stored(self):
        return self.ledger.stored(self.stream, self.sequence)

    def record(self, count):
        return self.ledger.record(self.stream, TAG, self.sequence, count)


def _table() -> Table:
    spec = Spec({"x": ((), np.float32)})
    return Table(spec, 100, make_selector("uniform", 100, 0.6), RateLimiter(1, None, 0))


def test_a_restarted_shard_counts_as_lost_what_it_stored_after_its_checkpoint(tmp_path):
    ledger = InsertLedger(tmp_path)
    assert not ledger.found and ledger.start(0) == 0
    ledger.wrote(STREAM, TAG, 1, 10)
    ledger.wrote(STREAM, TAG, 2, 10)  # checkpoint here: 20 inserts
    ledger.wrote(STREAM, TAG, 3, 7)
    again = _killed(ledger, tmp_path)
    assert again.found and again.previous_inserts == 27
    assert again.start(20) == 7 and again.lost_total == 7
    # The restarted process's table counts from 20; another death after 5 more, no new checkpoint.
    again.wrote(STREAM, TAG, 4, 5)
    third = _killed(again, tmp_path)
    assert third.previous_inserts == 25 and third.start(20) == 5 and third.lost_total == 12
    assert third.stream_items() == {STREAM: (TAG, 32)}  # lost ones included: what the stream stored


def test_a_batch_re_sent_to_a_restarted_shard_is_not_stored_again(tmp_path):
    ledger = InsertLedger(tmp_path)
    ledger.start(0)
    ledger.wrote(STREAM, TAG, 1, 10)
    ledger.wrote(STREAM, TAG, 2, 4)  # batch 2 (10 items) cut short after 4: the rate limiter, a kill
    again = _killed(ledger, tmp_path)
    again.start(0)
    assert again.stored(STREAM, 1) == ALL
    assert again.stored(STREAM, 2) == 4
    assert again.stored(STREAM, 3) == 0
    assert again.stored(STREAM + 1, 1) == 0  # another stream
    table = _table()
    written = table.insert({"x": np.arange(10, dtype=np.float32)}, progress=_Progress(again, STREAM, 2))
    assert written == 6 and table.info().inserts == 6  # only the 6 items the first try had not stored
    assert table.insert({"x": np.zeros(10, np.float32)}, progress=_Progress(again, STREAM, 1)) == 0
    assert again.stream_items()[STREAM] == (TAG, 20)


def test_a_kill_in_the_middle_of_a_write_leaves_the_write_before(tmp_path):
    ledger = InsertLedger(tmp_path)
    ledger.start(0)
    ledger.wrote(STREAM, TAG, 1, 10)
    ledger.wrote(STREAM, TAG, 2, 10)  # version 2: the second copy
    # A third write tears: its copy (the first one again) gets only its leading fields.
    version = 3
    offset = ledger._slots_at + (2 * 1 + version % 2) * _SLOT.size
    torn = _SLOT.pack(version, STREAM, TAG, 30, 3, 10, 0)[:24]
    ledger._map[offset : offset + len(torn)] = torn
    again = _killed(ledger, tmp_path)
    assert again.previous_inserts == 20  # the torn piece was never acknowledged: it is re-sent
    assert again.stored(STREAM, 2) == 10  # batch 2 whole, as of the write before
    assert again.stored(STREAM, 3) == 0


def test_a_kill_before_the_write_counts_nothing_and_the_re_send_stores_the_batch_once(tmp_path):
    ledger = InsertLedger(tmp_path)
    ledger.start(0)
    ledger.wrote(STREAM, TAG, 1, 10)
    # Killed after the table took batch 2 and before the ledger heard of it: neither counted
    # (present nor lost) nor acknowledged; the writer re-sends it and this one stores it.
    again = _killed(ledger, tmp_path)
    assert again.start(10) == 0
    assert again.stored(STREAM, 2) == 0


def test_a_record_that_cannot_be_packed_writes_nothing_to_the_table(tmp_path):
    ledger = InsertLedger(tmp_path)
    ledger.start(0)
    table = _table()
    with pytest.raises(struct.error):  # a stream id beyond 64 bits (the wire refuses it first)
        table.insert({"x": np.zeros(10, np.float32)}, progress=_Progress(ledger, 2**64 + 5, 1))
    assert table.info().inserts == 0
    assert sum(items for _, items in ledger.stream_items().values()) == 0
    assert _killed(ledger, tmp_path).previous_inserts == 0  # the file agrees with the table


def test_a_shard_answers_a_batch_its_ledger_could_not_record_with_invalid_argument(start_server, tmp_path):
    server = start_server(checkpoint_dir=str(tmp_path))
    channel = grpc.insecure_channel(server.address)
    insert = channel.stream_stream(
        "/qfleet.replay.ReplayService/Insert", response_deserializer=InsertResponse.FromString
    )
    huge_stream = wire.encode_insert_request(make_batch(10), writer_id=1, sequence=1, timeout_ms=0)
    huge_stream += bytes([2 << 3]) + b"\x85\x80\x80\x80\x80\x80\x80\x80\x80\x02"  # writer_id 2**64 + 5
    bad_receipt = wire.encode_insert_request(
        make_batch(10), writer_id=2, sequence=1, timeout_ms=0, resent_from=[(2**64 - 1, 1, 1, 0)]
    )
    good = wire.encode_insert_request(make_batch(10), writer_id=3, sequence=1, timeout_ms=0)
    replies = list(insert(iter([huge_stream, bad_receipt, good])))
    channel.close()
    assert [reply.code for reply in replies] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]] * 2 + [0]
    assert (
        server.table.info().inserts
        == 10
        == server.ledger.previous_inserts + sum(items for _, items in server.ledger.stream_items().values())
    )
    assert server.ledger.receipts() == []


def test_a_checkpoint_holding_more_than_the_ledger_recorded_is_said_not_hidden(tmp_path, caplog):
    ledger = InsertLedger(tmp_path)
    ledger.wrote(STREAM, TAG, 1, 10)
    again = _killed(ledger, tmp_path)
    with caplog.at_level(logging.WARNING, logger="replay.insert_ledger"):
        assert again.start(25) == 0
    assert "records 10 inserts but the restored checkpoint holds 25" in caplog.text


def test_a_ledger_of_the_first_layout_is_read_and_kept_counting(tmp_path):
    (tmp_path / LEDGER_NAME).write_bytes((500).to_bytes(8, "little") + (30).to_bytes(8, "little"))
    ledger = InsertLedger(tmp_path)
    assert ledger.found and ledger.previous_inserts == 500 and ledger.previous_lost == 30
    assert ledger.start(480) == 20 and ledger.lost_total == 50


def test_receipts_survive_a_kill_and_count_once(tmp_path):
    ledger = InsertLedger(tmp_path)
    receipt = Receipt(shard_id=0, stream_id=5, acknowledged=640, writer_tag=TAG)
    handed_back = Receipt(1023, 6, 0, handed_back=True, writer_tag=TAG)
    assert ledger.receive([receipt, receipt], TAG) == 0
    ledger.receive([handed_back], TAG)
    assert _killed(ledger, tmp_path).receipts() == [receipt, handed_back]


def test_a_receipt_is_kept_only_from_the_writer_it_names_and_within_the_room_left(tmp_path):
    ledger = InsertLedger(tmp_path, receipt_slots=2)
    assert ledger.receive([Receipt(0, 5, 0, writer_tag=TAG + 1)], TAG) == 1  # another writer's
    assert ledger.receive([Receipt(0, 5, 0, writer_tag=0)], 0) == 1  # a writer that says no tag
    assert ledger.receive([Receipt(1024, 5, 0, writer_tag=TAG)], TAG) == 1  # no such shard id
    kept = [Receipt(0, stream, 0, writer_tag=TAG) for stream in (5, 6)]
    assert ledger.receive([*kept, Receipt(0, 7, 0, writer_tag=TAG)], TAG) == 1  # full
    assert ledger.receipts() == kept and ledger.dropped_receipts == 4


def test_streams_beyond_the_slots_are_counted_together_without_de_duplication(tmp_path):
    ledger = InsertLedger(tmp_path, stream_slots=3)  # slot 0 and two streams
    ledger.start(0)
    for stream in (1, 2, 3, 4):
        ledger.wrote(stream, TAG, 1, 10)
    assert set(ledger.stream_items()) == {1, 2}
    again = _killed(ledger, tmp_path, stream_slots=3)
    assert again.previous_inserts == 40 and again.stored(3, 1) == 0


def test_a_shard_de_duplicates_streams_beyond_its_ledgers_slots_in_memory(start_server, tmp_path, monkeypatch, caplog):
    import functools

    import replay.insert_ledger

    monkeypatch.setattr(replay.insert_ledger, "InsertLedger", functools.partial(InsertLedger, stream_slots=3))
    server = start_server(checkpoint_dir=str(tmp_path))
    channel = grpc.insecure_channel(server.address)
    insert = channel.stream_stream(
        "/qfleet.replay.ReplayService/Insert", response_deserializer=InsertResponse.FromString
    )

    def send(stream: int, sequence: int) -> int:
        raw = wire.encode_insert_request(make_batch(10), writer_id=stream, sequence=sequence, timeout_ms=0)
        (reply,) = insert(iter([raw]))
        return reply.inserted

    with caplog.at_level(logging.WARNING, logger="replay.insert_ledger"):
        assert [send(stream, 1) for stream in (1, 2, 3, 4)] == [10] * 4  # 3 and 4: beyond the 2 slots
        assert [send(stream, 1) for stream in (1, 2, 3, 4)] == [0] * 4  # re-sent: none stored again
        assert send(3, 2) == 10
    channel.close()
    assert caplog.text.count("insert stream slots are used") == 1
    accounting = server.accounting()
    assert accounting.untracked_items == 30 and set(accounting.streams) == {1, 2}
    assert server.table.info().inserts == 50


def test_a_ledger_of_another_size_is_refused(tmp_path):
    (tmp_path / LEDGER_NAME).write_bytes(b"x" * 100)
    with pytest.raises(LedgerError, match="100 bytes, not an insert ledger") as caught:
        InsertLedger(tmp_path)
    assert (caught.value.path, caught.value.found_size) == (str(tmp_path / LEDGER_NAME), 100)
    assert caught.value.expected_size > 100


def test_a_shard_finding_a_ledger_of_another_size_sets_it_aside_and_starts_a_new_one(start_server, tmp_path, caplog):
    (tmp_path / LEDGER_NAME).write_bytes(b"x" * 100)
    with caplog.at_level(logging.WARNING, logger="replay.insert_ledger"):
        server = start_server(checkpoint_dir=str(tmp_path))  # starts, rather than crash-looping
    assert "exact accounting restarts; earlier losses unknown" in caplog.text
    assert (tmp_path / (LEDGER_NAME + ".refused")).read_bytes() == b"x" * 100
    assert server.ledger.previous_inserts == 0 and server.accounting().tracked


# -- reconciliation --------------------------------------------------------------------------------


def test_items_a_dead_shard_stored_and_its_writer_re_sent_are_counted_stored_twice():
    # Writer A sent 5 batches of 100 to shard 0 on stream 7; 3 were acknowledged, then shard 0
    # died. It had stored batch 4 and half of batch 5 (150 items) without the replies arriving.
    # A re-sent batches 4 and 5 to shard 1 (stream 8) with the receipt (0, 7, 300).
    a, b = writer_tag("run-actor-0"), writer_tag("run-actor-1")
    shard0 = ShardAccounting(0, {7: (a, 450), 9: (b, 1000)}, [])
    shard1 = ShardAccounting(1, {8: (a, 200)}, [Receipt(0, 7, 300, writer_tag=a)])
    result = reconcile([shard0, shard1])
    assert result.stored_twice == 150 and result.unresolved == 0 and result.given_back == 0
    # acknowledged to A: 300 + 200 = 500 = (450 + 200) - 150
    assert result.by_writer == {a: 500, b: 1000}
    present_plus_lost = 450 + 1000 + 200
    assert present_plus_lost - result.stored_twice == 500 + 1000


def test_a_receipt_carried_to_two_shards_counts_once_and_one_of_an_unknown_stream_is_unresolved():
    a = writer_tag("w")
    shard0 = ShardAccounting(0, {7: (a, 250)}, [Receipt(1, 3, 0, writer_tag=a)])
    shard1 = ShardAccounting(1, {8: (a, 100)}, [Receipt(0, 7, 200, writer_tag=a)])
    shard2 = ShardAccounting(2, {9: (a, 50)}, [Receipt(0, 7, 200, writer_tag=a)])  # re-sent again: the same receipt
    result = reconcile([shard0, shard1, shard2])
    assert result.stored_twice == 50 and result.unresolved == 1
    assert result.by_writer == {a: 350}


def test_items_a_dead_shard_stored_of_batches_handed_back_to_the_caller_are_given_back_not_stored_twice():
    # Writer A had 100 items acknowledged on shard 0's stream 7; shard 0 stored 60 more and died.
    # No shard took the re-send in time: the 60 (and the rest) went back to A's caller, counted
    # lost there. A receipt that first rode a re-send that failed (handed_back 0) and then the
    # same receipt handed back, at two shards: handed back wins.
    a = writer_tag("w")
    shard0 = ShardAccounting(0, {7: (a, 160)}, [])
    shard1 = ShardAccounting(1, {8: (a, 30)}, [Receipt(0, 7, 100, writer_tag=a)])
    shard2 = ShardAccounting(2, {9: (a, 50)}, [Receipt(0, 7, 100, handed_back=True, writer_tag=a)])
    result = reconcile([shard0, shard1, shard2])
    assert (result.stored_twice, result.given_back) == (0, 60)
    assert result.by_writer == {a: 100 + 30 + 50}  # what A was acknowledged


def test_a_receipt_naming_another_writers_stream_is_refused_and_discounts_nothing():
    victim, forger = writer_tag("run-actor-0"), writer_tag("run-actor-1")
    shard0 = ShardAccounting(0, {7: (victim, 500), 8: (forger, 10)}, [Receipt(0, 7, 0, writer_tag=forger)])
    result = reconcile([shard0])
    assert (result.stored_twice, result.refused) == (0, 1)
    assert result.by_writer == {victim: 500, forger: 10}


def test_writer_tags_are_stable_and_never_zero():
    assert writer_tag("run-actor-3") == writer_tag("run-actor-3") != writer_tag("run-actor-4")
    assert 0 < writer_tag("") < 2**63


def test_a_stream_whose_first_write_tore_leaves_its_slot_to_no_one(tmp_path):
    ledger = InsertLedger(tmp_path)
    ledger.wrote(1, TAG, 1, 10)  # slot 1
    ledger.wrote(2, TAG, 1, 10)  # slot 2
    ledger.wrote(3, TAG, 1, 10)  # slot 3
    offset = ledger._slots_at + 2 * 2 * _SLOT.size  # stream 2's only write, torn
    ledger._map[offset : offset + 2 * _SLOT.size] = bytes(2 * _SLOT.size)
    again = _killed(ledger, tmp_path)
    assert again.previous_inserts == 20
    again.wrote(4, TAG, 1, 5)  # a new stream takes slot 4, not stream 2's
    assert _killed(again, tmp_path).stream_items() == {1: (TAG, 10), 3: (TAG, 10), 4: (TAG, 5)}


def test_stream_ids_do_not_follow_the_random_modules_seed():
    import random

    from replay.client import _new_stream_id

    random.seed(7)
    first = _new_stream_id()
    random.seed(7)  # a forked or seeded process: the same `random` state
    assert _new_stream_id() != first
    assert 0 < first < 2**63


def test_a_ledger_held_by_a_live_process_is_refused_and_taken_once_it_is_gone(tmp_path, monkeypatch):
    import replay.insert_ledger

    monkeypatch.setattr(replay.insert_ledger, "HOLD_WAIT_S", 0.2)
    first = InsertLedger(tmp_path)
    with pytest.raises(LedgerInUseError, match="held by another live process") as caught:
        InsertLedger(tmp_path)
    assert caught.value.path == str(tmp_path / LEDGER_NAME)
    assert LEDGER_NAME in os.listdir(tmp_path)  # not set aside: it is in use
    first.close()
    InsertLedger(tmp_path).close()


def test_a_shard_s_counters_and_its_ledger_are_read_at_one_moment(start_server, tmp_path):
    """The driver's "unattributed" count compares the items present with what the ledger recorded
    for the actors: read at two moments, an insert landing in between made it -1 (issue: a long
    Pendulum run's progress line). Here an insert is sent just as the ledger is read."""
    import threading

    server = start_server(checkpoint_dir=str(tmp_path))
    channel = grpc.insecure_channel(server.address)
    insert = channel.stream_stream(
        "/qfleet.replay.ReplayService/Insert", response_deserializer=InsertResponse.FromString
    )

    def send(sequence: int) -> None:
        raw = wire.encode_insert_request(make_batch(10), writer_id=STREAM, sequence=sequence, timeout_ms=0)
        (reply,) = insert(iter([raw]))
        assert reply.inserted == 10

    send(1)
    accounting, sent = server.accounting, []

    def accounting_as_an_insert_lands():
        thread = threading.Thread(target=lambda: sent.append(send(2)))
        thread.start()
        thread.join(timeout=1.0)  # it lands now, unless the table's lock holds it until the read is done
        return accounting()

    server.accounting = accounting_as_an_insert_lands
    try:
        info, ledger = server.counters()
    finally:
        server.accounting = accounting
    assert sum(items for _, items in ledger.streams.values()) == info.inserts  # one moment: they agree
    assert wait_until(lambda: sent, 30)  # the held insert goes on once the read is done
    assert server.table.info().inserts == 20
    channel.close()
