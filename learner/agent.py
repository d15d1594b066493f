"""`Agent`: the seam between the training loop and what it trains (`learner.agents`:
DiscreteQAgent, SACAgent; `learner.offline_agents`: IQLAgent, FilteredBCAgent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class UpdateResult:
    """Statistics of one update."""

    loss: float
    """The (importance-weighted) loss that was minimised: the Q loss of the discrete Q losses, the
    critics' loss for "sac" and "iql" (Q + V), pi's cloning loss for "filtered_bc"."""
    q_mean: float
    """Mean Q of the batch's taken (data) actions; 0 for "filtered_bc", which has no Q."""
    grad_norm: float
    """Global gradient norm before clipping of the network `loss` trained (the Q network, the
    critics, or pi for "filtered_bc")."""
    td_abs: np.ndarray | None
    """[B] |TD error| per item (expected values for distributional losses; of the critics' mean for
    "sac" and "iql"), sent back as new priorities; None when the loss has no TD error
    ("filtered_bc"): then no priorities are sent and items keep the priority they were inserted with."""
    policy_loss: float | None = None
    """The (importance-weighted) loss of the policy pi: "iql" and "filtered_bc"; None for the Q losses
    and "sac"."""
    imitation_weight: float | None = None
    """Mean per-item weight of pi's imitation loss (before importance weights): the share of the
    batch imitated for Best-of-N and kept for "filtered_bc" (in [0, 1]); the mean of AWR's clipped
    exp(beta * A) (1 when advantages are near 0, `awr_max_weight` when every weight is clipped);
    None for the losses without a policy to imitate."""
    clamped_fraction: float | None = None
    """Share of the batch whose target fell outside the value support ("c51", "hl_gauss"): those
    targets were clamped, so the loss learned a wrong value for them; None for the losses without a
    support."""


@runtime_checkable
class Agent(Protocol):
    """Networks + optimizers + one `update(batch)`. Knows nothing of replay, Redis or processes.

    The loop calls `update` (one gradient step; `td_abs` becomes new priorities), then
    `after_update` (target network, policy average, periodic reset) and `set_learning_rate`, and
    publishes `policy_state()`.
    """

    discrete: ClassVar[bool]
    """Whether it trains on discrete actions (`make_agent` refuses an action space that does not fit)."""

    def update(self, batch: dict[str, torch.Tensor], weights: torch.Tensor) -> UpdateResult:
        """One gradient step on the importance-`weights`ed loss of `batch` (column -> [B, ...])."""
        ...

    def after_update(self, updates: int) -> bool:
        """Target-network, policy-average and periodic-reset bookkeeping after update number
        `updates`; True if it reset."""
        ...

    def set_learning_rate(self, updates: int) -> float:
        """Sets every optimizer's rate for the update after update number `updates` from the config
        (`learner.lr_schedule`) and returns it; the loop calls it once at its start (after a
        resume) and, for a schedule that moves, after each update, so the configured `lr` and schedule rule over a checkpoint's optimizer state."""
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
