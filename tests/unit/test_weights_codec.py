"""The weights payload: safetensors written and read back from any buffer, split into chunks and
joined again; malformed payloads refused with a typed error, never half-decoded."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from learner import MalformedWeightsError, decode_weights, encode_weights, join_chunks, split_chunks

STATE = {
    "torso.0.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "head.bias": torch.tensor([0.5, -1.5], dtype=torch.float64),
    "half": torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16),
    "mask": torch.tensor([True, False, True]),
    "steps": torch.tensor(7, dtype=torch.int64),  # 0-dim
    "empty": torch.zeros((0, 5), dtype=torch.float16),
    "bytes": torch.arange(5, dtype=torch.uint8),
}


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_a_payload_decodes_to_the_state_and_version_it_was_encoded_from():
    blob = encode_weights(STATE, version=42)
    version, tensors = decode_weights(blob)
    assert version == 42
    _assert_same(tensors, STATE)
    _assert_same(tensors, load_safetensors(blob))  # the same reading as safetensors' own


def test_a_bytearray_is_decoded_in_place_and_read_only_buffers_are_copied_once():
    blob = bytearray(encode_weights(STATE, version=1))
    _, tensors = decode_weights(blob)
    start = np.frombuffer(blob, np.uint8).ctypes.data
    assert start <= tensors["torso.0.weight"].data_ptr() < start + len(blob)  # a view, no copy
    view = np.frombuffer(bytes(blob), np.uint8)  # read-only, as Ray's object store hands it out
    _, copied = decode_weights(view)
    _assert_same(copied, STATE)
    copied["torso.0.weight"] += 1  # writable: its own buffer
    assert view[-1] == blob[-1]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 100, 10**6])
def test_chunks_are_at_most_chunk_bytes_and_join_to_the_payload(chunk_bytes):
    blob = encode_weights(STATE, version=3)
    chunks = split_chunks(blob, chunk_bytes)
    assert len(chunks) == -(-len(blob) // chunk_bytes)
    assert all(1 <= len(chunk) <= chunk_bytes for chunk in chunks)
    as_numpy = [np.frombuffer(chunk, np.uint8) for chunk in chunks]  # what the object store returns
    version, tensors = decode_weights(join_chunks(as_numpy, len(blob)))
    assert version == 3
    _assert_same(tensors, STATE)


def test_a_missing_or_cut_chunk_is_malformed_not_decoded():
    blob = encode_weights(STATE, version=3)
    chunks = split_chunks(blob, 64)
    with pytest.raises(MalformedWeightsError, match="manifest says"):
        join_chunks(chunks[:-1], len(blob))
    with pytest.raises(MalformedWeightsError, match="manifest says"):
        join_chunks([*chunks[:-1], chunks[-1][:-1]], len(blob))


def test_split_refuses_a_chunk_size_below_one():
    with pytest.raises(ValueError, match="chunk_bytes=0"):
        split_chunks(b"abc", 0)


def _blob(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter than the header length"),
        (b"\xff" * 8 + b"{}", "a header of"),
        (struct.pack("<Q", 3) + b"{{{", "JSONDecodeError"),
        (_blob([1, 2]), "not a JSON object"),
        (_blob({"w": F32_2}, bytes(8)), "KeyError"),  # no version in the metadata
        (_blob({"__metadata__": {"version": "x"}}), "ValueError"),
        (_blob({"__metadata__": {"version": "1"}, "w": F32_2}, bytes(4)), "do not hold F32"),
        (_blob({"__metadata__": {"version": "1"}, "w": {**F32_2, "shape": [3]}}, bytes(8)), "do not hold F32"),
        (_blob({"__metadata__": {"version": "1"}, "w": {**F32_2, "data_offsets": [4, 0]}}, bytes(8)), "do not hold"),
        (_blob({"__metadata__": {"version": "1"}, "w": {**F32_2, "dtype": "C64"}}, bytes(8)), "unknown dtype"),
    ],
)
def test_malformed_payloads_are_refused_with_a_typed_error(blob, message):
    with pytest.raises(MalformedWeightsError, match=message):
        decode_weights(blob)


def test_auto_is_redis_in_a_process_without_ray():
    from learner.weights import resolve_transport

    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    assert resolve_transport("auto") == "redis"
    assert resolve_transport("object_store") == "object_store"
