"""The weights payload: safetensors written and read back from any buffer (in place: tensors that
view it), split into chunks and joined again; malformed payloads refused with a typed error, never
half-decoded; a payload that is not the manifest's (size, header digest) refused."""

from __future__ import annotations

import gc
import json
import pickle
import struct
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from learner import (
    MalformedWeightsError,
    SharedWeights,
    WeightsHostError,
    WeightStoreError,
    decode_weights,
    encode_weights,
    header_digest,
    join_chunks,
    split_chunks,
)
from learner.weights_transport import Manifest, check_payload

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
    view_start = view.ctypes.data
    assert not view_start <= copied["torso.0.weight"].data_ptr() < view_start + view.nbytes  # its own buffer
    copied["torso.0.weight"] += 1  # writable, and writing leaves the object store's bytes alone
    assert bytes(view) == bytes(blob)


def test_in_place_tensors_view_a_read_only_buffer_and_keep_it_alive():
    """As a reader decodes the numpy array Ray maps from the node's shared memory: no copy, and
    the tensors keep the array alive after the reader drops it (and only as long as they live)."""
    payload = np.frombuffer(encode_weights(STATE, version=3), np.uint8)  # read-only
    start = payload.ctypes.data
    version, tensors = decode_weights(payload, in_place=True)
    assert version == 3
    assert start <= tensors["torso.0.weight"].data_ptr() < start + payload.nbytes
    alive = weakref.ref(payload)
    del payload
    gc.collect()
    assert alive() is not None  # held by the tensors
    _assert_same(tensors, STATE)
    del tensors
    gc.collect()
    assert alive() is None


def _shared(version: int = 3) -> tuple[np.ndarray, SharedWeights]:
    payload = np.frombuffer(encode_weights(STATE, version=version), np.uint8)  # read-only, as Ray hands it out
    return payload, SharedWeights(payload, decode_weights(payload, in_place=True)[1])


def test_shared_weights_hand_out_copies_never_the_views_of_the_shared_payload():
    payload, shared = _shared()
    before = payload.tobytes()
    _assert_same(dict(shared), STATE)
    shared["torso.0.weight"][0, 0] = 42.0  # a copy of its own
    assert shared["torso.0.weight"][0, 0] == 0.0
    assert payload.tobytes() == before
    with pytest.raises(TypeError):
        shared.payload[0] = 1  # read-only bytes


def test_weights_loaded_into_a_module_are_copies_of_the_shared_payload():
    """A network loaded from shared weights and then trained in place leaves the payload (that
    every reader on the node maps) unchanged."""
    state = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.ones(2)}
    payload = np.frombuffer(encode_weights(state, version=1), np.uint8)
    before = payload.tobytes()
    shared = SharedWeights(payload, decode_weights(payload, in_place=True)[1])
    module = torch.nn.Linear(3, 2)
    shared.load_into(module)
    assert torch.equal(module.weight, state["weight"]) and torch.equal(module.bias, state["bias"])
    with torch.no_grad():
        module.weight.add_(100.0)
        module.bias.zero_()
    assert payload.tobytes() == before
    _assert_same(dict(shared), state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        shared.load_into(torch.nn.Linear(4, 2))


def test_decoding_a_read_only_buffer_in_a_thread_warns_nothing():
    """Torch's warning about read-only buffers is spent at import, not raised (or filtered with a
    thread-unsafe catch_warnings) in a reader's thread: a fresh process with warnings as errors."""
    code = (
        "import threading, numpy as np; from learner import encode_weights, decode_weights; import torch\n"
        "payload = np.frombuffer(encode_weights({'w': torch.ones(3)}, 1), np.uint8)\n"
        "errors = []\n"
        "def read():\n"
        "    try: decode_weights(payload, in_place=True)\n"
        "    except Exception as exc: errors.append(exc)\n"
        "thread = threading.Thread(target=read); thread.start(); thread.join()\n"
        "assert not errors, errors\n"
    )
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


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
V1 = {"__metadata__": {"version": "1"}}


def _one(**changes) -> bytes:
    """A payload of one F32 tensor of 2 values whose header entry has `changes`."""
    return _blob({**V1, "w": {**F32_2, **changes}}, bytes(8))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        pytest.param(b"", "shorter than the header length", id="empty"),
        pytest.param(b"\xff" * 8 + b"{}", "above the 100000000 allowed", id="header-length-over-the-cap"),
        pytest.param(struct.pack("<Q", 200) + b"{}", "a header of 200 bytes in 10", id="header-longer-than-the-blob"),
        pytest.param(struct.pack("<Q", 3) + b"{{{", "JSONDecodeError", id="header-not-json"),
        pytest.param(_blob([1, 2]), "not a JSON object", id="header-a-list"),
        pytest.param(_blob({"w": F32_2}, bytes(8)), "no version", id="no-metadata"),
        pytest.param(_blob({"__metadata__": "1"}), "no version", id="metadata-not-an-object"),
        pytest.param(_blob({"__metadata__": {"version": "x"}}), "not an integer >= 1", id="version-not-a-number"),
        pytest.param(_blob({"__metadata__": {"version": "0"}}), "'0': not an integer >= 1", id="version-0"),
        pytest.param(_blob({"__metadata__": {"version": "-3"}}), "not an integer >= 1", id="version-negative"),
        pytest.param(_blob({"__metadata__": {"version": " 1"}}), "not an integer >= 1", id="version-padded"),
        pytest.param(_blob({"__metadata__": {"version": 1}}), "not an integer >= 1", id="version-not-a-string"),
        pytest.param(_blob({**V1, "w": F32_2}, bytes(4)), "cover 8 of the 4 data bytes", id="data-cut"),
        pytest.param(
            _blob({**V1, "a": F32_2, "b": {**F32_2, "data_offsets": [8, 16]}}, bytes(8)),
            "cover 16 of the 8 data bytes",
            id="offsets-past-the-end",
        ),
        pytest.param(_one(shape=[3]), "do not hold F32", id="shape-too-large-for-the-offsets"),
        pytest.param(_one(data_offsets=[4, 0]), "do not hold", id="offsets-reversed"),
        pytest.param(_one(dtype="C64"), "unknown dtype", id="unknown-dtype"),
        pytest.param(_one(dtype=["F32"]), "unknown dtype", id="dtype-not-a-string"),
        pytest.param(_one(shape=["2"]), "not a list of integers", id="shape-dim-a-string"),
        pytest.param(_one(shape=[True, 2]), "not a list of integers", id="shape-dim-a-bool"),
        pytest.param(_one(shape=[2.0]), "not a list of integers", id="shape-dim-a-float"),
        pytest.param(_one(shape=[-2]), "not a list of integers >= 0", id="shape-dim-negative"),
        pytest.param(_one(shape={"0": 2}), "not a list of integers", id="shape-an-object"),
        pytest.param(_one(shape=2), "not a list of integers", id="shape-a-number"),
        pytest.param(_one(data_offsets=["0", "8"]), "not a list of two integers", id="offset-a-string"),
        pytest.param(_one(data_offsets=[False, 8]), "not a list of two integers", id="offset-a-bool"),
        pytest.param(_one(data_offsets=[0, 4, 8]), "not a list of two integers", id="three-offsets"),
        pytest.param(_one(data_offsets={"0": 0, "1": 8}), "not a list of two integers", id="offsets-an-object"),
        pytest.param(_blob({**V1, "w": [1]}, bytes(8)), "not an object of dtype", id="entry-a-list"),
        pytest.param(_blob({**V1, "w": {**F32_2, "x": 1}}, bytes(8)), "not an object of dtype", id="entry-extra-key"),
        pytest.param(
            _blob({**V1, "w": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, bytes(8)),
            "do not hold F32",
            id="offset-not-a-multiple-of-the-item-size",
        ),
        pytest.param(
            _blob({**V1, "a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, bytes(12)),
            "gap or overlap at byte 8",
            id="tensors-overlap",
        ),
        pytest.param(
            _blob({**V1, "a": F32_2, "b": {**F32_2, "data_offsets": [12, 20]}}, bytes(20)),
            "gap or overlap at byte 8",
            id="gap-between-tensors",
        ),
        pytest.param(_one(data_offsets=[4, 12], shape=[2]), "gap or overlap at byte 0", id="gap-before-the-first"),
        pytest.param(_blob({**V1, "w": F32_2}, bytes(12)), "cover 8 of the 12 data bytes", id="bytes-after-the-last"),
        pytest.param(
            _blob({**V1, "m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}, b"\x01\x00\x02"),
            "BOOL bytes other than 0 and 1",
            id="bool-byte-2",
        ),
    ],
)
def test_malformed_payloads_are_refused_with_a_typed_error(blob, message):
    with pytest.raises(MalformedWeightsError, match=message):
        decode_weights(blob)


def test_tensors_listed_out_of_offset_order_still_decode():
    """The tiling rule sorts by offset: a header's key order is not the data's order."""
    data = struct.pack("<2f", 1.0, 2.0) + struct.pack("<q", 7)
    blob = _blob({**V1, "n": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]}, "w": F32_2}, data)
    version, tensors = decode_weights(blob)
    assert version == 1 and tensors["w"].tolist() == [1.0, 2.0] and tensors["n"].item() == 7


def _manifest_of(blob: bytes, version: int = 2) -> Manifest:
    return Manifest(version, "object_store", 1, len(blob), header_digest(blob), {})


def test_every_publish_has_its_own_header_digest_whatever_buffer_holds_it():
    first, second = encode_weights(STATE, version=2), encode_weights(STATE, version=2)
    assert header_digest(first) != header_digest(second)  # the same state and version, another publish
    assert header_digest(np.frombuffer(first, np.uint8)) == header_digest(bytearray(first))
    assert check_payload(np.frombuffer(first, np.uint8), _manifest_of(first)) is None


def test_a_payload_of_another_publish_version_or_size_is_refused():
    blob = encode_weights(STATE, version=2)
    manifest = _manifest_of(blob)
    other_publish = encode_weights(STATE, version=2)
    assert "not the one the manifest announces" in check_payload(other_publish, manifest)
    assert "not the one the manifest announces" in check_payload(encode_weights(STATE, 3), _manifest_of(blob, 3))
    assert check_payload(blob[:-4], manifest) == f"{len(blob) - 4} bytes, the manifest says {len(blob)}"
    assert check_payload(blob + b"\0", manifest) == f"{len(blob) + 1} bytes, the manifest says {len(blob)}"
    changed_header = bytearray(blob)
    changed_header[20] ^= 1
    assert "not the one the manifest announces" in check_payload(changed_header, manifest)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        pytest.param(b"\x01\x00", "2 bytes, shorter than the header length", id="no-length-field"),
        pytest.param(struct.pack("<Q", 50) + b"{}", "a header of 50 bytes in 10 bytes", id="header-past-the-end"),
        pytest.param(b"\xff" * 16, "a header of 18446744073709551615 bytes", id="header-length-2**64-1"),
    ],
)
def test_the_header_digest_of_a_cut_payload_is_refused(blob, message):
    with pytest.raises(MalformedWeightsError, match=message):
        header_digest(blob)
    assert message.split(",")[0] in check_payload(blob, Manifest(1, "redis", 1, len(blob), "0" * 64, {}))


@pytest.mark.parametrize(
    "error",
    [
        WeightsHostError("weights host qfleet-r-weights-1a2b3c4d did not take v7", "qfleet-r-weights-1a2b3c4d"),
        WeightStoreError("cannot publish weights to redis://127.0.0.1:1", "redis://127.0.0.1:1"),
        MalformedWeightsError("not a weights manifest", "qfleet:r:learner:weights"),
    ],
    ids=type,
)
def test_weights_errors_survive_pickling_with_their_fields(error):
    """They cross Ray's process boundaries (a reader in an actor, the learner in another)."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)


def test_auto_is_redis_in_a_process_without_ray():
    from learner.weights import resolve_transport

    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    assert resolve_transport("auto") == "redis"
    assert resolve_transport("object_store") == "object_store"
