"""n-step transitions, built on the actor, for a vector of environments.

For each env the accumulator keeps the last n (obs, action, reward) steps. A full window emits

    obs_t, action_t, reward = sum_{i<n} gamma^i r_{t+i}, next_obs = obs_{t+n}, discount = gamma^n.

When an episode ends every pending window is emitted at once, shortened to the steps that remain:

- terminated (a true terminal state): discount = 0, so the learner never bootstraps through it;
- truncated (time limit, or a rebuilt env): discount = gamma^k for a window of k steps, and
  next_obs is the last real observation, so the learner bootstraps from it (Pardo et al. 2018).

The learner's target is then reward + discount * max_a Q(next_obs, a) for every loss.
"""

from __future__ import annotations

import collections

import numpy as np


class NStepAccumulator:
    """Turns per-step vector-env outputs into n-step transitions.

    Args:
        num_envs: environments stepped together.
        n_step: window length n (1 is plain one-step TD).
        gamma: discount per step.
    """

    def __init__(self, num_envs: int, n_step: int, gamma: float):
        if num_envs < 1 or n_step < 1 or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"need num_envs >= 1, n_step >= 1, 0 <= gamma <= 1; got {num_envs}, {n_step}, {gamma}")
        self.n_step, self.gamma = n_step, gamma
        self._windows: list[collections.deque] = [collections.deque() for _ in range(num_envs)]

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> dict[str, np.ndarray] | None:
        """Records one step of every env; returns the transitions it completed (columnar), or None.

        `next_obs` must be each env's real next observation: for an env whose episode just ended,
        its final observation (gymnasium's `final_obs`), not the first one of the next episode.
        """
        out: list[tuple] = []
        for env, window in enumerate(self._windows):
            window.append((obs[env], action[env], float(reward[env])))
            if terminated[env] or truncated[env]:
                while window:
                    out.append(self._emit(window, next_obs[env], bootstrap=not terminated[env]))
                    window.popleft()
            elif len(window) == self.n_step:
                out.append(self._emit(window, next_obs[env], bootstrap=True))
                window.popleft()
        if not out:
            return None
        first_obs, actions, rewards, next_states, discounts = zip(*out, strict=True)
        return {
            "obs": np.stack(first_obs),
            "action": np.stack(actions),
            "reward": np.asarray(rewards, dtype=np.float32),
            "next_obs": np.stack(next_states),
            "discount": np.asarray(discounts, dtype=np.float32),
        }

    def _emit(self, window: collections.deque, bootstrap_obs: np.ndarray, bootstrap: bool) -> tuple:
        ret = 0.0
        for i, (_, _, r) in enumerate(window):
            ret += self.gamma**i * r
        discount = self.gamma ** len(window) if bootstrap else 0.0
        first_obs, first_action, _ = window[0]
        return first_obs, first_action, ret, bootstrap_obs, discount

    def pending(self) -> int:
        """Steps recorded but not yet emitted, over all envs."""
        return sum(len(w) for w in self._windows)


def apex_epsilons(num_actors: int, base: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """Ape-X's per-actor exploration (Horgan et al. 2018): eps_i = base^(1 + i * alpha / (N - 1)).

    Actor 0 explores most (eps = base), the last least (base^(1 + alpha)). A single actor gets
    `base`.
    """
    if num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}")
    if num_actors == 1:
        return np.array([base])
    i = np.arange(num_actors)
    return base ** (1.0 + i * alpha / (num_actors - 1))
