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

    Steps are appended to time-major buffers [rows, num_envs, ...]; every `block` steps the
    transitions of all completed windows are computed at once, with n passes of array operations
    over the whole block (numpy's per-call cost is paid per block, not per step). A window is
    complete when it holds n steps or its episode ended; the last n - 1 rows carry over to the
    next block for the windows still open.

    Args:
        num_envs: environments stepped together.
        n_step: window length n (1 is plain one-step TD).
        gamma: discount per step.
        block: steps between emissions (1: emit as soon as a window completes).
    """

    def __init__(self, num_envs: int, n_step: int, gamma: float, block: int = 1):
        if num_envs < 1 or n_step < 1 or block < 1 or not 0.0 <= gamma <= 1.0:
            raise ValueError(
                f"need num_envs >= 1, n_step >= 1, block >= 1, 0 <= gamma <= 1; got {num_envs}, {n_step}, {block}, {gamma}"
            )
        self.num_envs, self.n_step, self.gamma, self.block = num_envs, n_step, gamma, block
        self._powers = gamma ** np.arange(n_step + 1, dtype=np.float64)
        self._rows = block + n_step - 1
        self._len = 0  # rows filled
        self._fresh = 0  # rows added since the last emission
        self._columns: dict[str, np.ndarray] = {}  # obs, action, next_obs, extras: [rows, num_envs, ...]
        self._column_list: list[np.ndarray] = []
        self._reward = np.zeros((self._rows, num_envs))
        self._ends = np.zeros((3, self._rows, num_envs), bool)  # terminated, truncated, aborted
        self._emitted = np.zeros((self._rows, num_envs), bool)  # windows starting here already out

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
        """Records one step of every env; returns the transitions completed (columnar), or None.

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
        row = self._len
        values = (obs, action, next_obs, *(extras or {}).values())
        if len(self._columns) != len(values):  # the first step: allocate, in this order
            for name, value in zip(("obs", "action", "next_obs", *(extras or {})), values, strict=True):
                value = np.asarray(value)
                self._columns[name] = np.zeros((self._rows, *value.shape), value.dtype)
            self._column_list = list(self._columns.values())
        for column, value in zip(self._column_list, values, strict=True):
            column[row] = value
        self._reward[row] = reward
        ends = self._ends
        ends[0, row] = terminated
        ends[1, row] = truncated
        ends[2, row] = False if aborted is None else aborted
        self._emitted[row] = ends[2, row]  # an aborted step starts no window
        self._len += 1
        self._fresh += 1
        if self._fresh < self.block:
            return None
        out = self._emit()
        self._carry()
        return out

    def _emit(self) -> dict[str, np.ndarray] | None:
        n, rows, envs = self.n_step, self._len, self.num_envs
        terminated, truncated, aborted = self._ends[:, :rows]
        open_ = ~self._emitted[:rows]  # windows still collecting steps, by start row
        complete = np.zeros((rows, envs), bool)
        returns = np.zeros((rows, envs))
        discount = np.zeros((rows, envs))
        source_row = np.zeros((rows, envs), np.int64)  # row of the bootstrap observation
        from_obs = np.zeros((rows, envs), bool)  # ... in `obs` (aborted) rather than `next_obs`
        starts = np.arange(rows)[:, None]
        for i in range(min(n, rows)):
            here = slice(i, rows)  # step t + i of the window starting at t (t < rows - i)
            live = open_[: rows - i]
            # The step at t + i was aborted: the window ends before it, bootstrapping from its obs.
            cut = live & aborted[here]
            # Otherwise the step counts; it may end the episode, or fill the window.
            step = live & ~cut
            returns[: rows - i] += np.where(step, self._powers[i] * self._reward[here], 0.0)
            ended = step & (terminated[here] | truncated[here])
            filled = step & ~ended & (i == n - 1)
            done = cut | ended | filled
            discount[: rows - i] = np.where(
                cut,
                self._powers[i],
                np.where(ended & terminated[here], 0.0, np.where(done, self._powers[i + 1], discount[: rows - i])),
            )
            source_row[: rows - i] = np.where(done, starts[: rows - i] + i, source_row[: rows - i])
            from_obs[: rows - i] |= cut
            complete[: rows - i] |= done
            open_[: rows - i] &= ~done
        t, e = np.nonzero(complete)
        self._emitted[:rows] |= complete
        if len(t) == 0:
            return None
        out = {name: column[t, e] for name, column in self._columns.items() if name != "next_obs"}
        rows_after, bootstrap_obs = source_row[t, e], from_obs[t, e]
        next_obs = self._columns["next_obs"][rows_after, e]
        if bootstrap_obs.any():
            next_obs[bootstrap_obs] = self._columns["obs"][rows_after[bootstrap_obs], e[bootstrap_obs]]
        out["next_obs"] = next_obs
        out["reward"] = returns[t, e].astype(np.float32)
        out["discount"] = discount[t, e].astype(np.float32)
        return out

    def _carry(self) -> None:
        """Keeps the last n - 1 rows (the only ones with windows possibly still open)."""
        keep = min(self.n_step - 1, self._len)
        if keep and self._len > keep:
            first = self._len - keep
            for column in (*self._columns.values(), self._reward, self._emitted):
                column[:keep] = column[first : self._len]
            self._ends[:, :keep] = self._ends[:, first : self._len]
        self._len, self._fresh = keep, 0

    def pending(self) -> int:
        """Steps recorded whose transition is not emitted yet, over all envs."""
        return int((~self._emitted[: self._len]).sum())


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
