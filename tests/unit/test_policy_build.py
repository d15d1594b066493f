"""The uniform random actions a fresh run's actors take before their policy is built, and the
background build that ends the garbage collector's pause (actors/policy_build.py)."""

from __future__ import annotations

import gc
import threading

import gymnasium as gym
import numpy as np
import pytest

from actors import UnsupportedEnvError, spec_for_spaces
from actors.policy_build import build_in_background, random_actions
from conftest import wait_until
from learner import ActionLayout, ActionSpace


def test_discrete_random_actions_cover_every_action_uniformly_as_int64_indices():
    actions = random_actions(ActionSpace(num_actions=4), 40_000, np.random.default_rng(0))
    assert actions.dtype == np.int64 and actions.shape == (40_000,)
    counts = np.bincount(actions, minlength=4)
    assert len(counts) == 4 and np.all(np.abs(counts / 40_000 - 0.25) < 0.01)  # ~8 sigma of binomial noise


def test_continuous_random_actions_are_float32_uniform_within_each_dimensions_bounds():
    space = ActionSpace(low=(-1.0, 0.0), high=(1.0, 10.0))
    actions = random_actions(space, 20_000, np.random.default_rng(0))
    assert actions.dtype == np.float32 and actions.shape == (20_000, 2)
    assert np.all(actions >= [-1.0, 0.0]) and np.all(actions <= [1.0, 10.0])
    np.testing.assert_allclose(actions.mean(axis=0), [0.0, 5.0], atol=0.1)


def test_random_actions_follow_the_actors_seeded_generator():
    space = ActionSpace(num_actions=6)
    first = random_actions(space, 8, np.random.default_rng(3))
    np.testing.assert_array_equal(first, random_actions(space, 8, np.random.default_rng(3)))


@pytest.mark.parametrize("fails", [False, True], ids=["built", "failed"])
def test_a_background_build_hands_over_its_result_or_error_and_ends_the_collectors_pause(fails):
    release = threading.Event()

    def build():
        assert release.wait(60)
        if fails:
            raise RuntimeError("no torch here")
        return "policy"

    gc.disable()  # the actor's pause
    try:
        future = build_in_background(build, "test-build", resume_collector=True)
        assert not future.done() and not gc.isenabled()  # paused while the build runs
        release.set()
        if fails:
            with pytest.raises(RuntimeError, match="no torch here"):
                future.result(timeout=60)
        else:
            assert future.result(timeout=60) == "policy"
        assert gc.isenabled()  # resumed before the result was handed over
    finally:
        gc.enable()


def test_a_background_build_leaves_a_collector_the_caller_had_off_off():
    gc.disable()
    try:
        assert build_in_background(lambda: 1, "test-build", resume_collector=False).result(timeout=60) == 1
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("low", [-np.inf, -1.0], ids=["unbounded-low", "unbounded-high"])
def test_an_env_whose_box_actions_are_unbounded_is_refused_with_a_clear_error(low):
    # uniform random actions (and the policy's) live within [low, high]: an infinite bound cannot
    high = np.inf if low == -1.0 else 1.0
    space = gym.spaces.Box(low, high, shape=(2,), dtype=np.float32)
    obs = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    with pytest.raises(UnsupportedEnvError, match="unbounded") as caught:
        spec_for_spaces("Unbounded-v0", obs, space)
    assert caught.value.env_id == "Unbounded-v0"
    spec_for_spaces("Bounded-v0", obs, gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32))  # accepted


def test_a_long_background_build_ends_the_collectors_pause_at_its_bound():
    release = threading.Event()
    gc.disable()  # the actor's pause
    try:
        future = build_in_background(lambda: release.wait(60), "test-build", resume_collector=True, pause_max_s=0.2)
        assert wait_until(gc.isenabled, 30) and not future.done()  # resumed while the build still runs
        release.set()
        assert future.result(timeout=60) is True and gc.isenabled()
    finally:
        release.set()
        gc.enable()


def test_ui_random_actions_draw_a_kind_uniformly_then_an_action_of_that_kind():
    # 6 taps, 1 swipe, 1 key: a uniform index would be a tap 3 times in 4
    kind_of = (0, 0, 0, 1, 0, 0, 0, 2)
    points = tuple((0.5, 0.5) if kind == 0 else (0.0, 0.0) for kind in kind_of)
    layout = ActionLayout(kinds=("tap", "swipe", "key"), kind_of=kind_of, points=points)
    actions = random_actions(ActionSpace(num_actions=8, layout=layout), 30_000, np.random.default_rng(0))
    assert actions.dtype == np.int64 and actions.shape == (30_000,)
    kinds = np.bincount(np.asarray(kind_of)[actions], minlength=3) / 30_000
    np.testing.assert_allclose(kinds, [1 / 3] * 3, atol=0.015)
    taps = np.bincount(actions, minlength=8)[[0, 1, 2, 4, 5, 6]] / 30_000
    np.testing.assert_allclose(taps, [1 / 18] * 6, atol=0.01)  # within the kind, uniform
