"""The value support of a run, from its env: `learner.v_min/v_max: auto` made numbers, and a warning
when numbers set by hand cannot hold the returns random play showed.

The env's per-step reward range is measured with a fixed number of random-policy steps (gymnasium's
`reward_range` is gone from 1.0 and was (-inf, inf) for most envs anyway). Actors bootstrap past a
time-limit truncation (`actors.nstep`), so the values learned are those of the env without its time
limit: the support bounds every infinite-horizon discounted return, reward / (1 - gamma)
(`learner.implied_returns` with no horizon); the time limit is only reported. Random play can miss
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
"""Random-policy env steps measured (whole episodes where they fit: CartPole ~90, Acrobot 4). Always
this many: the support must not depend on how fast the machine was."""

PROBE_SECONDS = 60.0
"""A probe that has not played PROBE_STEPS steps by then is refused (set numbers): cutting it short
would make the support depend on the machine's load."""

PROBE_SEED = 0
"""Fixed: every process that resolves a config gets the same support."""

PLACEHOLDER_SUPPORT = (-1.0, 1.0)
"""Bounds given to an acting-only network (actors, `qfleet record`) when they are still "auto": the
greedy action of an expected value over any support is the same (a positive affine change of the
atoms, or a monotone symexp of one), and actors compute no priorities, so no probe is needed."""


@dataclass(frozen=True)
class RewardProbe:
    """What random play showed of an env's rewards."""

    reward_min: float
    reward_max: float
    steps: int
    episodes: int
    """Episodes finished (terminated or truncated) within `steps`."""
    horizon: int | None
    """The env's time limit in steps (None: none); reported only."""
    returns: tuple[float, float] | None = None
    """(lowest, highest) discounted return of the finished episodes from their first step (None: no
    episode finished, or no discount given)."""


def probe_rewards(
    env: EnvConfig, steps: int = PROBE_STEPS, seconds: float = PROBE_SECONDS, gamma: float | None = None
) -> RewardProbe:
    """Plays exactly `steps` uniformly random actions and records the per-step reward range, the time
    limit and (with `gamma`) the discounted returns of the episodes that finished.

    Raises:
        ConfigError: the env did not play `steps` steps within `seconds`.
    """
    from actors import make_env  # gymnasium: loaded only by the commands that build an env

    game = make_env(env)
    try:
        game.action_space.seed(PROBE_SEED)
        game.reset(seed=PROBE_SEED)
        rewards: list[float] = []
        episode_returns: list[float] = []
        episode_return, discount = 0.0, 1.0
        deadline = time.monotonic() + seconds
        while len(rewards) < steps:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"learner.v_min/v_max=auto: {env.id} played only {len(rewards):,} of {steps:,} random steps in "
                    f"{seconds:g} s, too slow to measure its rewards; set learner.v_min and learner.v_max"
                )
            _, reward, terminated, truncated, _ = game.step(game.action_space.sample())
            rewards.append(float(reward))
            if gamma is not None:
                episode_return += discount * float(reward)
                discount *= gamma
            if terminated or truncated:
                episode_returns.append(episode_return)
                episode_return, discount = 0.0, 1.0
                game.reset()
        horizon = env.max_episode_steps or (game.spec.max_episode_steps if game.spec is not None else None)
    finally:
        game.close()
    values = np.asarray(rewards or [0.0])
    returns = (min(episode_returns), max(episode_returns)) if gamma is not None and episode_returns else None
    return RewardProbe(float(values.min()), float(values.max()), len(rewards), len(episode_returns), horizon, returns)


def can_probe(env: EnvConfig) -> bool:
    """Whether random play in the driver is harmless: not a device or a browser."""
    return env.android is None and env.browser is None and not env.id.startswith(("qfleet/", "miniwob/"))


def check_value_support(config: RunConfig) -> None:
    """Refuses value-support settings that no learner can build (before anything is probed).

    Raises:
        ConfigError: `value_transform: symlog` with c51 (its projection needs evenly spaced atoms);
            a value_transform on a loss without a support; gamma 1 with an "auto" bound.
    """
    learner = config.learner
    support = learner.distributional
    if support.value_transform != "none" and learner.loss == "c51":
        raise ConfigError(
            f"learner.value_transform={support.value_transform!r}: c51 projects onto evenly spaced atoms and "
            "takes 'none'; use learner.loss=hl_gauss for symlog bins"
        )
    if support.value_transform != "none" and learner.loss not in SUPPORTED_LOSSES:
        raise ConfigError(
            f"learner.value_transform={support.value_transform!r}: learner.loss={learner.loss!r} has no value "
            f"support to transform (only {', '.join(SUPPORTED_LOSSES)}); leave it 'none'"
        )
    if learner.loss in SUPPORTED_LOSSES and not support.resolved and learner.gamma >= 1.0:
        raise ConfigError(
            f"learner.v_min/v_max=auto with learner.gamma={learner.gamma:g}: actors bootstrap past time limits, "
            "so undiscounted returns are unbounded; set learner.gamma below 1 or set learner.v_min and learner.v_max"
        )


def with_placeholder_support(config: RunConfig) -> RunConfig:
    """`config` with "auto" bounds replaced by PLACEHOLDER_SUPPORT, for processes that only act
    (actors, `qfleet record`): never for a learner, and never written to a run."""
    support = config.learner.distributional
    if support.resolved:
        return config
    v_min = PLACEHOLDER_SUPPORT[0] if support.v_min == "auto" else float(support.v_min)
    v_max = PLACEHOLDER_SUPPORT[1] if support.v_max == "auto" else float(support.v_max)
    if not v_max > v_min:  # one bound set by hand beyond the placeholder's other end
        v_min, v_max = (v_max - 2.0, v_max) if support.v_min == "auto" else (v_min, v_min + 2.0)
    placeholder = dataclasses.replace(support, v_min=v_min, v_max=v_max)
    return dataclasses.replace(config, learner=dataclasses.replace(config.learner, distributional=placeholder))


def resolve_value_support(config: RunConfig) -> RunConfig:
    """`config` with `learner.v_min/v_max: auto` set from the env; a hand-set support is kept, with a
    warning when it cannot hold the discounted returns random play showed (an info line when it only
    misses the worst case the reward range implies). Losses without a support pass unchanged.

    Raises:
        ConfigError: "auto" for an env that is not probed (a device or browser env), with gamma 1, or
            for an env too slow to probe: set numbers.
    """
    check_value_support(config)
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
    probe = probe_rewards(config.env, gamma=learner.gamma)
    seen = (
        f"rewards in [{probe.reward_min:g}, {probe.reward_max:g}] over {probe.steps:,} random steps "
        f"({probe.episodes} episodes), time limit {probe.horizon or 'none'} (bootstrapped past), "
        f"gamma {learner.gamma:g}"
    )
    if support.resolved:
        _check_hand_set(config, probe, seen)
        return config
    derived = auto_support(probe.reward_min, probe.reward_max, learner.gamma, None)
    v_min = derived[0] if support.v_min == "auto" else support.v_min
    v_max = derived[1] if support.v_max == "auto" else support.v_max
    try:
        resolved = dataclasses.replace(support, v_min=round(v_min, 3), v_max=round(v_max, 3), derived=True)
    except ValueError as exc:
        raise ConfigError(f"learner.v_min/v_max (auto from {seen}): {exc}") from None
    log.info(
        "value support [%g, %g], %d bins of width %.3g%s (auto: %s)",
        resolved.v_min,
        resolved.v_max,
        resolved.num_bins,
        (resolved.v_max - resolved.v_min) / (resolved.num_bins - (1 if learner.loss == "c51" else 0)),
        " in symlog(value)" if resolved.value_transform == "symlog" else "",
        seen,
    )
    return dataclasses.replace(config, learner=dataclasses.replace(learner, distributional=resolved))


def _check_hand_set(config: RunConfig, probe: RewardProbe, seen: str) -> None:
    """Warns when a hand-set support cannot hold the returns random play showed; says (info) when it
    only cannot hold the worst case the reward range implies."""
    configured = config.learner.distributional.bounds()
    if probe.returns is not None and not contains(configured, probe.returns):
        log.warning(
            "learner.v_min/v_max=[%g, %g] cannot hold the discounted returns random play reached on %s, "
            "[%.1f, %.1f] (%s): targets outside it are clamped and learned wrong; set a range that holds them, "
            "or learner.v_min/v_max to auto",
            *configured,
            config.env.id,
            *probe.returns,
            seen,
        )
        return
    worst = implied_returns(probe.reward_min, probe.reward_max, config.learner.gamma, None)
    if not contains(configured, worst):
        log.info(
            "learner.v_min/v_max=[%g, %g] holds the returns random play reached on %s but not every return its "
            "rewards allow, [%.1f, %.1f] (%s)",
            *configured,
            config.env.id,
            *worst,
            seen,
        )
