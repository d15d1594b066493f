"""Replay checkpoints: one safetensors file per checkpoint, written atomically.

A checkpoint holds the occupied rows of every column, the slot generations, the selector's
priorities, and the counters (inserts, samples, ...) in the safetensors metadata, with a CRC32 per
array. No pickle: safetensors is a JSON header plus raw little-endian arrays.

Files are `replay-<sequence>.safetensors` in the checkpoint folder. Each is written to a hidden
temporary file, fsynced and renamed into place, so a reader never sees half a file. The newest
`KEEP` checkpoints are kept; on restore, a checkpoint that is corrupt, truncated or written for
another spec/capacity/selector, or that holds values out of range (a size beyond capacity,
negative counters, non-finite or negative priorities), is refused with a logged message and the
next older one is tried.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import zlib
from dataclasses import dataclass

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from replay.errors import CheckpointError, SpecMismatchError
from replay.limits import MAX_PRIORITY
from replay.private_files import create_private_file, private_dir
from replay.spec import Spec

FORMAT = "qfleet-replay-checkpoint/1"
KEEP = 3
_NAME = re.compile(r"^replay-(\d{12})\.safetensors$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableIdentity:
    """What must match for a checkpoint to be loaded into a table."""

    spec: Spec
    capacity: int
    selector: str


@dataclass(frozen=True)
class LoadedCheckpoint:
    """Arrays and counters read from a checkpoint file."""

    path: pathlib.Path
    sequence: int
    arrays: dict[str, np.ndarray]
    counters: dict[str, int]


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def list_checkpoints(directory: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """(sequence, path) of every checkpoint file in `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def write_checkpoint(
    directory: pathlib.Path,
    identity: TableIdentity,
    arrays: dict[str, np.ndarray],
    counters: dict[str, int],
    extra: dict[str, str] | None = None,
) -> tuple[pathlib.Path, int]:
    """Writes a new checkpoint atomically, owner-only (0600 in a 0700 directory); returns (path,
    sequence). Prunes beyond `KEEP`."""
    private_dir(directory)
    existing = list_checkpoints(directory)
    sequence = existing[0][0] + 1 if existing else 1
    final = directory / f"replay-{sequence:012d}.safetensors"
    temporary = directory / f".{final.name}.tmp-{os.getpid()}"
    metadata = {
        "format": FORMAT,
        "spec": identity.spec.to_json(),
        "capacity": str(identity.capacity),
        "selector": identity.selector,
        "counters": json.dumps(counters, sort_keys=True),
        "crc32": json.dumps({name: _crc(a) for name, a in arrays.items()}, sort_keys=True),
        **(extra or {}),
    }
    try:
        create_private_file(temporary)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(temporary), metadata=metadata)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        temporary.unlink(missing_ok=True)
    for _, old in existing[KEEP - 1 :]:
        old.unlink(missing_ok=True)
    return final, sequence


def read_checkpoint(path: pathlib.Path, identity: TableIdentity) -> LoadedCheckpoint:
    """Reads and verifies one checkpoint file.

    Raises:
        SpecMismatchError: written for another spec, capacity or selector.
        CheckpointError: not a qfleet replay checkpoint, truncated, or a checksum mismatch.
    """
    match = _NAME.match(path.name)
    sequence = int(match.group(1)) if match else 0
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a qfleet replay checkpoint (format {metadata.get('format')!r})")
            stored_spec = Spec.from_json(metadata["spec"])
            if stored_spec != identity.spec:
                raise SpecMismatchError(
                    f"{path}: written for spec {stored_spec.to_json()}, this table has {identity.spec.to_json()}"
                )
            if int(metadata["capacity"]) != identity.capacity or metadata["selector"] != identity.selector:
                raise SpecMismatchError(
                    f"{path}: written for capacity={metadata['capacity']} selector={metadata['selector']}, "
                    f"this table has capacity={identity.capacity} selector={identity.selector}"
                )
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
            counters = {k: int(v) for k, v in json.loads(metadata["counters"]).items()}
            checksums = json.loads(metadata["crc32"])
    except (SpecMismatchError, CheckpointError):
        raise
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if set(checksums) != set(arrays):
        raise CheckpointError(f"{path}: arrays {sorted(arrays)} do not match the recorded {sorted(checksums)}")
    for name, array in arrays.items():
        if _crc(array) != checksums[name]:
            raise CheckpointError(f"{path}: checksum mismatch in array {name!r}")
    size = counters.get("size", -1)
    for name, (shape, _) in identity.spec.columns.items():
        column = arrays.get(f"column/{name}")
        if column is None or column.shape != (size, *shape):
            raise CheckpointError(f"{path}: column {name!r} missing or of the wrong shape for size {size}")
    _check_ranges(path, arrays, counters, identity)
    return LoadedCheckpoint(path=path, sequence=sequence, arrays=arrays, counters=counters)


_COUNTERS = ("size", "next_slot", "inserts", "samples", "dropped_priority_updates")


def _check_ranges(
    path: pathlib.Path, arrays: dict[str, np.ndarray], counters: dict[str, int], identity: TableIdentity
) -> None:
    """Refuses counters and arrays that a table could not hold or sample from.

    Raises:
        CheckpointError: naming the first value out of range.
    """
    capacity = identity.capacity
    missing = [name for name in _COUNTERS if name not in counters]
    if missing:
        raise CheckpointError(f"{path}: counters {missing} missing")
    negative = [name for name in _COUNTERS if counters[name] < 0]
    if negative:
        raise CheckpointError(f"{path}: counter {negative[0]}={counters[negative[0]]} is negative")
    size = counters["size"]
    if size > capacity or counters["next_slot"] >= capacity or counters["inserts"] < size:
        raise CheckpointError(
            f"{path}: size={size}, next_slot={counters['next_slot']}, inserts={counters['inserts']} "
            f"do not fit capacity={capacity}"
        )
    if arrays.get("generations", np.empty(0)).shape != (size,):
        raise CheckpointError(f"{path}: generations missing or not of shape ({size},)")
    bounds = {"selector/weights": (capacity,), "selector/max_priority": (1,)}
    for name, shape in bounds.items():
        if name not in arrays:
            if identity.selector == "prioritized":  # its selector restores from both arrays
                raise CheckpointError(f"{path}: {name} missing for a prioritized table")
            continue
        values = arrays[name]
        if values.shape != shape or values.dtype.kind != "f":
            raise CheckpointError(f"{path}: {name} has shape {values.shape} {values.dtype}, expected {shape} float")
        if not np.all((values >= 0) & (values <= MAX_PRIORITY)):  # False for NaN too
            raise CheckpointError(f"{path}: {name} holds values outside [0, {MAX_PRIORITY:g}] (NaN, inf or negative)")


def load_latest(directory: pathlib.Path, identity: TableIdentity) -> tuple[LoadedCheckpoint | None, list[str]]:
    """Loads the newest good checkpoint; returns it (or None) and the refusal messages of newer ones."""
    refused = []
    for _, path in list_checkpoints(directory):
        try:
            return read_checkpoint(path, identity), refused
        except (CheckpointError, SpecMismatchError) as exc:
            message = f"refused checkpoint {exc}"
            log.warning("%s; trying the previous one", message)
            refused.append(message)
    return None, refused
