"""A vectorised sum-tree over float64 leaves.

Leaves live at indices [base, 2*base) of one flat array (base = capacity rounded up to a power of
two); node i holds tree[2i] + tree[2i+1]. Updates and searches touch a whole batch of leaves per
numpy call, one call per tree level, so a batch of 256 costs ~log2(capacity) numpy passes rather
than 256 Python loops. Parents are recomputed from their children (never updated by deltas), so
no floating-point drift accumulates. A batch that touches a large share of the leaves (a
coalesced priority update) refreshes every level whole instead: contiguous slices beat gathering
the batch's ancestors level by level once the batch is over 1/64 of the leaves.
"""

from __future__ import annotations

import numpy as np

DENSE_SHARE = 64
"""A batch of at least 1/DENSE_SHARE of the leaves refreshes every level whole (see above)."""


class SumTree:
    """Sum-tree over `capacity` non-negative leaves, all zero at start."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._base = 1 << max(0, (capacity - 1).bit_length())
        self._depth = self._base.bit_length() - 1
        self._tree = np.zeros(2 * self._base, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self._tree[1])

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values at `indices`."""
        return self._tree[self._base + np.asarray(indices, dtype=np.int64)]

    def leaves(self) -> np.ndarray:
        """A copy of the first `capacity` leaves."""
        return self._tree[self._base : self._base + self.capacity].copy()

    def set(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Sets leaves (last write wins for repeated indices) and refreshes their ancestors."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return
        values = np.asarray(values, dtype=np.float64)
        if np.any(values < 0) or not np.all(np.isfinite(values)):
            raise ValueError("sum-tree leaves must be finite and >= 0")
        nodes = indices + self._base
        self._tree[nodes] = values
        if indices.size * DENSE_SHARE >= self._base:
            self._refresh_parents()
            return
        # Sorted, then deduplicated by neighbours at every level: np.unique hashes (numpy >= 2.3),
        # which cost ~1 us per key here, ten times a sort.
        nodes = _adjacent_unique(np.sort(nodes >> 1))
        tree = self._tree
        while nodes.size:
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]
            if nodes[0] == 1:
                break
            nodes = _adjacent_unique(nodes >> 1)  # still sorted, so duplicates are adjacent

    def set_all(self, values: np.ndarray) -> None:
        """Replaces every leaf at once (restores) and rebuilds the tree bottom-up."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.capacity,):
            raise ValueError(f"expected {self.capacity} leaves, got shape {values.shape}")
        self._tree[:] = 0.0
        self._tree[self._base : self._base + self.capacity] = values
        self._refresh_parents()

    def _refresh_parents(self) -> None:
        """Recomputes every node above the leaves from its children, level by level."""
        tree, level = self._tree, self._base
        while level > 1:
            half = level // 2
            np.add(tree[level : 2 * level : 2], tree[level + 1 : 2 * level : 2], out=tree[half:level])
            level = half

    def find(self, targets: np.ndarray) -> np.ndarray:
        """Leaf index for each prefix-sum target in [0, total).

        Leaf i is returned for targets in [sum(leaves[:i]), sum(leaves[:i+1])), so each leaf is
        found with probability proportional to its value. Zero leaves are never returned while the
        total is positive, even when rounding puts a target on a boundary.
        """
        targets = np.array(targets, dtype=np.float64, copy=True)
        tree = self._tree
        nodes = np.ones(targets.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * nodes
            left_sum = tree[left]
            go_right = ((targets >= left_sum) & (tree[left + 1] > 0)) | (left_sum <= 0)
            targets -= np.where(go_right, left_sum, 0.0)
            nodes = left + go_right
        return nodes - self._base


def _adjacent_unique(sorted_nodes: np.ndarray) -> np.ndarray:
    """`sorted_nodes` without repeats (they are adjacent in a sorted array)."""
    keep = np.empty(sorted_nodes.size, dtype=bool)
    keep[0] = True
    np.not_equal(sorted_nodes[1:], sorted_nodes[:-1], out=keep[1:])
    return sorted_nodes[keep]
