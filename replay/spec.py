"""`Spec`: the columns of a table, each with a per-item shape and a dtype.

A spec is the contract between writers and a table: every batch must carry exactly these columns
with a leading batch dimension. An optional float64 `priority` column (initial priorities) may
ride along with a batch without being part of the spec.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from replay.errors import InvalidBatchError

PRIORITY_COLUMN = "priority"
"""Optional batch column of initial priorities (Ape-X style); never stored as data."""


class Spec:
    """Per-item shape and dtype of every column of a table.

    Args:
        columns: column name -> (per-item shape, dtype), e.g.
            `{"obs": ((4,), "float32"), "action": ((), "int64")}`.

    Raises:
        ValueError: on an empty spec, a bad shape, an unknown dtype or the reserved name
            `priority`.
    """

    def __init__(self, columns: Mapping[str, tuple[tuple[int, ...] | list[int], Any]]):
        if not columns:
            raise ValueError("a Spec needs at least one column")
        parsed: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for name, entry in columns.items():
            if name == PRIORITY_COLUMN:
                raise ValueError(f"column name {PRIORITY_COLUMN!r} is reserved for initial priorities")
            try:
                shape, dtype = entry
                shape = tuple(int(d) for d in shape)
                dtype = np.dtype(dtype)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"column {name!r}: expected (shape, dtype), got {entry!r}: {exc}") from exc
            if any(d < 0 for d in shape):
                raise ValueError(f"column {name!r}: negative dimension in shape {shape}")
            if dtype.hasobject or dtype.kind not in "biuf":
                raise ValueError(f"column {name!r}: dtype {dtype} is not a numeric dtype")
            parsed[name] = (shape, dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
        self._columns = parsed

    @property
    def columns(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Column name -> (per-item shape, little-endian dtype)."""
        return dict(self._columns)

    def __iter__(self):
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def __getitem__(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        return self._columns[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        inner = ", ".join(f"{n!r}: ({s}, {d.name!r})" for n, (s, d) in self._columns.items())
        return f"Spec({{{inner}}})"

    def item_nbytes(self) -> int:
        """Bytes one item occupies across all columns."""
        return sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in self._columns.values())

    def to_json(self) -> str:
        """Canonical JSON (sorted columns) used on the wire, in checkpoints and in hashes."""
        return json.dumps(
            {n: {"shape": list(s), "dtype": d.name} for n, (s, d) in sorted(self._columns.items())},
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Parses `to_json` output (or a hand-written file of the same form)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a spec file must hold an object of column -> {shape, dtype}")
        columns = {}
        for name, entry in data.items():
            if not isinstance(entry, dict) or set(entry) != {"shape", "dtype"}:
                raise ValueError(f"column {name!r}: expected {{'shape': [...], 'dtype': '...'}}, got {entry!r}")
            columns[name] = (tuple(entry["shape"]), entry["dtype"])
        return cls(columns)

    def digest(self) -> str:
        """Short stable hash of the spec, for registries and logs."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def validate(self, batch: Mapping[str, np.ndarray]) -> int:
        """Checks a batch against the spec and returns its number of items.

        Raises:
            InvalidBatchError: naming the first offending column and what was expected.
        """
        missing = [n for n in self._columns if n not in batch]
        if missing:
            raise InvalidBatchError(f"column {missing[0]!r} is missing (spec: {self})")
        extra = [n for n in batch if n not in self._columns and n != PRIORITY_COLUMN]
        if extra:
            raise InvalidBatchError(
                f"column {extra[0]!r} is not in the spec (expected columns: {sorted(self._columns)})"
            )
        length = None
        for name, (shape, dtype) in self._columns.items():
            array = batch[name]
            if array.dtype != dtype:
                raise InvalidBatchError(f"column {name!r}: dtype {array.dtype.name}, expected {dtype.name}")
            if array.ndim == 0 or tuple(array.shape[1:]) != shape:
                raise InvalidBatchError(
                    f"column {name!r}: per-item shape {tuple(array.shape[1:]) if array.ndim else '(scalar)'}, "
                    f"expected {shape} after the batch dimension"
                )
            if length is None:
                length = array.shape[0]
            elif array.shape[0] != length:
                raise InvalidBatchError(f"column {name!r}: {array.shape[0]} items, but earlier columns have {length}")
        assert length is not None
        if PRIORITY_COLUMN in batch:
            validate_priorities(batch[PRIORITY_COLUMN], length, PRIORITY_COLUMN)
        return length


def validate_priorities(priorities: np.ndarray, length: int, what: str = "priorities") -> None:
    """Raises InvalidBatchError unless `priorities` is a [length] array of finite values >= 0."""
    if priorities.ndim != 1 or priorities.shape[0] != length:
        raise InvalidBatchError(f"column {what!r}: shape {priorities.shape}, expected ({length},)")
    if priorities.dtype.kind not in "fiu":
        raise InvalidBatchError(f"column {what!r}: dtype {priorities.dtype.name}, expected float64")
    if length and 0 <= priorities.min() and priorities.max() < np.inf:  # the common case in two reductions
        return  # (a NaN makes both comparisons false: it is found below)
    if not np.all(np.isfinite(priorities)):
        bad = int(np.flatnonzero(~np.isfinite(priorities))[0])
        raise InvalidBatchError(f"column {what!r}: item {bad} is {priorities[bad]}, expected a finite value >= 0")
    if np.any(priorities < 0):
        bad = int(np.flatnonzero(priorities < 0)[0])
        raise InvalidBatchError(f"column {what!r}: item {bad} is {priorities[bad]}, expected a finite value >= 0")
