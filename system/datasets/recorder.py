"""Recording: the episodes actors' env vectors produce, written to a dataset as they end.

`EpisodeRecorder` sits beside an actor's step loop: it takes each vector step (the same arrays the
actor hands its n-step accumulator) and hands each finished episode to a `DatasetWriter`, with the
policy version that chose its first action, the actor's epsilon and the actor's id. Any number of
recorders can share one writer (it is thread-safe and numbers episodes as they arrive).
`record_episodes` runs a policy in `actors` env vectors until enough episodes are recorded; it
is what `qfleet record` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from system.datasets.writer import DatasetWriter, Episode

log = logging.getLogger(__name__)


class EpisodeRecorder:
    """Turns one actor's vector steps into whole episodes for a `DatasetWriter`.

    Args:
        writer: where finished episodes go.
        first_obs: the vector's first observations (from `EnvVector.reset`).
        actor_id, epsilon: stamped on every episode's metadata.
    """

    def __init__(self, writer: DatasetWriter, first_obs: np.ndarray, actor_id: int, epsilon: float):
        self.writer, self.actor_id, self.epsilon = writer, actor_id, epsilon
        self.num_envs = len(first_obs)
        self._obs: list[list[np.ndarray]] = [[np.array(o)] for o in first_obs]
        self._steps: list[list[tuple]] = [[] for _ in range(self.num_envs)]
        self._versions = [0] * self.num_envs
        self.episodes = 0
        self.returns: list[float] = []

    def add(
        self,
        actions: np.ndarray,
        rewards: np.ndarray,
        final_obs: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        aborted: np.ndarray,
        policy_version: int,
    ) -> int:
        """Records one step of every env (`EnvVector.step`'s output); returns episodes finished.

        An aborted step (the env raised and was rebuilt) did not happen: the episode so far ends
        truncated at the step before (dropped when it had no step), and the rebuilt env's first
        observation starts the next.
        """
        finished = 0
        for i in range(self.num_envs):
            if aborted[i]:
                if self._steps[i]:
                    action, reward, term, _ = self._steps[i][-1]
                    self._steps[i][-1] = (action, reward, term, True)
                    finished += self._finish(i)
                self._obs[i] = [np.array(next_obs[i])]
                self._steps[i] = []
                continue
            if not self._steps[i]:
                self._versions[i] = policy_version
            # gymnasium's TimeLimit flags truncation on the step that terminates too: that is a termination
            terminal = bool(terminated[i])
            self._steps[i].append((actions[i], float(rewards[i]), terminal, bool(truncated[i]) and not terminal))
            self._obs[i].append(np.array(final_obs[i]))
            if terminated[i] or truncated[i]:
                finished += self._finish(i)
                self._obs[i] = [np.array(next_obs[i])]
                self._steps[i] = []
        return finished

    def _finish(self, i: int) -> int:
        actions, rewards, terms, truncs = zip(*self._steps[i], strict=True)
        episode_return = float(np.sum(rewards))
        self.writer.add(
            Episode(
                observations=np.stack(self._obs[i]),
                actions=np.asarray(actions),
                rewards=np.asarray(rewards, np.float64),
                terminations=np.asarray(terms, bool),
                truncations=np.asarray(truncs, bool),
                metadata={
                    "policy_version": int(self._versions[i]),
                    "epsilon": float(self.epsilon),
                    "actor_id": int(self.actor_id),
                    "return": episode_return,
                },
            )
        )
        self.episodes += 1
        self.returns.append(episode_return)
        return 1


@dataclass(frozen=True)
class RecordSettings:
    """How `record_episodes` runs (the `qfleet record` options)."""

    episodes: int
    """Episodes to record (all actors together); the last vector step's extra episodes are kept."""
    epsilon: float = 0.0
    """Exploration of every actor: a random action with this probability, else the policy's."""
    num_actors: int = 1
    """Actors (env vectors of env.num_envs envs each, own seeds), stepped in turn in this process."""
    seed: int = 0
    """Seeds actor i's exploration (seed + 1000 * i), its envs (seed * 10000 + 1000 * i) and an
    untrained network's weights."""
    progress_every_s: float = 10.0
    """Seconds between progress lines; the dataset is committed at each."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes}: must be >= 1")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon={self.epsilon}: must be in [0, 1]")
        if self.num_actors < 1:
            raise ValueError(f"num_actors={self.num_actors}: must be >= 1")


def record_episodes(
    writer: DatasetWriter,
    make_vector: Callable[[int, int], object],
    policy,
    settings: RecordSettings,
    progress: Callable[[str], None] = print,
) -> list[float]:
    """Steps `settings.num_actors` env vectors with `policy` until `settings.episodes` episodes
    are written; returns their returns. The writer is flushed (committed) at every progress line
    and at the end, so an interrupted recording keeps what it flushed.

    Args:
        make_vector: (actor index, env seed) -> an `actors.EnvVector` (reset here); actor i's
            seed is `settings.seed * 10000 + 1000 * i`.
        policy: a `learner.Policy` (`act(obs, epsilon, rng)`, `version`).
    """
    vectors = [make_vector(i, settings.seed * 10_000 + 1000 * i) for i in range(settings.num_actors)]
    try:
        rngs = [np.random.default_rng(settings.seed + 1000 * i) for i in range(settings.num_actors)]
        obs = [vector.reset() for vector in vectors]
        recorders = [EpisodeRecorder(writer, o, i, settings.epsilon) for i, o in enumerate(obs)]
        started = last = time.monotonic()
        done = 0
        while done < settings.episodes:
            for i, vector in enumerate(vectors):
                actions = policy.act(obs[i], settings.epsilon, rngs[i])
                out = vector.step(actions)
                done += recorders[i].add(
                    actions,
                    out.reward,
                    out.final_obs,
                    out.obs,
                    out.terminated,
                    out.truncated,
                    out.aborted,
                    policy.version,
                )
                obs[i] = out.obs
            if time.monotonic() - last >= settings.progress_every_s:
                last = time.monotonic()
                writer.flush()
                recent = [r for rec in recorders for r in rec.returns[-100:]]
                progress(
                    f"recorded {done:,}/{settings.episodes:,} episodes, {writer.steps:,} steps "
                    f"({writer.steps / max(last - started, 1e-9):,.0f} steps/s)"
                    + (f", mean return {np.mean(recent):.1f}" if recent else "")
                )
        writer.flush()
        return [r for rec in recorders for r in rec.returns]
    finally:
        for vector in vectors:
            vector.close()
