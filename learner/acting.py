"""How actors act with what a discrete agent publishes: the acting head of each discrete loss.

A published network's outputs are [B, A * bins]-shaped per action; the `ActingHead` of the
configured loss says how many outputs each action has (`bins`) and turns them into the [B, A]
scores greedy acting maximises; `sample_actions` draws from an offline policy's logits instead
(`learner.policy_acting: sample`). `learner.Policy` (imported by every actor) needs only this, so
it lives apart from the agents and their optimizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from learner.config import LearnerConfig
from learner.q_losses import make_q_loss


class ActingHead(Protocol):
    """What acting needs of a discrete loss: outputs per action and the scores they mean."""

    bins: int
    """Outputs per action of the published network: 1, or a distribution's bins."""

    def values(self, out: torch.Tensor) -> torch.Tensor:
        """[B, A] scores greedy acting maximises, from the network's outputs [B, A(, bins)]."""
        ...


class PolicyLogits:
    """The acting head of the offline policy losses ("iql", "filtered_bc"): the published network
    is pi, its outputs are logits, and greedy acting takes their argmax (pi's most likely action)."""

    bins = 1

    def values(self, out: torch.Tensor) -> torch.Tensor:
        """The logits themselves."""
        return out


def sample_actions(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[B] one action per row drawn from softmax(`logits`) [B, A] (`learner.policy_acting: sample`):
    the Gumbel-max trick, argmax of logits + Gumbel noise. The factored policy's outputs are
    log-probabilities, whose softmax is that distribution itself."""
    return (logits + rng.gumbel(size=logits.shape).astype(logits.dtype)).argmax(axis=1)


def _expected_q(config: LearnerConfig) -> ActingHead:
    return make_q_loss(config, torch.device("cpu"))


def _policy_logits(config: LearnerConfig) -> ActingHead:
    return PolicyLogits()


ACTING_HEADS: dict[str, Callable[[LearnerConfig], ActingHead]] = {
    "dqn": _expected_q,
    "c51": _expected_q,
    "hl_gauss": _expected_q,
    "iql": _policy_logits,
    "filtered_bc": _policy_logits,
}
"""Discrete `learner.loss` -> its acting head: expected Q values for the Q losses (C51 and HL-Gauss
take the expectation over their support), pi's logits for the offline policy losses. Every
discrete loss of `learner.agents.AGENTS` is here (tested)."""


def acting_head(config: LearnerConfig) -> ActingHead:
    """The acting head of the configured (discrete) loss.

    Raises:
        ValueError: the configured loss is for continuous actions, naming `learner.loss`.
    """
    if config.loss not in ACTING_HEADS:
        raise ValueError(f"learner.loss={config.loss!r} needs a continuous (Box) action space")
    return ACTING_HEADS[config.loss](config)
