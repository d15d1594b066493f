"""The value support of a run, from its env: `learner.v_min/v_max: auto` made numbers, and a warning
when numbers set by hand cannot hold the returns the env implies.

The env's per-step reward range is measured with a few random-policy episodes (gymnasium's
`reward_range` is gone from 1.0 and was (-inf, inf) for most envs anyway); with the discount and the
time limit it bounds every discounted return (`learner.implied_returns`). Random play can miss
rewards a good policy finds, so the learner also measures the targets it clamps while it trains.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from actors import EnvConfig
from learner import auto_support, contains, implied_returns
from system.config.run import RunConfig
from system.errors import ConfigError

log = logging.getLogger(__name__)

SUPPORTED_LOSSES = ("c51", "hl_gauss")
"""The losses with a value support."""

PROBE_STEPS = 2000
"""Random-policy env steps measured (whole episodes where they fit: CartPole ~90, Acrobot 4)."""

PROBE_SECONDS = 20.0
"""The probe stops after this long whatever it measured (slow envs)."""

PROBE_SEED = 0
"""Fixed: every process that resolves a config gets the same support."""


@dataclass(frozen=True)
class RewardProbe:
    """What random play showed of an env's rewards."""

    reward_min: float
    reward_max: float
    steps: int
    episodes: int
    """Episodes finished (terminated or truncated) within `steps`."""
    horizon: int | None
    """The env's time limit in steps (None: none)."""


def probe_rewards(env: EnvConfig, steps: int = PROBE_STEPS, seconds: float = PROBE_SECONDS) -> RewardProbe:
    """Plays uniformly random actions for up to `steps` steps (or `seconds`) and records the
    per-step reward range and the time limit."""
    from actors import make_env  # gymnasium: loaded only by the commands that build an env

    game = make_env(env)
    try:
        game.action_space.seed(PROBE_SEED)
        game.reset(seed=PROBE_SEED)
        rewards: list[float] = []
        episodes = 0
        deadline = time.monotonic() + seconds
        while len(rewards) < steps and time.monotonic() < deadline:
            _, reward, terminated, truncated, _ = game.step(game.action_space.sample())
            rewards.append(float(reward))
            if terminated or truncated:
                episodes += 1
                game.reset()
        horizon = env.max_episode_steps or (game.spec.max_episode_steps if game.spec is not None else None)
    finally:
        game.close()
    values = np.asarray(rewards or [0.0])
    return RewardProbe(float(values.min()), float(values.max()), len(rewards), episodes, horizon)


def can_probe(env: EnvConfig) -> bool:
    """Whether random play in the driver is harmless: not a device or a browser."""
    return env.android is None and env.browser is None and not env.id.startswith(("qfleet/", "miniwob/"))


def resolve_value_support(config: RunConfig) -> RunConfig:
    """`config` with `learner.v_min/v_max: auto` set from the env; a hand-set support that cannot hold
    the returns the env implies is kept, with a warning. Losses without a support pass unchanged.

    Raises:
        ConfigError: "auto" for an env that is not probed (a device or browser env): set numbers.
    """
    learner = config.learner
    support = learner.distributional
    if learner.loss not in SUPPORTED_LOSSES:
        return config
    if not can_probe(config.env):
        if not support.resolved:
            raise ConfigError(
                f"learner.v_min/v_max=auto: {config.env.id} is not played at random to measure its rewards; "
                "set learner.v_min and learner.v_max"
            )
        return config
    probe = probe_rewards(config.env)
    returns = implied_returns(probe.reward_min, probe.reward_max, learner.gamma, probe.horizon)
    derived = auto_support(probe.reward_min, probe.reward_max, learner.gamma, probe.horizon)
    seen = (
        f"rewards in [{probe.reward_min:g}, {probe.reward_max:g}] over {probe.steps:,} random steps "
        f"({probe.episodes} episodes), time limit {probe.horizon or 'none'}, gamma {learner.gamma:g}"
    )
    if support.resolved:
        configured = support.bounds()
        if not contains(configured, returns):
            log.warning(
                "learner.v_min/v_max=[%g, %g] cannot hold the returns %s implies, [%.1f, %.1f] (%s): targets "
                "outside it are clamped and learned wrong; set learner.v_min/v_max to auto, or to a range that holds them",
                *configured,
                config.env.id,
                *returns,
                seen,
            )
        return config
    v_min = derived[0] if support.v_min == "auto" else support.v_min
    v_max = derived[1] if support.v_max == "auto" else support.v_max
    try:
        resolved = dataclasses.replace(support, v_min=round(v_min, 3), v_max=round(v_max, 3))
    except ValueError as exc:
        raise ConfigError(f"learner.v_min/v_max (auto from {seen}): {exc}") from None
    log.info("value support [%g, %g] (auto: %s)", resolved.v_min, resolved.v_max, seen)
    return dataclasses.replace(config, learner=dataclasses.replace(learner, distributional=resolved))
