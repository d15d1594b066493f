"""n-step transitions, built on the actor, for a vector of environments.

A full window emits obs_t, action_t, reward = sum_{i<n} gamma^i r_{t+i}, next_obs = obs_{t+n},
discount = gamma^n. When an episode ends, its pending windows are emitted shortened: terminated
gives discount 0 (no bootstrapping through a terminal state); truncated gives gamma^k for k steps
and bootstraps from the last real observation (Pardo et al. 2018); aborted (the env raised) ends
the windows one step earlier and bootstraps from the observation the env failed on.

Steps are recorded by reference; every `block` steps the windows are worked out with a few
vectorised operations over the whole block, so numpy's per-call cost is paid per block.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class NStepAccumulator:
    """Turns per-step vector-env outputs into n-step transitions.

    `add` keeps references to the arrays it is given until their transitions have been emitted (up
    to `block` + n - 1 steps later): callers pass fresh arrays each step and do not write into
    them afterwards (`EnvVector` and `Policy.act` return new arrays every step). A window is
    complete when it holds n steps or its episode ended; the last n - 1 steps carry over to the
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
        self._names: tuple[str, ...] = ()  # obs, action, next_obs, extras: the leading fields of a step
        self._steps: list[tuple] = []  # (obs, action, next_obs, *extras, reward, terminated, truncated, aborted)
        self._carried = 0  # leading steps kept from the last block
        self._carried_emitted = np.zeros((0, num_envs), bool)  # their windows already out
        self._not_aborted = np.zeros(num_envs, bool)

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
        if aborted is None:
            aborted = self._not_aborted
        if extras:
            if not self._names:
                self._names = ("obs", "action", "next_obs", *extras)
            self._steps.append((obs, action, next_obs, *extras.values(), reward, terminated, truncated, aborted))
        else:
            if not self._names:
                self._names = ("obs", "action", "next_obs")
            self._steps.append((obs, action, next_obs, reward, terminated, truncated, aborted))
        if len(self._steps) - self._carried < self.block:
            return None
        return self._emit()

    def _emit(self) -> dict[str, np.ndarray] | None:
        n, envs = self.n_step, self.num_envs
        fields = list(zip(*self._steps, strict=True))  # per field, its arrays of every recorded step
        *columns, reward, terminated, truncated, aborted = fields
        reward, terminated, truncated, aborted = (np.array(f) for f in (reward, terminated, truncated, aborted))
        rows = len(reward)
        ended = terminated | truncated
        open_ = ~aborted  # windows still collecting steps, by start row (an aborted step starts none)
        open_[: self._carried] &= ~self._carried_emitted
        emitted_before = ~open_
        returns = np.zeros((rows, envs))
        discount = np.zeros((rows, envs))
        length = np.zeros((rows, envs), np.int64)  # steps to the bootstrap observation's row
        from_obs = np.zeros((rows, envs), bool)  # ... in `obs` (aborted) rather than `next_obs`
        for i in range(min(n, rows)):
            m = rows - i  # step t + i of the window starting at t (t < m)
            live = open_[:m]
            # The step at t + i was aborted: the window ends before it, bootstrapping from its obs.
            cut = live & aborted[i:]
            # Otherwise the step counts; it may end the episode, or fill the window.
            step = live ^ cut
            np.add(returns[:m], self._powers[i] * reward[i:], out=returns[:m], where=step)
            end = step & ended[i:]
            done = step if i == n - 1 else end
            np.copyto(discount[:m], self._powers[i + 1], where=done)
            np.copyto(discount[:m], 0.0, where=end & terminated[i:])
            np.copyto(discount[:m], self._powers[i], where=cut)
            done = done | cut
            np.copyto(length[:m], i, where=done)
            from_obs[:m] |= cut
            live ^= done
        complete = ~open_ & ~emitted_before
        keep = min(n - 1, rows)
        self._carried_emitted = (~open_)[rows - keep :]
        self._steps = self._steps[rows - keep :]
        self._carried = keep
        t, e = np.nonzero(complete)
        if len(t) == 0:
            return None
        out = {
            name: _take(column, t, e) for name, column in zip(self._names, columns, strict=True) if name != "next_obs"
        }
        rows_after, bootstrap_obs = t + length[t, e], from_obs[t, e]
        next_obs = _take(columns[2], rows_after, e)
        if bootstrap_obs.any():
            next_obs[bootstrap_obs] = _take(columns[0], rows_after[bootstrap_obs], e[bootstrap_obs])
        out["next_obs"] = next_obs
        out["reward"] = returns[t, e].astype(np.float32)
        out["discount"] = discount[t, e].astype(np.float32)
        return out

    def pending(self) -> int:
        """Steps recorded whose transition is not emitted yet, over all envs."""
        carried = int((~self._carried_emitted).sum())
        fresh = sum(int((~step[-1]).sum()) for step in self._steps[self._carried :])
        return carried + fresh


GATHER_BYTES = 64 << 10
"""A step's array (all envs) at least this large is copied straight into the transitions instead
of being stacked first: pixel observations (Atari: 225 KB per step of 8 envs) are then read once,
not twice."""


def _take(per_step: tuple, rows: np.ndarray, envs: np.ndarray) -> np.ndarray:
    """`stack(per_step)[rows, envs]`: the entries of env `envs[i]` at step `rows[i]`."""
    first = np.asarray(per_step[0])
    if first.nbytes < GATHER_BYTES:  # small: one stack and one fancy index beat a loop over steps
        return np.array(per_step)[rows, envs]
    out = np.empty((len(rows), *first.shape[1:]), first.dtype)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    for a, b in zip(starts, (*starts[1:], len(rows)), strict=True):
        picked = order[a:b]
        out[picked] = np.asarray(per_step[ordered[a]])[envs[picked]]
    return out


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
