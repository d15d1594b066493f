"""`learner.lr_decay_updates` derived from the run: a linear learning-rate schedule decays over the
run's update budget, which only the whole run config knows (the learner sees its own section)."""

from __future__ import annotations

import dataclasses
import logging

from system.config.run import RunConfig
from system.errors import ConfigError

log = logging.getLogger(__name__)


def update_budget(config: RunConfig) -> int:
    """The updates a run plans to make: train.total_env_steps x learner.updates_per_env_step (the
    UTD the replay holds), plus the offline phase's `offline.updates` when it has a dataset; at
    least 1.

    A plan, not a count: the run ends at total_env_steps, and a learner that trails the inserts
    has made somewhat fewer updates by then, so such a run ends with its learning rate slightly
    above the schedule's floor."""
    online = round(config.train.total_env_steps * config.learner.updates_per_env_step)
    offline = config.offline.updates if config.offline.dataset is not None else 0
    return max(1, online + offline)


def require_lr_horizon(config: RunConfig) -> None:
    """Refuses a "linear" schedule with a null `learner.lr_decay_updates` where no run budget
    derives one (`qfleet learner run`: a learner on its own runs until stopped, so it has no update
    budget to decay over).

    Raises:
        ConfigError: naming `learner.lr_decay_updates`.
    """
    optimizer = config.learner.optimizer
    if optimizer.lr_schedule == "linear" and optimizer.lr_decay_updates is None:
        raise ConfigError(
            "learner.lr_decay_updates=None: learner.lr_schedule='linear' needs the updates to decay over "
            "(--lr-decay-updates N or --set learner.lr_decay_updates=N); only `qfleet train` derives it"
        )


def resolve_lr_horizon(config: RunConfig) -> RunConfig:
    """`config` with `learner.lr_decay_updates` set to `update_budget` where a "linear" schedule
    leaves it null; any other config unchanged (a set horizon is kept)."""
    optimizer = config.learner.optimizer
    if optimizer.lr_schedule == "constant" or optimizer.lr_decay_updates is not None:
        return config
    budget = update_budget(config)
    log.info(
        "learning rate %g decays linearly to %g over %d updates (the run's update budget)",
        optimizer.lr,
        optimizer.lr * optimizer.lr_final_fraction,
        budget,
    )
    learner = dataclasses.replace(config.learner, optimizer=dataclasses.replace(optimizer, lr_decay_updates=budget))
    return dataclasses.replace(config, learner=learner)
