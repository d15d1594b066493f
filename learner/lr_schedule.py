"""The learning rate over a run: constant, or a linear decay from `lr` to a floor.

A schedule is a pure function of the update count, so a resumed learner continues it from its
restored `updates`: the learner sets the rate from the config once at its start (after a resume)
and, for the linear decay, after every update (`set_learning_rate` on each agent), whatever rate the checkpoint's optimizer groups held. The
linear decay is the one DQN's exploration and many Atari agents use for epsilon, applied to Adam's
step size: lr(u) = lr * (1 - (1 - f) * min(u / H, 1)), with f = `lr_final_fraction` and H =
`lr_decay_updates` (the run's update budget; `qfleet train` derives it).
"""

from __future__ import annotations

import torch

from learner.config import OptimizerConfig

GRAPHED_STEPS = 100
"""A CUDA-graphed update bakes the learning rate into its capture (`learner.cuda_graph`), so a
change re-captures the graph: there the linear decay moves in this many equal steps (every 1% of
the horizon) rather than after every update."""


def scheduled_lr(config: OptimizerConfig, updates: int, steps: int | None = None) -> float:
    """The learning rate for the update after update number `updates`.

    Args:
        config: `lr`, `lr_schedule`, `lr_final_fraction` and `lr_decay_updates`.
        updates: updates made so far (0 before the first).
        steps: when set, the decay's progress is rounded down to multiples of 1 / `steps` (a
            piecewise-constant rate; see `GRAPHED_STEPS`).

    Raises:
        ValueError: a linear schedule without `lr_decay_updates` (no horizon to decay over).
    """
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_decay_updates is None:
        raise ValueError(
            "lr_schedule='linear' needs lr_decay_updates (the updates to decay over; `qfleet train` "
            "sets it from train.total_env_steps x updates_per_env_step)"
        )
    progress = min(max(updates, 0) / config.lr_decay_updates, 1.0)
    if steps is not None:
        progress = int(progress * steps) / steps
    return config.lr * (1.0 - (1.0 - config.lr_final_fraction) * progress)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every group of `optimizer` to `lr` (a tensor rate, as capturable groups may hold, in place)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
