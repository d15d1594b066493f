"""Q-learning targets and losses, each a small function of tensors.

Conventions: `reward` is the n-step discounted return the actor computed, and `discount` is
gamma**n, or 0 when the episode terminated inside the window (no bootstrapping through
termination; truncation still bootstraps). Every function works on a batch [B].
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def double_q_target(
    reward: torch.Tensor, discount: torch.Tensor, next_q_online: torch.Tensor, next_q_target: torch.Tensor
) -> torch.Tensor:
    """Double DQN (van Hasselt et al. 2016) n-step target: r + discount * Q_target(s', argmax_a Q_online(s', a)).

    Args:
        reward, discount: [B].
        next_q_online, next_q_target: [B, A] values at the bootstrap state.
    """
    best = next_q_online.argmax(dim=1, keepdim=True)
    return reward + discount * next_q_target.gather(1, best).squeeze(1)


def regression_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-item Huber (delta 1) or squared error."""
    if kind == "huber":
        return F.smooth_l1_loss(prediction, target, reduction="none", beta=1.0)
    return F.mse_loss(prediction, target, reduction="none")


def categorical_projection(
    next_probs: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """C51's projection (Bellemare et al. 2017) of r + discount * Z onto the fixed support.

    Each atom z_j of the next-state distribution moves to r + discount * z_j, is clamped into
    [v_min, v_max], and its probability is split between the two neighbouring atoms in proportion
    to its distance from them.

    Args:
        next_probs: [B, N] probabilities of the bootstrap action's distribution.
        reward, discount: [B].
        support: [N] evenly spaced atoms.

    Returns:
        [B, N] target probabilities (each row sums to 1).
    """
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (support.numel() - 1)
    moved = (reward[:, None] + discount[:, None] * support[None, :]).clamp(v_min, v_max)
    position = (moved - v_min) / delta
    lower, upper = position.floor().long(), position.ceil().long()
    # An atom landing exactly on a support point gives all its mass to that point.
    lower_weight = torch.where(upper == lower, torch.ones_like(position), upper.float() - position)
    upper_weight = position - lower.float()
    target = torch.zeros_like(next_probs)
    target.scatter_add_(1, lower, next_probs * lower_weight)
    target.scatter_add_(1, upper, next_probs * upper_weight)
    return target


def hl_gauss_target(values: torch.Tensor, edges: torch.Tensor, sigma: float) -> torch.Tensor:
    """HL-Gauss target distribution (Imani & White 2018; Farebrother et al. 2024, "Stop Regressing").

    A Gaussian N(value, sigma^2), with the value clamped into the support, integrated over each
    bin [edges[i], edges[i+1]] and renormalised over the support: a smoothed two-hot encoding.

    Args:
        values: [B] scalar targets.
        edges: [N + 1] bin edges, evenly spaced from v_min to v_max.
        sigma: the Gaussian's standard deviation (0.75 bin widths in "Stop Regressing").

    Returns:
        [B, N] probabilities (each row sums to 1).
    """
    clamped = values.clamp(edges[0], edges[-1])
    cdf = torch.special.ndtr((edges[None, :] - clamped[:, None]) / sigma)
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / (cdf[:, -1:] - cdf[:, :1])


def cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-item cross-entropy between a target distribution and softmax(logits)."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(-1)


def at_actions(out: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Row i's entry at action[i]: [B, A] -> [B], [B, A, K] -> [B, K] (a distribution's logits).

    A gather, not `out[torch.arange(B), action]`: the same values and gradients, but the indexing
    builds an index on the host (a copy to the device per call on CUDA) and its backward accumulates
    through index_put_, which took ~9% of a CartPole update's host time on an H200's host."""
    index = action.long().view(-1, 1, *([1] * (out.dim() - 2))).expand(-1, 1, *out.shape[2:])
    return out.gather(1, index).squeeze(1)


def expectation(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """E[value] under softmax(logits) over the last axis."""
    return (F.softmax(logits, dim=-1) * values).sum(-1)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|) (DreamerV3): compresses large magnitudes, ~x near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `symlog`: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


def clamped_share(values: torch.Tensor, v_min: float, v_max: float) -> torch.Tensor:
    """Share of `values` [B] outside [v_min, v_max] (targets a categorical loss must clamp), as a
    0-dim tensor on their device: reading it is left to the caller (a CUDA graph cannot read)."""
    if values.numel() == 0:
        return torch.zeros((), device=values.device)
    return ((values < v_min) | (values > v_max)).float().mean()


def clamped_fraction(values: torch.Tensor, v_min: float, v_max: float) -> float:
    """`clamped_share` read as a float."""
    return float(clamped_share(values, v_min, v_max))
