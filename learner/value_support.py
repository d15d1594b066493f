"""The value support of the distributional losses: where it comes from and how values map onto it.

Two ways to need no per-task support (issue #23):

- "auto": v_min/v_max derived from the env's reward range and the discount (`implied_returns`,
  `auto_support`; no time limit, which actors bootstrap past): every value a policy can have is in
  the support.
- "symlog": bins evenly spaced in symlog(value) (DreamerV3, Hafner et al. 2023) over a fixed wide
  range: small values keep fine bins, large ones still fit.

The transforms and `clamped_fraction` (the share of a batch's targets a support fails to hold) are
tensor functions in `learner.losses`; this module is plain arithmetic (no torch).
"""

from __future__ import annotations

CLAMPED_WARNING_FRACTION = 0.01
"""The learner warns (once in its log; in every progress line while it lasts) when more than this
share of a batch's targets was clamped onto the support."""

SUPPORT_MARGIN = 0.1
"""Room `auto_support` adds on each side, as a fraction of the implied range's width: targets of a
learning network overshoot the true returns for a while."""


def discounted_horizon(gamma: float, horizon: int | None) -> float:
    """sum_{t < horizon} gamma^t: the most a return can hold of a per-step reward (1 / (1 - gamma)
    without a time limit; the horizon itself at gamma 1)."""
    if gamma >= 1.0:
        if horizon is None:
            raise ValueError("gamma=1 without a time limit: the returns are unbounded")
        return float(horizon)
    if horizon is None:
        return 1.0 / (1.0 - gamma)
    return (1.0 - gamma**horizon) / (1.0 - gamma)


def implied_returns(reward_min: float, reward_max: float, gamma: float, horizon: int | None) -> tuple[float, float]:
    """The range of discounted returns (and so of Q values) when every step's reward is in
    [reward_min, reward_max]: a return sums at most `horizon` discounted rewards, and may end early
    (terminate) at any step, so 0 is always in the range.

    Args:
        reward_min, reward_max: the per-step reward range.
        gamma: the discount per step.
        horizon: the episode's time limit in steps; None: none.

    Returns:
        (lowest, highest) discounted return.
    """
    if reward_max < reward_min:
        raise ValueError(f"reward_max={reward_max} is below reward_min={reward_min}")
    steps = discounted_horizon(gamma, horizon)
    return min(0.0, reward_min) * steps, max(0.0, reward_max) * steps


def auto_support(
    reward_min: float, reward_max: float, gamma: float, horizon: int | None, margin: float = SUPPORT_MARGIN
) -> tuple[float, float]:
    """(v_min, v_max) holding `implied_returns` with `margin` of its width on each side; a reward
    range of zeros (a random policy saw no reward) is taken as [-1, 1] per step.

    `qfleet train` passes no horizon (actors bootstrap past time limits): CartPole (reward 1, gamma
    0.99) gets [-10, 110]; Acrobot and MountainCar (-1 per step) [-110, 10].
    """
    if reward_min == reward_max == 0.0:
        reward_min, reward_max = -1.0, 1.0
    low, high = implied_returns(reward_min, reward_max, gamma, horizon)
    room = margin * (high - low)
    return low - room, high + room


def contains(support: tuple[float, float], returns: tuple[float, float]) -> bool:
    """Whether the support [v_min, v_max] holds every return in [lowest, highest]."""
    return support[0] <= returns[0] and returns[1] <= support[1]
