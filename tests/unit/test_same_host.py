"""The same-host feed's two ends without gRPC: the region a learner makes, what a shard writes
into, and what it refuses (replay/same_host.py)."""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time

import numpy as np
import pytest

from replay import wire
from replay.errors import InvalidBatchError, RegionRefusedError
from replay.same_host import (
    ALIGN,
    HEADER_BYTES,
    KEY_BYTES,
    REGION_DIR,
    FeedRegion,
    RegionWriter,
    SameHostFeed,
    host_identity,
    layout,
)

COLUMNS = {
    "obs": np.arange(6 * 4, dtype=np.float32).reshape(6, 4),
    "action": np.arange(6, dtype=np.int64),
    "frame": np.arange(6 * 3, dtype=np.uint8).reshape(6, 3),
}


@pytest.fixture
def region():
    made = FeedRegion(slot_bytes=4096, slots=3)
    yield made
    made.close()


def test_a_region_is_a_private_file_under_dev_shm_with_an_unguessable_name(region):
    info = os.stat(REGION_DIR / region.name)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert info.st_size == HEADER_BYTES + 3 * region.slot_bytes and region.slot_bytes % ALIGN == 0
    other = FeedRegion(slot_bytes=64, slots=1)
    assert other.name != region.name and len(region.name.rsplit("-", 1)[1]) == 32
    other.close()
    assert not (REGION_DIR / other.name).exists()


def test_slots_go_round_until_every_one_is_taken_and_retired_slots_never_come_back(region):
    taken = [region.acquire() for _ in range(3)]
    assert sorted(taken) == [0, 1, 2] and region.acquire() is None
    region.release(taken[0])
    region.retire(taken[1])
    assert region.acquire() == taken[0] and region.acquire() is None
    region.retire(taken[0])
    region.retire(taken[2])
    assert region.exhausted


def test_what_a_shard_writes_into_a_slot_reads_back_through_the_response(region):
    writer = RegionWriter()
    slot = 1
    offsets = writer.write(region.name, region.key, region.offset(slot), region.slot_bytes, COLUMNS)
    assert offsets == layout({k: (v.shape, v.dtype) for k, v in COLUMNS.items()})[0]
    assert all(offset % ALIGN == 0 for offset in offsets)
    keys = np.arange(6, dtype=np.uint64)
    raw = wire.encode_sample_response(
        COLUMNS,
        keys,
        np.full(6, 0.1),
        np.ones(6),
        table_size=6,
        priority_mass=6.0,
        inserts=6,
        samples=6,
        region_offsets=offsets,
    )
    assert len(raw) < 400  # the layout only: the columns' 168 bytes are not in it
    sample, answer = wire.decode_sample_reply(raw, region.view(slot))
    assert answer.used and not answer.refused
    for name, column in COLUMNS.items():
        np.testing.assert_array_equal(sample.data[name], column)
        assert sample.data[name].dtype == column.dtype
    np.testing.assert_array_equal(sample.keys, keys)
    writer.close()


def test_a_response_naming_offsets_outside_the_slot_or_no_slot_is_malformed(region):
    raw = wire.encode_sample_response(
        COLUMNS,
        np.arange(6, dtype=np.uint64),
        np.ones(6),
        np.ones(6),
        table_size=6,
        priority_mass=6.0,
        inserts=6,
        samples=6,
        region_offsets=[0, 128, region.slot_bytes - 8],
    )
    with pytest.raises(InvalidBatchError, match="run past"):
        wire.decode_sample_reply(raw, region.view(0))
    with pytest.raises(InvalidBatchError, match="named none"):
        wire.decode_sample_response(raw)


def _region_file(name: str, mode: int, size: int) -> None:
    path = REGION_DIR / name
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(descriptor, mode)
    os.ftruncate(descriptor, size)
    os.close(descriptor)


BAD_NAME = "qfleet-feed-" + "0" * 31 + "z"


@pytest.mark.parametrize(
    ("make", "name", "expected"),
    [
        (None, "../etc/passwd", "not a feed region's name"),
        (None, BAD_NAME, "not a feed region's name"),
        (None, "qfleet-feed-" + "ab" * 16, "cannot be opened"),
        (lambda name: _region_file(name, 0o644, 4096), "qfleet-feed-" + "cd" * 16, "mode 0o644"),
        (lambda name: _region_file(name, 0o600, HEADER_BYTES), "qfleet-feed-" + "ef" * 16, "holds no slot"),
        (lambda name: _region_file(name, 0o600, 1 << 20), "qfleet-feed-" + "78" * 16, "not allocated"),
        (lambda name: os.mkdir(REGION_DIR / name, 0o700), "qfleet-feed-" + "12" * 16, "cannot be opened"),
        (lambda name: os.symlink("/tmp", REGION_DIR / name), "qfleet-feed-" + "34" * 16, "cannot be opened"),
        (lambda name: os.mkfifo(REGION_DIR / name, 0o600), "qfleet-feed-" + "56" * 16, "not a regular file"),
    ],
    ids=["path", "name", "missing", "readable-by-others", "too-small", "sparse", "directory", "symlink", "fifo"],
)
def test_a_shard_refuses_a_region_it_should_not_write_into(make, name, expected):
    path = REGION_DIR / name
    if make is not None:
        make(name)
    try:
        with pytest.raises(RegionRefusedError, match=expected):
            RegionWriter().write(name, bytes(KEY_BYTES), HEADER_BYTES, 4096, COLUMNS)
    finally:
        if path.is_symlink() or path.is_file() or path.is_fifo():
            path.unlink()
        elif path.is_dir():
            path.rmdir()


def test_a_slot_too_small_for_the_sample_is_refused_before_the_region_is_opened(region):
    with pytest.raises(RegionRefusedError, match="the slot holds 64 bytes"):
        RegionWriter().write(region.name, region.key, region.offset(0), 64, COLUMNS)


def test_a_shard_keeps_writing_into_a_region_the_learner_unlinked_and_drops_it_when_idle(region):
    writer = RegionWriter(idle_s=0.0)
    writer.write(region.name, region.key, region.offset(0), region.slot_bytes, COLUMNS)
    region.unlink()  # as the learner does after the first answer through it
    assert not (REGION_DIR / region.name).exists()
    writer.idle_s = 60.0
    writer.write(region.name, region.key, region.offset(2), region.slot_bytes, COLUMNS)  # its mapping stays
    view = np.frombuffer(region.view(2), dtype=np.float32, count=24)
    np.testing.assert_array_equal(view, COLUMNS["obs"].reshape(-1))
    del view
    writer.idle_s = 0.0
    with pytest.raises(RegionRefusedError, match="cannot be opened"):  # dropped as idle: gone for good
        writer.write(region.name, region.key, region.offset(0), region.slot_bytes, COLUMNS)
    writer.close()


def test_the_host_identity_names_host_and_boot():
    identity = host_identity()
    assert identity.startswith(os.uname().nodename + "/") and len(identity) > len(os.uname().nodename) + 30


def test_a_region_is_allocated_up_front_so_a_full_dev_shm_fails_the_learner_not_the_shard(region):
    info = os.stat(REGION_DIR / region.name)
    assert info.st_blocks * 512 >= info.st_size  # not sparse: no page is left to fault in later


def test_a_shard_writes_only_into_a_region_whose_key_the_request_names(region):
    writer = RegionWriter()
    for key in (secrets.token_bytes(KEY_BYTES), region.key[:8], b""):
        with pytest.raises(RegionRefusedError, match="key does not match"):
            writer.write(region.name, key, region.offset(0), region.slot_bytes, COLUMNS)
    assert not any(region.view(0))  # nothing was written
    assert writer.mapped == 0  # and a wrong key's mapping is not kept (it would pin the region's pages)
    writer.write(region.name, region.key, region.offset(0), region.slot_bytes, COLUMNS)
    assert writer.mapped == 1 and any(region.view(0))
    writer.close()


def test_a_shard_refuses_a_region_with_a_second_link(region):
    link = REGION_DIR / ("qfleet-feed-" + secrets.token_hex(16))
    os.link(REGION_DIR / region.name, link)
    writer = RegionWriter()
    try:
        with pytest.raises(RegionRefusedError, match="2 links"):
            writer.write(link.name, region.key, region.offset(0), region.slot_bytes, COLUMNS)
    finally:
        link.unlink()
        writer.close()


def test_a_slot_over_the_key_header_is_refused(region):
    writer = RegionWriter()
    with pytest.raises(RegionRefusedError, match="outside the region's slots"):
        writer.write(region.name, region.key, 0, region.slot_bytes, COLUMNS)
    writer.close()


def test_big_endian_columns_arrive_in_the_byte_order_the_wire_names(region):
    writer = RegionWriter()
    columns = {"big": np.arange(6, dtype=">i4"), "obs": COLUMNS["obs"]}
    offsets = writer.write(region.name, region.key, region.offset(0), region.slot_bytes, columns)
    raw = wire.encode_sample_response(
        columns,
        np.arange(6, dtype=np.uint64),
        np.ones(6),
        np.ones(6),
        table_size=6,
        priority_mass=6.0,
        inserts=6,
        samples=6,
        region_offsets=offsets,
    )
    sample, _ = wire.decode_sample_reply(raw, region.view(0))
    np.testing.assert_array_equal(sample.data["big"], np.arange(6))
    writer.close()


def test_a_shard_drops_an_idle_mapping_even_when_no_learner_writes_again(region):
    writer = RegionWriter(idle_s=0.2)
    writer.write(region.name, region.key, region.offset(0), region.slot_bytes, COLUMNS)
    assert writer.mapped == 1
    deadline = time.monotonic() + 30
    while writer.mapped and time.monotonic() < deadline:  # the writer's timer, no other call
        time.sleep(0.02)
    assert writer.mapped == 0
    writer.close()


def _feed_with_sizes() -> SameHostFeed:
    feed = SameHostFeed("127.0.0.1:0", slots=2)
    feed.learn({"obs": np.zeros((4, 16), np.float32)}, 4)  # as after a first inline answer
    return feed


def test_a_grown_region_stays_linked_until_the_call_still_using_it_is_answered():
    feed = _feed_with_sizes()
    first, slot = feed.take(4)
    second, _ = feed.take(64)  # larger: a new region, while a call still holds a slot of the first
    assert second is not first and (REGION_DIR / first.name).exists()
    feed.answered(first, slot, used=True, refused="")
    assert not (REGION_DIR / first.name).exists()
    feed.close()
    assert not (REGION_DIR / second.name).exists()


def test_a_region_whose_first_calls_failed_is_unlinked_once_none_is_in_flight():
    feed = _feed_with_sizes()
    region, one = feed.take(4)
    _, two = feed.take(4)
    feed.failed(region, one)  # no shard ever used it
    assert (REGION_DIR / region.name).exists()  # the other call may still be the one that maps it
    feed.failed(region, two)
    assert not (REGION_DIR / region.name).exists()
    replacement, _ = feed.take(4)
    assert replacement is not region
    feed.close()


def test_a_region_larger_than_dev_shm_fails_when_made_not_when_the_shard_writes():
    # Larger than the whole tmpfs: the kernel refuses the allocation at once (nothing is taken
    # from other users of /dev/shm); a sparse file would have been made and faulted later.
    stats = os.statvfs(REGION_DIR)
    with pytest.raises(OSError) as failure:
        FeedRegion(slot_bytes=stats.f_blocks * stats.f_frsize + (1 << 20), slots=1)
    assert failure.value.errno == errno.ENOSPC


def test_a_region_closed_while_a_call_holds_a_slot_stays_readable_until_the_slot_comes_back():
    region = FeedRegion(slot_bytes=256, slots=2)
    slot = region.acquire()
    region.close()  # e.g. Membership drops the shard's client from another thread
    assert region.acquire() is None and not (REGION_DIR / region.name).exists()
    assert len(region.view(slot)) == region.slot_bytes  # the call can still read its answer
    region.release(slot)
    with pytest.raises(ValueError):
        region.view(slot)  # unmapped with the last slot given back
