"""`Agent`: the seam between the training loop and what it trains (DiscreteQAgent, SACAgent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class UpdateResult:
    """Statistics of one update."""

    loss: float
    """The (importance-weighted) loss that was minimised; the critics' loss for SAC."""
    q_mean: float
    """Mean Q of the taken actions in the batch."""
    grad_norm: float
    """Global gradient norm before clipping (the Q network's, or the critics')."""
    td_abs: np.ndarray
    """|TD error| per item (expected values for distributional losses), for new priorities."""


@runtime_checkable
class Agent(Protocol):
    """Networks + optimizers + one `update(batch)`. Knows nothing of replay, Redis or processes.

    The loop calls `update` (one gradient step; `td_abs` becomes new priorities), then
    `after_update` (target network, periodic reset), and publishes `policy_state()`.
    """

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        """One gradient step on the importance-`weights`ed loss of `batch` (column -> [B, ...])."""
        ...

    def after_update(self, updates: int) -> bool:
        """Target-network and periodic-reset bookkeeping after update number `updates`; True if
        it reset."""
        ...

    def reset(self, which: Literal["head", "all"]) -> None:
        """Re-initialises the head(s) (or every layer) with their optimizer state."""
        ...

    def policy_state(self) -> dict[str, torch.Tensor]:
        """The weights actors act with (on CPU): loadable by `learner.Policy`."""
        ...

    def state_dict(self) -> dict:
        """Everything a checkpoint needs: networks, target networks, optimizer state."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restores a `state_dict`."""
        ...
