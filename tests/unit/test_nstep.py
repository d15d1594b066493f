"""n-step returns and discounts against hand-computed cases and a brute-force reference; the Ape-X
epsilon schedule."""

import numpy as np
import pytest

from actors import nstep
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


def test_a_block_emits_every_block_steps_what_a_step_by_step_accumulator_emits():
    blocked, stepwise = NStepAccumulator(1, 3, G, block=4), NStepAccumulator(1, 3, G)
    outs = []
    for t in range(8):
        outs.append((step(blocked, t, float(t), terminated=t == 5), step(stepwise, t, float(t), terminated=t == 5)))
    assert [o is None for o, _ in outs] == [True, True, True, False, True, True, True, False]
    emitted = np.concatenate([o["reward"] for o, _ in outs if o is not None])
    expected = np.concatenate([s["reward"] for _, s in outs if s is not None])
    np.testing.assert_allclose(np.sort(emitted), np.sort(expected))


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


def test_an_aborted_step_ends_the_windows_before_it_and_bootstraps_from_its_observation():
    acc = NStepAccumulator(2, n_step=3, gamma=G)
    obs = np.array([[0.0], [10.0]], np.float32)
    no = np.array([False, False])
    acc.add(obs, np.array([0, 0]), np.array([1.0, 1.0]), obs + 1, no, no)
    # env 1 raises on its second step: that step never happened.
    out = acc.add(obs + 1, np.array([0, 0]), np.array([2.0, 99.0]), obs + 2, no, no, aborted=np.array([False, True]))
    np.testing.assert_array_equal(out["obs"][:, 0], [10.0])
    np.testing.assert_allclose(out["reward"], [1.0])  # the 99 of the failed step is not counted
    np.testing.assert_allclose(out["discount"], [G])  # bootstraps, as a truncation does
    np.testing.assert_array_equal(out["next_obs"][:, 0], [11.0])  # the observation it failed on
    assert acc.pending() == 2  # env 0's two steps; env 1 starts afresh


def test_extra_columns_come_from_each_window_s_first_step():
    acc = NStepAccumulator(1, n_step=2, gamma=G)
    for t in range(3):
        out = acc.add(
            np.array([[t]], np.float32),
            np.array([0]),
            np.array([1.0]),
            np.array([[t + 1]], np.float32),
            np.array([False]),
            np.array([t == 2]),
            extras={"policy_version": np.array([100 + t])},
        )
    np.testing.assert_array_equal(out["policy_version"], [101, 102])


def reference_transitions(trajectory, n, gamma):
    """Brute force from whole segments: (obs, n-step return, next_obs, discount, first step's
    version) per window start.

    `trajectory` holds (steps, end, bootstrap_obs) per segment; steps are (obs, reward, next_obs,
    version).
    """
    out = []
    for segment, end, bootstrap_obs in trajectory:
        for i in range(len(segment)):
            window = segment[i : i + n]
            first_obs, last_next_obs, version = window[0][0], window[-1][2], window[0][3]
            ret = sum(gamma**k * step[1] for k, step in enumerate(window))
            at_end = i + len(window) == len(segment)
            if len(window) == n and not (at_end and end in ("terminated", "truncated")):
                out.append((first_obs, ret, last_next_obs, gamma**n, version))
            elif end == "terminated":
                out.append((first_obs, ret, last_next_obs, 0.0, version))
            elif end == "truncated":
                out.append((first_obs, ret, last_next_obs, gamma ** len(window), version))
            elif end == "aborted":
                out.append((first_obs, ret, bootstrap_obs, gamma ** len(window), version))
    return out


@pytest.mark.parametrize("gather", ["stacked", "per-step"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("block", [1, 4, 7])
@pytest.mark.parametrize("n_step", [1, 3, 5])
def test_random_episodes_match_a_brute_force_reference(n_step, block, gamma, gather, monkeypatch):
    """Terminations, truncations and aborts at random in 4 envs, windows shorter and longer than a
    block, and extras: the emitted transitions are exactly the reference's."""
    if gather == "per-step":  # the path pixel observations take (their steps are copied, not stacked)
        monkeypatch.setattr(nstep, "GATHER_BYTES", 0)
    rng = np.random.default_rng(n_step * 100 + block)
    num_envs, steps = 4, 308  # a multiple of every block: the last step emits
    acc = NStepAccumulator(num_envs, n_step, gamma=gamma, block=block)
    counter = 0
    obs = np.arange(num_envs, dtype=np.float64)[:, None]
    segments: list[list] = [[] for _ in range(num_envs)]
    trajectory, got = [], []
    for t in range(steps):
        counter += num_envs
        reward = rng.integers(0, 5, num_envs).astype(np.float64)
        next_obs = (counter + np.arange(num_envs, dtype=np.float64))[:, None]
        event = rng.random(num_envs)
        terminated, truncated = event < 0.05, (event >= 0.05) & (event < 0.1)
        aborted = (event >= 0.1) & (event < 0.13)
        version = np.full(num_envs, t, np.int64)
        out = acc.add(
            obs,
            np.zeros(num_envs, np.int64),
            reward,
            next_obs,
            terminated,
            truncated,
            extras={"policy_version": version},
            aborted=aborted,
        )
        if out is not None:
            columns = (out["obs"][:, 0], out["reward"], out["next_obs"][:, 0], out["discount"], out["policy_version"])
            got += zip(*columns, strict=True)
        for env in range(num_envs):
            if aborted[env]:  # the failed step never happened; short windows bootstrap from obs
                trajectory.append((segments[env], "aborted", obs[env, 0]))
                segments[env] = []
                continue
            segments[env].append((obs[env, 0], reward[env], next_obs[env, 0], t))
            if terminated[env] or truncated[env]:
                trajectory.append((segments[env], "terminated" if terminated[env] else "truncated", None))
                segments[env] = []
        obs = next_obs + 0.5  # tells the observation acted on from the previous step's next_obs
    trajectory += [(segment, None, None) for segment in segments]
    want = np.array(sorted(reference_transitions(trajectory, n_step, gamma)))
    got = np.array(sorted(got))  # by obs, which is unique to each step of each env
    assert len(want) > steps and got.shape == want.shape
    np.testing.assert_array_equal(got[:, [0, 2, 4]], want[:, [0, 2, 4]])  # obs, next_obs, version
    np.testing.assert_allclose(got[:, [1, 3]], want[:, [1, 3]], rtol=1e-6, atol=1e-6)  # reward, discount
    assert acc.pending() == sum(min(len(segment), n_step - 1) for segment in segments)
