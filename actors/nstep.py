"""n-step transitions, built on the actor, for a vector of environments.

For each env the accumulator keeps the last n steps. A full window emits

    obs_t, action_t, reward = sum_{i<n} gamma^i r_{t+i}, next_obs = obs_{t+n}, discount = gamma^n.

When an episode ends every pending window is emitted at once, shortened to the steps that remain:

- terminated (a true terminal state): discount = 0, so the learner never bootstraps through it;
- truncated (time limit): discount = gamma^k for a window of k steps, and next_obs is the last
  real observation, so the learner bootstraps from it (Pardo et al. 2018);
- aborted (the env raised and was rebuilt): the failed step never happened, so the windows end
  one step earlier and bootstrap from the observation the env failed on, as for a truncation.

The learner's target is then reward + discount * max_a Q(next_obs, a) for every loss.

Steps live in ring buffers shaped [n, num_envs, ...]; the common case (every env mid-episode with
a full window) is a handful of vectorised numpy operations, and only envs whose episode ended
take a Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping

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
        self.num_envs, self.n_step, self.gamma = num_envs, n_step, gamma
        self._powers = gamma ** np.arange(n_step + 1, dtype=np.float64)
        self._step = -1  # index of the latest step, shared by all envs
        self._start = np.zeros(num_envs, np.int64)  # first step of each env's current segment
        self._rings: dict[str, np.ndarray] = {}

    def _ring(self, name: str, value: np.ndarray) -> np.ndarray:
        ring = self._rings.get(name)
        if ring is None:
            ring = np.zeros((self.n_step, *value.shape), value.dtype)
            self._rings[name] = ring
        return ring

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        extras: Mapping[str, np.ndarray] | None = None,
        aborted: np.ndarray | None = None,
    ) -> dict[str, np.ndarray] | None:
        """Records one step of every env; returns the transitions it completed (columnar), or None.

        Args:
            obs, action, reward: the step of each env, with a leading num_envs dimension.
            next_obs: each env's real next observation: for an env whose episode just ended, its
                final observation (gymnasium's `final_obs`), not the first one of the next episode.
            terminated, truncated: gymnasium's episode-end flags per env.
            extras: more per-step columns (e.g. the policy version that chose the action); each
                transition carries the values of its first step.
            aborted: envs whose step did not happen (the env raised); their windows end at the
                previous step and bootstrap from `obs`.
        """
        self._step += 1
        t, n = self._step, self.n_step
        slot = t % n
        columns = {"obs": obs, "action": action, "reward": np.asarray(reward, np.float64), **(extras or {})}
        for name, value in columns.items():
            self._ring(name, np.asarray(value))[slot] = value

        ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        if aborted is not None:
            ended |= np.asarray(aborted, bool)
        parts: list[dict[str, np.ndarray]] = []
        full = ~ended & (t - self._start + 1 >= n)
        if full.any():
            envs = np.flatnonzero(full)
            parts.append(self._windows(envs, np.full(len(envs), t - n + 1), t, next_obs[envs], bootstrap=True))
        for env in np.flatnonzero(ended):
            if aborted is not None and aborted[env]:
                last, bootstrap_obs, bootstrap = t - 1, obs[env], True
            else:
                last, bootstrap_obs, bootstrap = t, next_obs[env], not terminated[env]
            first = max(int(self._start[env]), t - n + 1)  # windows not yet emitted as full
            if first <= last:
                starts = np.arange(first, last + 1)
                envs = np.full(len(starts), env)
                parts.append(
                    self._windows(envs, starts, last, np.repeat(bootstrap_obs[None], len(starts), 0), bootstrap)
                )
            self._start[env] = t + 1
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _windows(
        self, envs: np.ndarray, starts: np.ndarray, last: int, bootstrap_obs: np.ndarray, bootstrap: bool
    ) -> dict[str, np.ndarray]:
        """Transitions of `envs` whose windows run from `starts` to step `last` (inclusive)."""
        n = self.n_step
        lengths = last - starts + 1  # 1..n
        offsets = np.arange(n)
        steps = starts[:, None] + offsets[None, :]  # [k, n]
        valid = offsets[None, :] < lengths[:, None]
        rewards = self._rings["reward"][steps % n, envs[:, None]].astype(np.float64)
        returns = (np.where(valid, rewards, 0.0) * self._powers[:n]).sum(axis=1)
        discount = self._powers[lengths] if bootstrap else np.zeros(len(envs))
        first_slots = starts % n
        out = {name: ring[first_slots, envs] for name, ring in self._rings.items() if name != "reward"}
        out["reward"] = returns.astype(np.float32)
        out["next_obs"] = np.asarray(bootstrap_obs)
        out["discount"] = discount.astype(np.float32)
        return out

    def pending(self) -> int:
        """Steps recorded but not yet emitted, over all envs."""
        return int(np.clip(self._step + 1 - self._start, 0, self.n_step - 1).sum())


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
