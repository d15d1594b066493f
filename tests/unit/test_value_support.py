"""The value support's arithmetic (`learner.value_support`) and its resolution from a real env
(`system.config.resolve_value_support`), against hand-computed returns."""

import logging
import math

import pytest
import torch

from learner import LearnerConfig, auto_support, contains, discounted_horizon, implied_returns, make_q_loss
from system.config import ConfigError, load_config, probe_rewards, resolve_value_support


def ours(caplog) -> list:
    """The records of the value-support module only: a background thread of an earlier test (a
    shard watcher whose Redis is gone, say) may log meanwhile."""
    return [record for record in caplog.records if record.name.startswith("system.config")]


def test_discounted_horizon_sums_the_discounts_of_the_time_limit():
    assert discounted_horizon(0.99, None) == pytest.approx(100.0)
    assert discounted_horizon(0.99, 500) == pytest.approx((1 - 0.99**500) / 0.01)
    assert discounted_horizon(0.5, 3) == pytest.approx(1 + 0.5 + 0.25)
    assert discounted_horizon(1.0, 200) == 200.0
    with pytest.raises(ValueError, match="unbounded"):
        discounted_horizon(1.0, None)


@pytest.mark.parametrize(
    ("rewards", "gamma", "horizon", "returns"),
    [
        ((1.0, 1.0), 0.99, 500, (0.0, 99.34)),  # CartPole: 1 per step, ends at any step
        ((-1.0, 0.0), 0.99, 500, (-99.34, 0.0)),  # Acrobot: -1 per step until the goal (0)
        ((-1.0, -1.0), 0.99, 200, (-86.60, 0.0)),  # MountainCar's 200-step limit
        ((-1.0, 1.0), 0.9, None, (-10.0, 10.0)),  # no time limit: 1 / (1 - gamma)
    ],
)
def test_implied_returns_bound_every_discounted_return(rewards, gamma, horizon, returns):
    low, high = implied_returns(*rewards, gamma, horizon)
    assert (low, high) == pytest.approx(returns, abs=0.01)


def test_auto_support_contains_the_implied_returns_with_room_on_each_side():
    for rewards, horizon in [((1.0, 1.0), 500), ((-1.0, 0.0), 500), ((-5.0, 2.0), 1000), ((0.0, 0.0), 100)]:
        returns = implied_returns(*rewards, 0.99, horizon)
        support = auto_support(*rewards, 0.99, horizon)
        assert contains(support, returns)
        width = returns[1] - returns[0]
        if width:
            assert support == pytest.approx((returns[0] - 0.1 * width, returns[1] + 0.1 * width))
    # No reward seen: +-1 per step is assumed rather than a zero-width support.
    assert auto_support(0.0, 0.0, 0.99, None) == pytest.approx((-120.0, 120.0))
    # CartPole as `qfleet train` derives it (no horizon): what the hand-tuned [0, 110] was aiming at.
    assert auto_support(1.0, 1.0, 0.99, None) == pytest.approx((-10.0, 110.0), abs=1e-3)


def test_contains_needs_both_ends():
    assert contains((0.0, 110.0), (0.0, 99.3))
    assert not contains((0.0, 110.0), (-99.3, 0.0))
    assert not contains((-50.0, 50.0), (-99.3, 0.0))


def test_a_q_loss_refuses_an_unresolved_support_naming_what_resolves_it():
    with pytest.raises(ValueError, match="'auto' is derived from the env"):
        make_q_loss(LearnerConfig(loss="hl_gauss"), torch.device("cpu"))


def test_probe_measures_rewards_and_time_limit_of_a_real_env():
    config = load_config(None, ["env.id=Acrobot-v1"])
    probe = probe_rewards(config.env, steps=600)
    assert (probe.reward_min, probe.reward_max, probe.horizon) == (-1.0, -1.0, 500)
    assert probe.steps == 600 and probe.episodes == 1  # random play never swings up: 500-step episodes


def test_auto_support_resolved_from_acrobot_holds_its_negative_returns(caplog):
    config = load_config("configs/cartpole.yaml", ["env.id=Acrobot-v1", "learner.v_min=auto", "learner.v_max=auto"])
    with caplog.at_level(logging.INFO, logger="system.config.value_support"):
        resolved = resolve_value_support(config).learner.distributional
    # Actors bootstrap past the 500-step limit: values reach -1 / (1 - 0.99) = -100, plus 10% room.
    assert (resolved.v_min, resolved.v_max) == pytest.approx((-110.0, 10.0), abs=1e-3)
    assert "value support [-110, 10], 51 bins of width 2.35" in caplog.text  # configs/cartpole.yaml: c51
    assert not any(record.levelno >= logging.WARNING for record in ours(caplog))


@pytest.mark.parametrize(
    ("env_id", "support"),
    [("CartPole-v1", (-10.0, 110.0)), ("Acrobot-v1", (-110.0, 10.0)), ("MountainCar-v0", (-110.0, 10.0))],
)
def test_auto_support_holds_the_values_past_the_time_limit_that_actors_bootstrap(env_id, support):
    # MountainCar: a policy that never reaches the flag has Q = -100 whatever its 200-step limit says.
    config = load_config(None, [f"env.id={env_id}", "learner.loss=hl_gauss"])
    resolved = resolve_value_support(config).learner.distributional
    assert (resolved.v_min, resolved.v_max) == pytest.approx(support, abs=1e-3)


def test_auto_with_gamma_1_is_refused_naming_what_to_set():
    # Without a time limit, and with one too: actors bootstrap past it, so nothing bounds the returns.
    for env_id in ("Pendulum-v1", "CartPole-v1"):
        config = load_config(None, [f"env.id={env_id}", "learner.loss=hl_gauss", "learner.gamma=1.0"])
        with pytest.raises(ConfigError, match="learner.gamma=1: .*set learner.v_min and learner.v_max"):
            resolve_value_support(config)


def test_the_probe_plays_every_step_or_asks_for_numbers():
    config = load_config(None, ["env.id=CartPole-v1"])
    assert probe_rewards(config.env, steps=300).steps == 300
    with pytest.raises(ConfigError, match=r"played only .* of 300 random steps in 0 s.*set learner.v_min"):
        probe_rewards(config.env, steps=300, seconds=0.0)


def test_a_hand_set_support_that_cannot_hold_the_returns_is_kept_with_a_warning(caplog):
    config = load_config("configs/cartpole.yaml", ["env.id=Acrobot-v1"])  # the config's [0, 110]
    with caplog.at_level(logging.INFO, logger="system.config.value_support"):
        kept = resolve_value_support(config)
    assert kept == config
    warnings = [record.getMessage() for record in ours(caplog) if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    # Random play's episodes: -1 per step for 500 steps, discounted: -99.3.
    assert (
        "learner.v_min/v_max=[0, 110] cannot hold the discounted returns random play reached on Acrobot-v1, [-99.3, -99.3]"
        in warnings[0]
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="system.config.value_support"):
        resolve_value_support(load_config("configs/cartpole.yaml"))  # CartPole's own: it fits
    assert not ours(caplog)


def test_a_support_that_holds_what_random_play_saw_but_not_the_worst_case_is_an_info_line(caplog):
    # As configs/minatar_breakout.yaml's [0, 30] holds Breakout's returns but not 1 / (1 - gamma) per step.
    config = load_config("configs/cartpole.yaml", ["learner.v_min=0", "learner.v_max=60"])  # random: <= 51.5
    with caplog.at_level(logging.INFO, logger="system.config.value_support"):
        resolve_value_support(config)
    assert [record.levelno for record in ours(caplog)] == [logging.INFO]
    assert "holds the returns random play reached on CartPole-v1 but not every return" in caplog.text


def test_one_auto_bound_keeps_the_other_hand_set():
    config = load_config("configs/cartpole.yaml", ["learner.v_min=auto"])
    support = resolve_value_support(config).learner.distributional
    assert (support.v_min, support.v_max) == pytest.approx((-10.0, 110.0), abs=1e-3)


def test_losses_without_a_support_are_not_probed_and_devices_are_never_played():
    dqn = load_config(None, ["env.id=Acrobot-v1"])  # loss dqn: v_min/v_max stay auto, unused
    assert resolve_value_support(dqn) is dqn
    assert (dqn.learner.distributional.v_min, dqn.learner.distributional.v_max) == ("auto", "auto")
    android = load_config(None, ["env.id=qfleet/Android-v0", "learner.loss=hl_gauss"])
    with pytest.raises(ConfigError, match="set learner.v_min and learner.v_max"):
        resolve_value_support(android)
    hand_set = resolve_value_support(
        load_config(None, ["env.id=qfleet/Android-v0", "learner.loss=hl_gauss", "learner.v_min=0", "learner.v_max=1"])
    ).learner.distributional
    assert (hand_set.v_min, hand_set.v_max) == (0.0, 1.0) and math.isfinite(hand_set.v_max)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["learner.loss=c51", "learner.value_transform=symlog"], "c51 projects onto evenly spaced atoms"),
        (["learner.loss=dqn", "learner.value_transform=symlog"], "'dqn' has no value support to transform"),
    ],
)
def test_a_value_transform_the_loss_cannot_use_is_refused_before_anything_is_probed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_value_support(load_config(None, ["env.id=CartPole-v1", *overrides]))


def test_the_default_recipe_follows_the_action_space():
    from system.config.recipes import recipe_for

    acrobot = load_config(None, base=recipe_for("Acrobot-v1"))
    assert (acrobot.env.id, acrobot.learner.loss, acrobot.learner.distributional.v_min) == (
        "Acrobot-v1",
        "hl_gauss",
        "auto",
    )
    assert (acrobot.actors.n_step, acrobot.learner.updates_per_env_step, acrobot.learner.target.every) == (3, 0.5, 100)
    pendulum = load_config(None, ["train.total_env_steps=20000"], base=recipe_for("Pendulum-v1"))
    assert (pendulum.env.id, pendulum.learner.loss, pendulum.train.total_env_steps) == ("Pendulum-v1", "sac", 20000)
    assert resolve_value_support(pendulum) is pendulum  # sac has no value support to derive
    # The shipped SAC config is this recipe: `qfleet train --env Pendulum-v1` trains what it documents.
    assert load_config("configs/pendulum_sac.yaml") == pendulum
    assert pendulum.learner.sac.ensemble_size == 2  # clipped double Q: the recipe keeps the default 2 critics
    assert pendulum.learner.updates_per_env_step >= 1 and pendulum.learner.target.update == "soft"
    with pytest.raises(ConfigError, match="a config file and a recipe"):
        load_config("configs/cartpole.yaml", base=recipe_for("Acrobot-v1"))
