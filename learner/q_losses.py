"""The discrete-action losses as small classes, chosen by `learner.loss` in one table (`Q_LOSSES`).

Each says how many outputs per action the Q head has (`bins`), how those outputs become values,
how the bootstrap target is formed and the per-item loss. The maths is in `learner.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from learner import losses
from learner.config import LearnerConfig


@dataclass(frozen=True)
class QTarget:
    """The bootstrap target of a batch."""

    value: torch.Tensor
    """[B] expected target value (what |TD error| is measured against)."""
    probs: torch.Tensor | None = None
    """[B, bins] target distribution of distributional losses; None for "dqn"."""
    clamped_fraction: torch.Tensor | None = None
    """Share of the batch whose target fell outside the value support and was clamped onto it
    (distributional losses), a 0-dim tensor not yet read by the host; None for "dqn", which has no
    support."""


class QLoss(Protocol):
    """What a discrete agent (and a Policy) needs of its loss."""

    bins: int
    """Outputs per action of the Q head: 1 (values) or the distribution's bins."""

    def values(self, out: torch.Tensor) -> torch.Tensor:
        """Expected values [..., A] of the head's outputs [..., A(, bins)]."""
        ...

    def target(
        self, next_online: torch.Tensor, next_bootstrap: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor
    ) -> QTarget:
        """The n-step target from the online and bootstrap networks' outputs at the next state."""
        ...

    def per_item(self, taken: torch.Tensor, target: QTarget) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss [B], Q [B]) of the online outputs of the taken actions."""
        ...


def _bootstrap_values(loss: QLoss, next_online: torch.Tensor, next_bootstrap: torch.Tensor):
    online_values = loss.values(next_online)
    if next_bootstrap is next_online:  # no target network: bootstrap from the online values
        return online_values, online_values
    return online_values, loss.values(next_bootstrap)


class DoubleDQNLoss:
    """The "dqn" loss: double DQN (van Hasselt et al. 2016) regression on n-step targets."""

    bins = 1

    def __init__(self, config: LearnerConfig, device: torch.device):
        self.td_loss = config.dqn.td_loss

    def values(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def target(self, next_online, next_bootstrap, reward, discount) -> QTarget:
        return QTarget(losses.double_q_target(reward, discount, next_online, next_bootstrap))

    def per_item(self, taken, target):
        return losses.regression_loss(taken, target.value, self.td_loss), taken


class C51Loss:
    """The "c51" loss: a categorical distribution (Bellemare et al. 2017) on a fixed support."""

    def __init__(self, config: LearnerConfig, device: torch.device):
        support = config.distributional
        if support.value_transform != "none":
            raise ValueError(f"learner.value_transform={support.value_transform!r}: c51 takes 'none' (use hl_gauss)")
        self.v_min, self.v_max = support.bounds()
        self.bins = support.num_bins
        self.support = torch.linspace(self.v_min, self.v_max, support.num_bins, device=device)
        """The atoms' values."""

    def values(self, out: torch.Tensor) -> torch.Tensor:
        return losses.expectation(out, self.support)

    def target(self, next_online, next_bootstrap, reward, discount) -> QTarget:
        best = self.values(next_online).argmax(dim=1)
        next_logits = losses.at_actions(next_bootstrap, best)
        next_probs = next_logits.softmax(-1)
        unclamped = reward + discount * (next_probs * self.support).sum(-1)
        probs = losses.categorical_projection(next_probs, reward, discount, self.support)
        clamped = losses.clamped_share(unclamped, self.v_min, self.v_max)
        return QTarget((probs * self.support).sum(-1), probs, clamped)

    def per_item(self, taken, target):
        return losses.cross_entropy(taken, target.probs), self.values(taken)


class HLGaussLoss:
    """The "hl_gauss" loss: classification onto a Gaussian-smoothed histogram of the double DQN
    target (Farebrother et al. 2024); with `value_transform: symlog` the histogram's bins are evenly
    spaced in symlog(value) (DreamerV3's transform) and values are read back with symexp."""

    def __init__(self, config: LearnerConfig, device: torch.device):
        support = config.distributional
        self.v_min, self.v_max = support.bounds()
        self.symlog = support.value_transform == "symlog"
        self.bins = support.num_bins
        low, high = torch.tensor([self.v_min, self.v_max], dtype=torch.float32)
        if self.symlog:
            low, high = losses.symlog(low), losses.symlog(high)
        self.edges = torch.linspace(float(low), float(high), support.num_bins + 1, device=device)
        """Bin edges, in symlog(value) when `symlog`."""
        self.support = (self.edges[:-1] + self.edges[1:]) / 2
        """The bins' centres (in symlog(value) when `symlog`)."""
        self.sigma = support.sigma_ratio * float(self.edges[1] - self.edges[0])

    def values(self, out: torch.Tensor) -> torch.Tensor:
        expected = losses.expectation(out, self.support)
        return losses.symexp(expected) if self.symlog else expected

    def target(self, next_online, next_bootstrap, reward, discount) -> QTarget:
        online_values, bootstrap_values = _bootstrap_values(self, next_online, next_bootstrap)
        value = losses.double_q_target(reward, discount, online_values, bootstrap_values)
        encoded = losses.symlog(value) if self.symlog else value
        clamped = losses.clamped_share(value, self.v_min, self.v_max)
        return QTarget(value, losses.hl_gauss_target(encoded, self.edges, self.sigma), clamped)

    def per_item(self, taken, target):
        return losses.cross_entropy(taken, target.probs), self.values(taken)


Q_LOSSES: dict[str, type[QLoss]] = {"dqn": DoubleDQNLoss, "c51": C51Loss, "hl_gauss": HLGaussLoss}
"""`learner.loss` -> its class, for discrete actions ("sac" is an agent of its own)."""


def make_q_loss(config: LearnerConfig, device: torch.device) -> QLoss:
    """The configured discrete loss; ValueError naming `learner.loss` when it is not one."""
    if config.loss not in Q_LOSSES:
        raise ValueError(f"learner.loss={config.loss!r} needs a continuous (Box) action space")
    return Q_LOSSES[config.loss](config, device)
