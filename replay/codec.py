"""Numpy arrays to and from the wire's `Tensor` message (raw bytes, no pickle).

The bulk messages (insert and sample) are written and read in wire.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from replay._proto import replay_pb2
from replay.errors import InvalidBatchError
from replay.limits import MAX_DIMS


def grpc_options(max_message_mb: int) -> list[tuple[str, int]]:
    """Channel/server options shared by server and client: raised message limits."""
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def encode_tensor(value: np.ndarray, tensor: replay_pb2.Tensor) -> replay_pb2.Tensor:
    """Fills `tensor` with the dtype, shape and little-endian bytes of `value`."""
    array = little_endian(np.asarray(value))
    tensor.dtype = array.dtype.name
    tensor.shape[:] = array.shape
    tensor.data = array.tobytes()
    return tensor


def little_endian(array: np.ndarray) -> np.ndarray:
    """`array`, converted to little-endian bytes when it is big-endian."""
    if array.dtype.byteorder == ">":
        return array.astype(array.dtype.newbyteorder("<"))
    return array


@functools.lru_cache(maxsize=64)
def _wire_dtype(name: str) -> np.dtype | str:
    """The little-endian numeric dtype called `name`, or why there is none."""
    try:
        dtype = np.dtype(name).newbyteorder("<")
    except TypeError:
        return f"unknown dtype {name!r}"
    if dtype.hasobject or dtype.kind not in "biuf":
        return f"dtype {name!r} is not a numeric dtype"
    return dtype


def array_from_bytes(buffer, dtype_name: str, shape, offset: int, nbytes: int, name: str) -> np.ndarray:
    """A read-only array viewing `nbytes` of `buffer` from `offset` as `dtype_name` of `shape`.

    Raises:
        InvalidBatchError: naming `name`, for an unknown or non-numeric dtype, a missing batch
            dimension, more than `MAX_DIMS` dimensions, or a byte count that does not match dtype
            and shape.
    """
    dtype = _wire_dtype(dtype_name)
    if isinstance(dtype, str):
        raise InvalidBatchError(f"column {name!r}: {dtype}")
    shape = tuple(shape)
    if len(shape) > MAX_DIMS:
        raise InvalidBatchError(f"column {name!r}: more than {MAX_DIMS} dimensions")
    if not shape or any(d < 0 for d in shape):
        raise InvalidBatchError(f"column {name!r}: shape {list(shape)} lacks a batch dimension")
    count = math.prod(shape)
    if nbytes != count * dtype.itemsize:
        raise InvalidBatchError(
            f"column {name!r}: {nbytes} bytes, expected {count * dtype.itemsize} for shape {list(shape)} of {dtype.name}"
        )
    try:
        return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape)
    except ValueError as exc:  # e.g. a zero-length shape whose other dimensions overflow
        raise InvalidBatchError(f"column {name!r}: shape {list(shape)}: {exc}") from None


def decode_tensor(tensor: replay_pb2.Tensor, name: str) -> np.ndarray:
    """A read-only array viewing the tensor's bytes.

    Raises:
        InvalidBatchError: naming `name`, for an unknown dtype or a byte count that does not match
            dtype and shape.
    """
    data = tensor.data
    return array_from_bytes(data, tensor.dtype, tensor.shape, 0, len(data), name)
