"""The weights payload: a policy state dict as safetensors bytes (no pickle), split into chunks.

One format for every transport. `encode_weights` writes safetensors with the version and a random
publish id in its metadata, so the header (`header_digest`) names one publish: a reader that checks
it against the manifest refuses another version's, another run's or another publish's payload
without hashing the tensors' bytes. `decode_weights` parses the header strictly and builds the
tensors as views over the buffer it is given: a reader holds one copy of the payload (Redis), or
none of its own (the read-only numpy array Ray maps from the node's shared memory). Chunks keep
every piece below the 512 MB a Redis string may hold.

The safetensors layout (https://github.com/huggingface/safetensors#format): an 8-byte
little-endian header length N, N bytes of JSON ({name: {dtype, shape, data_offsets: [begin, end]},
"__metadata__": {...}}), then the tensors' bytes, offsets counted from the end of the header.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save as save_safetensors

from learner.errors import MalformedWeightsError

if TYPE_CHECKING:
    from typing_extensions import Buffer  # bytes, bytearray, memoryview, numpy arrays: the buffer protocol

DEFAULT_CHUNK_BYTES = 64 * 2**20
"""Default chunk size: far below Redis's 512 MB string limit, large enough that a 7 MB policy is
one chunk."""

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""safetensors dtype names -> torch dtypes (those a policy network holds)."""


def _silence_read_only_buffer_warning() -> None:
    """Torch warns, once per process, that a tensor over a read-only buffer is writable: spent
    here, at import, on a dummy buffer, so that it never fires in a reader's thread (a per-call
    `warnings.catch_warnings` is not thread-safe). Why the views are never written: `SharedWeights`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        torch.frombuffer(b"\0", dtype=torch.uint8)


_silence_read_only_buffer_warning()

MAX_HEADER_BYTES = 100_000_000
"""Longest header a reader parses (safetensors' own limit): a length field of 2**63 is refused
before any allocation."""


def encode_weights(state: dict[str, torch.Tensor], version: int) -> bytes:
    """`state` as safetensors bytes; the metadata holds `version`, the publish time and a random
    publish id (128 bits: two publishes never share a header, see `header_digest`)."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    metadata = {"version": str(version), "published_at": f"{time.time():.6f}", "publish_id": secrets.token_hex(16)}
    return save_safetensors(tensors, metadata=metadata)


def header_digest(blob: Buffer) -> str:
    """The SHA-256, in hex, of a payload's length field and header (not of the tensors' bytes).

    The header holds the version, the publish id and every tensor's name, dtype, shape and offsets,
    so equal digests mean the same publish's layout; with the payload's size checked too, a reader
    refuses a wrong or mixed-up payload for the cost of hashing a few kB, not the whole policy.

    Raises:
        MalformedWeightsError: the length field is missing or points past the payload.
    """
    view = memoryview(blob).cast("B")
    if len(view) < 8:
        raise _malformed(f"{len(view)} bytes, shorter than the header length")
    header_len = int.from_bytes(view[:8], "little")
    if header_len > min(MAX_HEADER_BYTES, len(view) - 8):
        raise _malformed(f"a header of {header_len} bytes in {len(view)} bytes")
    return hashlib.sha256(view[: 8 + header_len]).hexdigest()


def decode_weights(blob: Buffer, *, in_place: bool = False) -> tuple[int, dict[str, torch.Tensor]]:
    """(version, tensors) of an encoded payload.

    A bytearray is used in place (the tensors are views into it); any other buffer (bytes, a
    memoryview, the read-only numpy arrays Ray hands out) is copied once into a new bytearray first,
    unless `in_place`: then the tensors are views of `blob` whatever it is. Torch has no read-only
    tensors: views over a read-only buffer (bytes, Ray's shared memory, which every reader on the
    node shares) are writable, and a write changes the buffer for every reader. `WeightStore.fetch`
    therefore hands them out only inside a `SharedWeights` (learner/shared_weights.py).

    The header is checked before any tensor is built: a version >= 1, known dtypes, integer shapes
    and offsets that tile the data exactly (sorted by offset, no gap, no overlap, aligned to the
    item size), boolean bytes 0 or 1. Anything else is refused whole, never half-decoded.

    Raises:
        MalformedWeightsError: not a qfleet weights payload (the message says why).
    """
    if in_place or isinstance(blob, bytearray):
        buffer = blob
    else:
        buffer = bytearray(memoryview(blob).cast("B"))
    try:
        return _decode(buffer)
    except MalformedWeightsError:
        raise
    except Exception as exc:
        raise MalformedWeightsError(f"not a qfleet weights blob: {type(exc).__name__}: {exc}") from None


def _malformed(why: str) -> MalformedWeightsError:
    return MalformedWeightsError(f"not a qfleet weights blob: {why}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(buffer: Buffer) -> tuple[int, dict[str, torch.Tensor]]:
    view = memoryview(buffer).cast("B")
    if len(view) < 8:
        raise _malformed(f"{len(view)} bytes, shorter than the header length")
    header_len = int.from_bytes(view[:8], "little")
    if header_len > MAX_HEADER_BYTES:
        raise _malformed(f"a header of {header_len} bytes, above the {MAX_HEADER_BYTES} allowed")
    data_start = 8 + header_len
    if data_start > len(view):
        raise _malformed(f"a header of {header_len} bytes in {len(view)} bytes")
    header = json.loads(bytes(view[8:data_start]))
    if not isinstance(header, dict):
        raise _malformed("the header is not a JSON object")
    version = _version(header.pop("__metadata__", None))
    entries = {name: _entry(name, entry) for name, entry in header.items()}
    _check_tiling(entries, len(view) - data_start)
    tensors = {}
    for name, (dtype, shape, begin, _) in entries.items():
        count = math.prod(shape)
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        tensor = torch.frombuffer(view, dtype=dtype, count=count, offset=data_start + begin).view(shape)
        if dtype == torch.bool and bool((tensor.view(torch.uint8) > 1).any()):
            raise _malformed(f"tensor {name!r}: BOOL bytes other than 0 and 1")
        tensors[name] = tensor
    return version, tensors


def _version(metadata) -> int:
    if not isinstance(metadata, dict) or "version" not in metadata:
        raise _malformed("no version in the metadata")
    text = metadata["version"]
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or int(text) < 1:
        raise _malformed(f"version {str(text)[:40]!r}: not an integer >= 1")
    return int(text)


def _entry(name: str, entry) -> tuple[torch.dtype, list[int], int, int]:
    """(dtype, shape, begin, end) of a header entry whose fields have the right types and sizes."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _malformed(f"tensor {name!r}: not an object of dtype, shape, data_offsets")
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise _malformed(f"tensor {name!r}: unknown dtype {str(entry['dtype'])[:40]!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        raise _malformed(f"tensor {name!r}: shape {str(shape)[:80]} is not a list of integers >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(n) for n in offsets):
        raise _malformed(f"tensor {name!r}: data_offsets {str(offsets)[:80]} is not a list of two integers")
    begin, end = offsets
    if begin % dtype.itemsize or end - begin != math.prod(shape) * dtype.itemsize:
        raise _malformed(f"tensor {name!r}: offsets {begin}..{end} do not hold {entry['dtype']} {shape}")
    return dtype, shape, begin, end


def _check_tiling(entries: dict[str, tuple], data_len: int) -> None:
    """The tensors, sorted by offset, cover the data bytes exactly: from 0, each where the one
    before ends, the last at `data_len` (safetensors' own rule: no gap, no overlap, no tail)."""
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != position:
            raise _malformed(f"tensor {name!r}: offsets {begin}..{end} leave a gap or overlap at byte {position}")
        position = end
    if position != data_len:
        raise _malformed(f"the tensors cover {position} of the {data_len} data bytes")


def split_chunks(blob: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[memoryview]:
    """`blob` as consecutive views of at most `chunk_bytes` each (one view for an empty blob)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes={chunk_bytes}: must be >= 1")
    view = memoryview(blob)
    return [view[start : start + chunk_bytes] for start in range(0, max(len(blob), 1), chunk_bytes)]


def join_chunks(chunks: Iterable, total_bytes: int) -> bytearray:
    """The chunks (any buffers) joined into one writable buffer, for `decode_weights`.

    Raises:
        MalformedWeightsError: they do not add up to `total_bytes` (a chunk missing or cut).
    """
    joined = bytearray().join(chunks)
    if len(joined) != total_bytes:
        raise MalformedWeightsError(f"weights chunks hold {len(joined)} bytes, the manifest says {total_bytes}")
    return joined
