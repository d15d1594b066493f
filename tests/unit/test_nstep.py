"""n-step returns and discounts against hand-computed cases; the Ape-X epsilon schedule."""

import numpy as np
import pytest

from actors.nstep import NStepAccumulator, apex_epsilons

G = 0.9


def step(acc, t, reward, terminated=False, truncated=False):
    """One step of a single env whose observation is the time index t (next is t + 1)."""
    return acc.add(
        np.array([[t]], np.float32),
        np.array([t % 2]),
        np.array([reward]),
        np.array([[t + 1]], np.float32),
        np.array([terminated]),
        np.array([truncated]),
    )


def test_full_windows_sum_discounted_rewards_and_bootstrap_n_steps_ahead():
    acc = NStepAccumulator(1, n_step=3, gamma=G)
    assert step(acc, 0, 1.0) is None and step(acc, 1, 2.0) is None
    out = step(acc, 2, 3.0)
    np.testing.assert_allclose(out["reward"], [1 + G * 2 + G**2 * 3])
    np.testing.assert_allclose(out["discount"], [G**3])
    np.testing.assert_array_equal(out["obs"][:, 0], [0])
    np.testing.assert_array_equal(out["next_obs"][:, 0], [3])
    out = step(acc, 3, 4.0)
    np.testing.assert_allclose(out["reward"], [2 + G * 3 + G**2 * 4])
    np.testing.assert_array_equal(out["next_obs"][:, 0], [4])


def test_termination_mid_window_flushes_every_pending_window_without_bootstrapping():
    acc = NStepAccumulator(1, n_step=3, gamma=G)
    step(acc, 0, 1.0)
    step(acc, 1, 2.0)
    step(acc, 2, 3.0)  # emits the window starting at 0
    out = step(acc, 3, 4.0, terminated=True)  # pending: starts 1, 2, 3
    np.testing.assert_array_equal(out["obs"][:, 0], [1, 2, 3])
    np.testing.assert_allclose(out["reward"], [2 + G * 3 + G**2 * 4, 3 + G * 4, 4.0])
    np.testing.assert_allclose(out["discount"], [0.0, 0.0, 0.0])
    assert acc.pending() == 0


def test_truncation_mid_window_bootstraps_from_the_final_observation():
    acc = NStepAccumulator(1, n_step=4, gamma=G)
    step(acc, 0, 1.0)
    out = step(acc, 1, 1.0, truncated=True)  # a 2-step episode cut by a time limit
    np.testing.assert_array_equal(out["obs"][:, 0], [0, 1])
    np.testing.assert_allclose(out["reward"], [1 + G, 1.0])
    np.testing.assert_allclose(out["discount"], [G**2, G])  # gamma^k for the k steps left
    np.testing.assert_array_equal(out["next_obs"][:, 0], [2, 2])  # the final obs, not a reset obs


def test_envs_in_a_vector_keep_separate_windows():
    acc = NStepAccumulator(2, n_step=2, gamma=G)
    obs = np.array([[0.0], [10.0]], np.float32)
    first = acc.add(
        obs, np.array([0, 1]), np.array([1.0, 5.0]), obs + 1, np.array([False, True]), np.array([False, False])
    )
    np.testing.assert_array_equal(first["obs"][:, 0], [10.0])  # env 1 terminated at once
    np.testing.assert_allclose(first["discount"], [0.0])
    second = acc.add(
        obs + 1, np.array([1, 0]), np.array([2.0, 7.0]), obs + 2, np.array([False, False]), np.array([False, False])
    )
    np.testing.assert_array_equal(second["obs"][:, 0], [0.0])  # env 0's full window; env 1 restarted
    np.testing.assert_allclose(second["reward"], [1 + G * 2])
    assert acc.pending() == 2


def test_one_step_is_plain_td():
    acc = NStepAccumulator(1, n_step=1, gamma=G)
    out = step(acc, 0, 5.0)
    np.testing.assert_allclose(out["reward"], [5.0])
    np.testing.assert_allclose(out["discount"], [G])


def test_apex_epsilon_schedule():
    eps = apex_epsilons(8, base=0.4, alpha=7.0)
    np.testing.assert_allclose(eps[0], 0.4)
    np.testing.assert_allclose(eps[-1], 0.4**8)
    np.testing.assert_allclose(eps[3], 0.4 ** (1 + 3 * 7 / 7))
    assert np.all(np.diff(eps) < 0)
    np.testing.assert_allclose(apex_epsilons(1), [0.4])
    with pytest.raises(ValueError):
        apex_epsilons(0)
