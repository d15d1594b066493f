"""A dataset's episodes as n-step transitions, computed once on the flat step arrays.

Step i of an episode with `remaining` steps left (itself included) starts the window of
k = min(n, remaining) steps: reward = sum_{j<k} gamma^j r[i+j], next_obs = the observation k steps
on, discount = gamma^k, or 0 when the window's last step terminated (nothing to bootstrap). A
window never crosses into the next episode, and one that reaches a truncated end bootstraps from
the episode's last observation, as the actors' `NStepAccumulator` does online. The sum is n
vectorised shifted, masked adds over all steps at once, so time and memory are O(n x steps)
whatever the episodes' lengths.

Each transition also carries `episode_return`, the undiscounted sum of its whole episode's rewards
(however the episode ended, terminated or truncated): what filtered behaviour cloning ranks
transitions by (imitate the top-k% of returns, `learner.loss: filtered_bc`).
"""

from __future__ import annotations

import numpy as np

from system.datasets.reader import Episodes


def nstep_transitions(episodes: Episodes, n_step: int, gamma: float) -> dict[str, np.ndarray]:
    """Every n-step transition of the dataset, columnar, in the replay spec's columns, in dataset
    order (step i of the dataset starts row i).

    Each transition carries its episode's `policy_version` and `actor_id` from the episode
    metadata (-1 where it has none), and its episode's undiscounted return.

    Returns:
        obs, action, reward (n-step discounted sum), next_obs, discount, policy_version, actor_id,
        episode_return (float32); one row per dataset step.
    """
    if n_step < 1:
        raise ValueError(f"n_step={n_step}: must be >= 1")
    lengths = episodes.lengths
    steps = episodes.num_steps
    episode_of = np.repeat(np.arange(len(lengths)), lengths)
    step = np.arange(steps)
    remaining = (episodes.starts + lengths)[episode_of] - step  # steps to the episode's end, this one included
    window = np.minimum(n_step, remaining)
    reward = np.zeros(steps, np.float64)
    for shift in range(n_step):
        within = np.flatnonzero(remaining > shift)  # windows still inside their episode `shift` steps on
        reward[within] += gamma**shift * episodes.rewards[within + shift]
    terminal = episodes.terminations[step + window - 1]
    discount = np.where(terminal, 0.0, np.power(float(gamma), window))
    obs_row = step + episode_of  # episode e's observations sit e rows below its steps (T + 1 each)
    versions = np.array([m.get("policy_version", -1) for m in episodes.metadata], np.int64)
    actors = np.array([m.get("actor_id", -1) for m in episodes.metadata], np.int32)
    returns = episodes.returns()
    return {
        "obs": episodes.observations[obs_row],
        "action": episodes.actions,
        "reward": reward,
        "next_obs": episodes.observations[obs_row + window],
        "discount": discount,
        "policy_version": versions[episode_of],
        "actor_id": actors[episode_of],
        "episode_return": returns[episode_of].astype(np.float32),
    }
