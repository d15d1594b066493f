"""The bulk messages' protobuf bytes, written and read without the generated classes' copies.

`SampleResponse` and `InsertRequest` carry megabytes of array bytes (an Atari batch of 256 is
14 MB). Through the generated classes every array is copied four times on the way out (gather,
`tobytes`, into the message, serialization) and twice on the way in (parse, the `data` accessor).
This module writes the very same wire format as `replay.proto` by hand (one join of small headers
and the arrays' own buffers) and reads it into numpy views of the received bytes. Tests check it
both ways against the generated classes; everything else on the wire still goes through them.

Protobuf wire format used here: each field is a varint key `field_number << 3 | wire_type`
followed by a varint (type 0), 8 little-endian bytes (type 1), or a varint length and that many
bytes (type 2: strings, bytes, sub-messages, packed repeated numbers). Unknown fields are skipped
when reading, so newer writers stay readable, but only `MAX_UNKNOWN_FIELDS` of them per message:
every loop here is bounded by what the message may hold, and an Insert's columns by the spec.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from replay.codec import _wire_dtype, array_from_bytes, little_endian
from replay.errors import InvalidBatchError
from replay.keys import MAX_SHARDS
from replay.limits import MAX_DIMS, MAX_UNKNOWN_FIELDS
from replay.sample import Sample

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_MAX_RESPONSE_COLUMNS = 4096  # columns a client reads from a SampleResponse (the shard's spec)
MAX_RESENT_FROM = 64
"""Receipts of abandoned streams one InsertRequest may carry (the rest are counted as dropped
receipts, not read; `ShardedReplay` never sends more)."""
RECEIPT_FIELDS = 4
"""Numbers per receipt in `resent_from`: shard id, stream id, items acknowledged, handed back (0/1)."""
MAX_SHARD_ID = MAX_SHARDS - 1
"""The largest shard id a key can name."""


# -- writing ---------------------------------------------------------------------------------------


_ONE_BYTE = [bytes([value]) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


@functools.lru_cache(maxsize=64)
def _dtype_field(dtype: np.dtype) -> bytes:
    """Tensor.dtype (field 1) for `dtype`, ready to write."""
    name = dtype.name.encode()
    return _key(1, _LEN) + _varint(len(name)) + name


class _Writer:
    """Collects the pieces of one message (headers as bytes, arrays as buffers) and its length."""

    def __init__(self):
        self.parts: list = []
        self.size = 0

    def add(self, piece) -> None:
        self.parts.append(piece)
        self.size += len(piece)

    def varint(self, field: int, value: int) -> None:
        if value:  # proto3 leaves zeros out
            self.add(_key(field, _VARINT) + _varint(value))

    def double(self, field: int, value: float) -> None:
        if value:
            self.add(_key(field, _FIXED64) + struct.pack("<d", value))

    def blob(self, field: int, data) -> None:
        self.add(_key(field, _LEN) + _varint(len(data)))
        if len(data):
            self.add(data)

    def message(self, field: int, inner: _Writer) -> None:
        self.add(_key(field, _LEN) + _varint(inner.size))
        self.parts.extend(inner.parts)
        self.size += inner.size

    def tensor(self, field: int, value: np.ndarray, inline: bool = True) -> None:
        """A Tensor: dtype, shape and (when `inline`) the data; without, its bytes are elsewhere."""
        array = np.asarray(value)
        if inline:
            array = np.ascontiguousarray(little_endian(array))
        nbytes = array.nbytes if inline else 0
        shape = b"".join([_varint(d) for d in array.shape])  # packed repeated int64
        head = _dtype_field(array.dtype.newbyteorder("<")) + _key(2, _LEN) + _varint(len(shape)) + shape
        head += _key(3, _LEN) + _varint(nbytes)
        self.add(_key(field, _LEN) + _varint(len(head) + nbytes))
        self.add(head)
        if nbytes:
            self.add(memoryview(array.reshape(-1)).cast("B"))

    def batch(self, field: int, columns: Mapping[str, np.ndarray], inline: bool = True) -> None:
        batch = _Writer()
        for name, value in columns.items():
            entry = _Writer()  # map<string, Tensor> entries are messages {1: key, 2: value}
            entry.blob(1, name.encode())
            entry.tensor(2, value, inline)
            batch.message(1, entry)
        self.message(field, batch)

    def packed(self, field: int, values: Sequence[int]) -> None:
        if values:
            self.blob(field, b"".join(_varint(value) for value in values))

    def text(self, field: int, value: str) -> None:
        if value:
            self.blob(field, value.encode())

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


def encode_sample_response(
    data: Mapping[str, np.ndarray],
    keys: np.ndarray,
    probabilities: np.ndarray,
    weights: np.ndarray,
    *,
    table_size: int,
    priority_mass: float,
    inserts: int,
    samples: int,
    boot_id: int = 0,
    region_offsets: Sequence[int] = (),
    region_refused: str = "",
) -> bytes:
    """A serialized `SampleResponse` (field numbers as in replay.proto).

    Args:
        region_offsets: where each column of `data` was written in the request's region slot
            (the same-host feed): the columns then go without their bytes. Empty: inline.
        region_refused: why the request's region was not used.
    """
    out = _Writer()
    out.batch(1, data, inline=not region_offsets)
    out.tensor(2, keys)
    out.tensor(3, probabilities)
    out.tensor(4, weights)
    out.varint(5, table_size)
    out.double(6, priority_mass)
    out.varint(7, inserts)
    out.varint(8, samples)
    out.varint(9, boot_id)
    out.packed(10, region_offsets)
    out.text(11, region_refused)
    return out.tobytes()


def encode_insert_request(
    columns: Mapping[str, np.ndarray],
    *,
    writer_id: int,
    sequence: int,
    timeout_ms: int,
    writer_tag: int = 0,
    resent_from: Sequence[tuple[int, int, int, int]] = (),
) -> bytes:
    """A serialized `InsertRequest` (field numbers as in replay.proto).

    Args:
        writer_tag: who writes, the same on every shard (0: not said).
        resent_from: (shard id, stream id, items acknowledged on it, handed back) of streams the
            writer gave up on, whose unacknowledged batches it now sends here (handed back 1: it
            gave them back to its caller instead, none re-sent).
    """
    out = _Writer()
    out.batch(1, columns)
    out.varint(2, writer_id)
    out.varint(3, sequence)
    out.varint(4, timeout_ms)
    out.varint(5, writer_tag)
    if resent_from:
        out.blob(6, b"".join(_varint(value) for receipt in resent_from for value in receipt))
    return out.tobytes()


# -- reading ---------------------------------------------------------------------------------------


def _malformed(what: str, why: str) -> InvalidBatchError:
    return InvalidBatchError(f"malformed {what}: {why}")


def _read_varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    if pos < end and buf[pos] < 0x80:  # one byte: most keys, lengths and dimensions
        return buf[pos], pos + 1
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _malformed(what, "truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >> 64:  # ten bytes can spell 70 bits; no field of ours holds more than 64
                raise _malformed(what, "varint beyond 64 bits")
            return value, pos
        shift += 7


def _int64(value: int) -> int:
    """A varint read as int64 (negatives are written as 10-byte two's complement)."""
    return value - (1 << 64) if value >> 63 else value


def _fields(buf: bytes, start: int, end: int, what: str, known: int) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) for each field of the message in buf[start:end].

    The value is an int for varints, a (start, end) span for length-delimited fields and the raw
    8 or 4 bytes for fixed-width ones. More than `known + MAX_UNKNOWN_FIELDS` fields is malformed.
    """
    pos = start
    remaining = known + MAX_UNKNOWN_FIELDS
    while pos < end:
        if remaining == 0:
            raise _malformed(what, f"more than {known + MAX_UNKNOWN_FIELDS} fields")
        remaining -= 1
        key, pos = _read_varint(buf, pos, end, what)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos, end, what)
        elif wire_type == _LEN:
            length, pos = _read_varint(buf, pos, end, what)
            value, pos = (pos, pos + length), pos + length
        elif wire_type in (_FIXED64, _FIXED32):
            width = 8 if wire_type == _FIXED64 else 4
            value, pos = buf[pos : pos + width], pos + width
        else:
            raise _malformed(what, f"unsupported wire type {wire_type} for field {field}")
        if pos > end:
            raise _malformed(what, f"field {field} runs past the end of the message")
        yield field, wire_type, value


def _read_tensor(buf: bytes, span: tuple[int, int], name: str, elsewhere: tuple | None = None) -> np.ndarray:
    """A Tensor's array: a view of its data in `buf`, or with `elsewhere` (buffer, offset) of the
    bytes at that offset of that buffer (the same-host feed's slot), its own data then empty."""
    dtype, shape, data = "", [], (span[0], span[0])
    for field, wire_type, value in _fields(buf, *span, f"tensor {name!r}", 3 + MAX_DIMS):
        if wire_type != _LEN:
            if field == 2 and wire_type == _VARINT:  # an unpacked shape element
                shape.append(_int64(value))
            continue
        if field == 1:
            dtype = buf[value[0] : value[1]].decode("utf-8", "replace")
        elif field == 2:
            pos, stop = value
            while pos < stop and len(shape) <= MAX_DIMS:
                dim, pos = _read_varint(buf, pos, stop, f"tensor {name!r} shape")
                shape.append(_int64(dim))
        elif field == 3:
            data = value
    if elsewhere is not None:
        if data[1] != data[0]:
            raise _malformed(f"tensor {name!r}", "data both inline and in the region")
        source, offset = elsewhere
        wire_dtype = _wire_dtype(dtype)  # validated before use; array_from_bytes names what is wrong
        itemsize = 1 if isinstance(wire_dtype, str) else wire_dtype.itemsize
        nbytes = math.prod(shape) * itemsize if shape and all(d >= 0 for d in shape) else -1
        if offset + nbytes > len(source):
            raise _malformed(f"tensor {name!r}", f"{nbytes} bytes at {offset} run past the {len(source)}-byte slot")
        return array_from_bytes(source, dtype, shape, offset, nbytes, name)
    return array_from_bytes(buf, dtype, shape, data[0], data[1] - data[0], name)


def _read_batch(
    buf: bytes,
    span: tuple[int, int],
    what: str,
    allowed: Collection[str] | None,
    region: tuple[memoryview, list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """The columns of a batch; with `allowed`, a column not in it is refused before it is read.

    With `region` (a slot's bytes, each column's offset in it) the columns' bytes are read from
    the slot, one offset per column in order.
    """
    columns = {}
    limit = _MAX_RESPONSE_COLUMNS if allowed is None else len(allowed)
    for field, wire_type, entry in _fields(buf, *span, what, limit):
        if field != 1 or wire_type != _LEN:
            continue
        name, tensor = "", None
        for entry_field, entry_type, value in _fields(buf, *entry, f"{what} column", 2):
            if entry_type != _LEN:
                continue
            if entry_field == 1:
                name = buf[value[0] : value[1]].decode("utf-8", "replace")
            elif entry_field == 2:
                tensor = value
        if allowed is not None and name not in allowed:
            raise InvalidBatchError(f"column {name!r} is not in the spec (expected columns: {sorted(allowed)})")
        if name in columns:
            raise _malformed(what, f"column {name!r} appears twice")
        elsewhere = None
        if region is not None:
            if len(columns) >= len(region[1]):
                raise _malformed(what, f"more columns than the {len(region[1])} region offsets")
            elsewhere = (region[0], region[1][len(columns)])
        columns[name] = _read_tensor(buf, tensor or (entry[1], entry[1]), name, elsewhere)
    if region is not None and len(columns) != len(region[1]):
        raise _malformed(what, f"{len(region[1])} region offsets for {len(columns)} columns")
    return columns


@dataclass(frozen=True)
class RegionAnswer:
    """What a SampleResponse says of the same-host feed's region."""

    used: bool
    """The columns are in the request's slot (read through `decode_sample_response`'s `slot`)."""
    refused: str
    """Why the shard did not use the region ("" when it did, or none was named)."""


def decode_sample_response(raw: bytes) -> Sample:
    """Reads a serialized `SampleResponse` without copying its arrays (read-only views of `raw`).

    Raises:
        InvalidBatchError: the bytes are not a well-formed SampleResponse (or name a region).
    """
    return decode_sample_reply(raw)[0]


def decode_sample_reply(raw: bytes, slot: memoryview | None = None) -> tuple[Sample, RegionAnswer]:
    """Reads a serialized `SampleResponse` without copying its arrays (read-only views of `raw`,
    or of `slot` for columns the shard wrote into the same-host feed's slot).

    Raises:
        InvalidBatchError: the bytes are not a well-formed SampleResponse, or name region offsets
            when no slot was given (or ones outside it).
    """
    what = "SampleResponse"
    data: dict[str, np.ndarray] = {}
    batch_span = None
    tensors: dict[int, np.ndarray] = {}
    scalars = {5: 0, 7: 0, 8: 0, 9: 0}
    priority_mass = 0.0
    offsets: list[int] = []
    refused = ""
    names = {2: "keys", 3: "probabilities", 4: "weights"}
    for field, wire_type, value in _fields(raw, 0, len(raw), what, 11):
        if field == 1 and wire_type == _LEN:
            batch_span = value
        elif field == 10 and wire_type == _LEN:
            pos, stop = value
            while pos < stop and len(offsets) <= _MAX_RESPONSE_COLUMNS:
                offset, pos = _read_varint(raw, pos, stop, f"{what} region_offsets")
                offsets.append(offset)
        elif field == 11 and wire_type == _LEN:
            refused = raw[value[0] : value[1]].decode("utf-8", "replace")
        elif field in names and wire_type == _LEN:
            tensors[field] = _read_tensor(raw, value, names[field])
        elif field in scalars and wire_type == _VARINT:
            scalars[field] = value
        elif field == 6 and wire_type == _FIXED64:
            priority_mass = struct.unpack("<d", value)[0]
    missing = [names[f] for f in names if f not in tensors]
    if missing:
        raise _malformed(what, f"no {', '.join(missing)}")
    if offsets and slot is None:
        raise _malformed(what, "columns in a region this call named none of")
    if batch_span is not None:
        data = _read_batch(raw, batch_span, what, None, (slot, offsets) if offsets else None)
    sample = Sample(
        data=data,
        keys=tensors[2],
        probabilities=tensors[3],
        weights=tensors[4],
        table_size=scalars[5],
        priority_mass=priority_mass,
        inserts=scalars[7],
        samples=scalars[8],
        boot_id=scalars[9],
    )
    return sample, RegionAnswer(used=bool(offsets), refused=refused)


@dataclass(frozen=True)
class InsertRequestView:
    """A parsed `InsertRequest`'s header; `columns()` reads its batch."""

    writer_id: int
    sequence: int
    timeout_ms: int
    raw: bytes
    batch_span: tuple[int, int] | None
    writer_tag: int = 0
    resent_from: tuple[tuple[int, int, int, int], ...] = ()
    """(shard id, stream id, items acknowledged on it, handed back) of streams given up on (see
    the encoder)."""
    receipts_beyond: int = 0
    """Receipts past the first MAX_RESENT_FROM (not read: the shard counts them as dropped)."""

    def columns(self, allowed: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """The batch's columns as read-only views of the received bytes.

        Args:
            allowed: the column names a batch may carry (a shard's spec and `priority`); a batch
                naming another is refused before its data is read. None: any.

        Raises:
            InvalidBatchError: a column is malformed or not allowed (named).
        """
        if self.batch_span is None:
            return {}
        return _read_batch(self.raw, self.batch_span, "InsertRequest", allowed)


def decode_insert_request(raw: bytes) -> InsertRequestView:
    """Reads a serialized `InsertRequest`'s writer, sequence and timeout; the batch is read later.

    Raises:
        InvalidBatchError: the bytes are not a well-formed message.
    """
    scalars = {2: 0, 3: 0, 4: 0, 5: 0}
    span = None
    resent: list[int] = []
    skipped = 0
    for field, wire_type, value in _fields(raw, 0, len(raw), "InsertRequest", 6):
        if field == 1 and wire_type == _LEN:
            span = value
        elif field in scalars and wire_type == _VARINT:
            scalars[field] = value
        elif field == 6 and wire_type == _LEN:
            pos, stop = value
            while pos < stop:  # keeps the first MAX_RESENT_FROM receipts' numbers, only counts the rest
                number, pos = _read_varint(raw, pos, stop, "InsertRequest resent_from")
                if len(resent) < RECEIPT_FIELDS * MAX_RESENT_FROM:
                    resent.append(number)
                else:
                    skipped += 1
    if (len(resent) + skipped) % RECEIPT_FIELDS:
        raise _malformed(
            "InsertRequest", f"resent_from holds {len(resent) + skipped} numbers, not {RECEIPT_FIELDS} per receipt"
        )
    beyond = skipped // RECEIPT_FIELDS
    receipts = tuple(tuple(resent[i : i + RECEIPT_FIELDS]) for i in range(0, len(resent), RECEIPT_FIELDS))
    _check_stream(scalars[2], receipts)
    return InsertRequestView(scalars[2], scalars[3], scalars[4], raw, span, scalars[5], receipts, beyond)


def _check_stream(writer_id: int, receipts: tuple[tuple[int, ...], ...]) -> None:
    """Refuses what a shard's insert ledger could not record: stream 0 (the ledger's shared slot), a receipt naming a shard id no key can hold."""
    if not writer_id:
        raise _malformed("InsertRequest", "no stream id (writer_id 0)")
    for receipt in receipts:
        if receipt[0] > MAX_SHARD_ID:
            raise _malformed("InsertRequest", f"receipt of shard {receipt[0]} (shard ids are 0..{MAX_SHARD_ID})")
