"""The weights payload: a policy state dict as safetensors bytes (no pickle), split into chunks.

One format for every transport. `encode_weights` writes safetensors with the version in its
metadata; `decode_weights` reads it back from any buffer (bytes, bytearray, the read-only numpy
views Ray hands out) into tensors that share one writable buffer, so a reader holds one copy of
the payload, not three (reply, joined bytes, tensors). Chunks keep every piece below the 512 MB a
Redis string may hold and let a transport move a large policy piece by piece.

The safetensors layout (https://github.com/huggingface/safetensors#format): an 8-byte
little-endian header length N, N bytes of JSON ({name: {dtype, shape, data_offsets: [begin, end]},
"__metadata__": {...}}), then the tensors' bytes, offsets counted from the end of the header.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable

import torch
from safetensors.torch import save as save_safetensors

from learner.errors import MalformedWeightsError

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


def encode_weights(state: dict[str, torch.Tensor], version: int) -> bytes:
    """`state` as safetensors bytes; the metadata holds `version` and the publish time."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    return save_safetensors(tensors, metadata={"version": str(version), "published_at": f"{time.time():.6f}"})


def decode_weights(blob) -> tuple[int, dict[str, torch.Tensor]]:
    """(version, tensors) of an encoded payload.

    A bytearray is used in place (the tensors are views into it); any other buffer is copied once
    into a new bytearray first.

    Raises:
        MalformedWeightsError: not safetensors, offsets that do not match the shapes, an unknown
            dtype, or no version in the metadata.
    """
    buffer = blob if isinstance(blob, bytearray) else bytearray(memoryview(blob).cast("B"))
    try:
        return _decode(buffer)
    except MalformedWeightsError:
        raise
    except Exception as exc:
        raise MalformedWeightsError(f"not a qfleet weights blob: {type(exc).__name__}: {exc}") from None


def _decode(buffer: bytearray) -> tuple[int, dict[str, torch.Tensor]]:
    def malformed(why: str) -> MalformedWeightsError:
        return MalformedWeightsError(f"not a qfleet weights blob: {why}")

    if len(buffer) < 8:
        raise malformed(f"{len(buffer)} bytes, shorter than the header length")
    header_len = int.from_bytes(buffer[:8], "little")
    data_start = 8 + header_len
    if data_start > len(buffer):
        raise malformed(f"a header of {header_len} bytes in {len(buffer)} bytes")
    header = json.loads(bytes(buffer[8:data_start]))
    if not isinstance(header, dict):
        raise malformed("the header is not a JSON object")
    version = int(header.pop("__metadata__", {})["version"])
    data_len = len(buffer) - data_start
    tensors = {}
    for name, entry in header.items():
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise malformed(f"tensor {name!r}: unknown dtype {entry['dtype']!r}")
        shape = [int(n) for n in entry["shape"]]
        begin, end = (int(n) for n in entry["data_offsets"])
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_len or end - begin != count * dtype.itemsize:
            raise malformed(f"tensor {name!r}: offsets {begin}..{end} do not hold {entry['dtype']} {shape}")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(buffer, dtype=dtype, count=count, offset=data_start + begin).view(shape)
    return version, tensors


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
