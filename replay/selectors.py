"""Item selectors: which slots a sample draws, and with what probability.

`UniformSelector` draws occupied slots uniformly. `PrioritizedSelector` draws slot i with
probability p_i**alpha / sum_j p_j**alpha through a sum-tree (Schaul et al. 2016, "Prioritized
Experience Replay"), stratified within each batch as in that paper.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from replay.limits import MAX_PRIORITY
from replay.sum_tree import SumTree


class Selector(Protocol):
    """What a table needs from a selector. Slots are indices into the table's storage."""

    name: str

    def on_insert(self, slots: np.ndarray, priorities: np.ndarray | None) -> None:
        """Registers newly written slots, with initial priorities or None for the default."""

    def set_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        """Sets new priorities for occupied slots."""

    def sample(
        self, num_items: int, size: int, rng: np.random.Generator, stratum: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (slots, probabilities) of `num_items` draws from the first `size` slots."""

    def priority_mass(self, size: int) -> float:
        """Sum of selection weights over occupied slots."""

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint."""

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Loads arrays written by `state`."""


class UniformSelector:
    """Every occupied slot is equally likely."""

    name = "uniform"

    def on_insert(self, slots: np.ndarray, priorities: np.ndarray | None) -> None:
        pass

    def set_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        pass

    def sample(
        self, num_items: int, size: int, rng: np.random.Generator, stratum: int
    ) -> tuple[np.ndarray, np.ndarray]:
        slots = rng.integers(0, size, size=num_items, dtype=np.int64)
        return slots, np.full(num_items, 1.0 / size)

    def priority_mass(self, size: int) -> float:
        return float(size)

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        pass


class PrioritizedSelector:
    """Proportional prioritization: P(i) = p_i**alpha / sum_j p_j**alpha.

    New items without an explicit priority get the largest priority seen so far (1.0 before any),
    so every transition is replayed at least once with high probability. Priorities above
    `MAX_PRIORITY` (1e30) are stored as 1e30, so the sum-tree total stays finite.

    Args:
        capacity: number of slots.
        alpha: priority exponent; 0 is uniform, 1 is fully proportional.
    """

    name = "prioritized"

    def __init__(self, capacity: int, alpha: float = 0.6):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.max_priority = 1.0
        self._tree = SumTree(capacity)

    def on_insert(self, slots: np.ndarray, priorities: np.ndarray | None) -> None:
        if priorities is None:
            priorities = np.full(slots.shape, self.max_priority)
        self.set_priorities(slots, priorities)

    def set_priorities(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        priorities = np.minimum(np.asarray(priorities, dtype=np.float64), MAX_PRIORITY)
        if priorities.size:
            self.max_priority = max(self.max_priority, float(priorities.max()))
        self._tree.set(slots, priorities**self.alpha)

    def sample(
        self, num_items: int, size: int, rng: np.random.Generator, stratum: int
    ) -> tuple[np.ndarray, np.ndarray]:
        total = self._tree.total
        if total <= 0.0:
            raise ZeroDivisionError("every held item has priority 0; nothing can be sampled")
        # Stratified within each run of `stratum` items: one uniform draw per equal-mass segment.
        position = np.arange(num_items) % stratum
        segments = np.minimum(stratum, num_items - (np.arange(num_items) // stratum) * stratum)
        targets = (position + rng.random(num_items)) / segments * total
        np.minimum(targets, np.nextafter(total, 0.0), out=targets)
        slots = self._tree.find(targets)
        return slots, self._tree.get(slots) / total

    def priority_mass(self, size: int) -> float:
        return self._tree.total

    def priorities(self, slots: np.ndarray) -> np.ndarray:
        """Raw priorities (before the alpha exponent) of `slots`."""
        weights = self._tree.get(slots)
        return weights ** (1.0 / self.alpha) if self.alpha > 0 else np.ones_like(weights)

    def state(self) -> dict[str, np.ndarray]:
        return {"selector/weights": self._tree.leaves(), "selector/max_priority": np.array([self.max_priority])}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self._tree.set_all(state["selector/weights"])
        self.max_priority = float(state["selector/max_priority"][0])


def uses_priorities(name: str) -> bool:
    """Whether the selector called `name` draws by priority: a uniform selector discards every
    priority it is given, so a learner need not send any to its table."""
    return name != UniformSelector.name


def make_selector(name: str, capacity: int, alpha: float) -> Selector:
    """Builds the selector called `name` ("uniform" or "prioritized")."""
    if name == "uniform":
        return UniformSelector()
    if name == "prioritized":
        return PrioritizedSelector(capacity, alpha)
    raise ValueError(f"unknown selector {name!r}: expected 'uniform' or 'prioritized'")
