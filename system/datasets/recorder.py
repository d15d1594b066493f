"""Recording: the episodes actors' env vectors produce, written to a dataset as they end.

`EpisodeRecorder` sits beside an actor's step loop: it takes each vector step (the same arrays the
actor hands its n-step accumulator) and hands each finished episode to a `DatasetWriter`, with the
policy version that chose its first action, the actor's epsilon and the actor's id (and, where
asked, whether it succeeded and what its behaviour policy says of it). Any number of recorders can
share one writer (it is thread-safe and numbers episodes as they arrive). `record_episodes` runs
`VectorActions` (a network with epsilon-greedy exploration, `PolicyActions`, or a behaviour policy
that reads the page, actors/ui_behaviour.py) in `actors` env vectors until enough episodes are
recorded; it is what `qfleet record` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from system.datasets.writer import DatasetWriter, Episode

log = logging.getLogger(__name__)


class EpisodeRecorder:
    """Turns one actor's vector steps into whole episodes for a `DatasetWriter`.

    Args:
        writer: where finished episodes go.
        first_obs: the vector's first observations (from `EnvVector.reset`).
        actor_id: stamped on every episode's metadata.
        epsilon: stamped on every episode's metadata: one value, or env index -> its episode's
            epsilon (asked as the episode ends; a per-episode spread, `PolicyActions.epsilon_max`).
        mark_success: stamp `success` on every episode: it terminated on a positive reward (what
            a solved MiniWoB task gives, with either of env.browser.reward's settings).
        episode_metadata: env index -> more metadata for its episode as it ends (a behaviour
            policy's account of it); its keys cannot replace the recorder's own.
    """

    def __init__(
        self,
        writer: DatasetWriter,
        first_obs: np.ndarray,
        actor_id: int,
        epsilon: float | Callable[[int], float],
        mark_success: bool = False,
        episode_metadata: Callable[[int], dict[str, Any]] | None = None,
    ):
        self.writer, self.actor_id, self.epsilon = writer, actor_id, epsilon
        self.mark_success, self.episode_metadata = mark_success, episode_metadata
        self.num_envs = len(first_obs)
        self._obs: list[list[np.ndarray]] = [[np.array(o)] for o in first_obs]
        self._steps: list[list[tuple]] = [[] for _ in range(self.num_envs)]
        self._versions = [0] * self.num_envs
        self.episodes = 0
        self.returns: list[float] = []
        self.successes: list[bool] = []
        """Per finished episode, whether it succeeded (only with mark_success)."""

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
        metadata: dict[str, Any] = dict(self.episode_metadata(i)) if self.episode_metadata else {}
        if self.mark_success:
            success = bool(terms[-1]) and rewards[-1] > 0
            metadata["success"] = success
            self.successes.append(success)
        metadata.update(
            policy_version=int(self._versions[i]),
            epsilon=float(self.epsilon(i) if callable(self.epsilon) else self.epsilon),
            actor_id=int(self.actor_id),
            **{"return": episode_return},
        )
        self.writer.add(
            Episode(
                observations=np.stack(self._obs[i]),
                actions=np.asarray(actions),
                rewards=np.asarray(rewards, np.float64),
                terminations=np.asarray(terms, bool),
                truncations=np.asarray(truncs, bool),
                metadata=metadata,
            )
        )
        self.episodes += 1
        self.returns.append(episode_return)
        return 1


@dataclass(frozen=True)
class RecordSettings:
    """How `record_episodes` runs (the `qfleet record` options)."""

    episodes: int | None = None
    """Episodes to record (all actors together, per env); the last vector step's extra episodes are
    kept. At least one of episodes and steps."""
    steps: int | None = None
    """Stop once the finished episodes hold this many steps (env transitions; the last vector
    step's episodes are kept whole, episodes still running are dropped)."""
    behaviour: Literal["network", "instruction"] = "network"
    """What acts. network: the --policy run's newest checkpoint or --config's untrained network, with
    --epsilon exploration; instruction: a MiniWoB policy that follows the task's instruction with
    the page's own elements with probability --follow-p per step and acts uniformly at random
    otherwise (actors/ui_behaviour.py; miniwob/<task>-v1 envs)."""
    follow_p: float = 1.0
    """behaviour instruction: probability of following the instruction on a step (1: a scripted
    expert, 0: uniformly random); stored in the dataset's and each episode's metadata."""
    epsilon: float = 0.0
    """behaviour network: a random action with this probability, else the network's."""
    epsilon_max: float | None = None
    """behaviour network: each episode's epsilon drawn uniformly from [--epsilon, --epsilon-max] as
    it starts (a spread of quality from one policy), stamped in its metadata. Discrete actions."""
    num_actors: int = 1
    """Actors (env vectors of env.num_envs envs each, own seeds), stepped in turn in this process."""
    seed: int = 0
    """Seeds actor i's exploration or behaviour policy (seed + 1000 * i), its envs (seed * 10000 +
    1000 * i) and an untrained network's weights."""
    progress_every_s: float = 10.0
    """Seconds between progress lines; the dataset is committed at each."""

    def done(self, episodes: int, steps: int) -> bool:
        """Whether a recording that has `episodes` episodes of `steps` steps is complete."""
        return (self.episodes is not None and episodes >= self.episodes) or (
            self.steps is not None and steps >= self.steps
        )

    def __post_init__(self) -> None:
        if self.episodes is None and self.steps is None:
            raise ValueError("episodes=None: give --episodes or --steps")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes={self.episodes}: must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps}: must be >= 1")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon={self.epsilon}: must be in [0, 1]")
        if not 0.0 <= self.follow_p <= 1.0:
            raise ValueError(f"follow_p={self.follow_p}: must be in [0, 1]")
        if self.behaviour == "instruction" and self.epsilon != 0.0:
            raise ValueError(
                f"epsilon={self.epsilon}: behaviour instruction acts at random with probability 1 - follow_p; "
                "set --follow-p instead"
            )
        if self.epsilon_max is not None and not self.epsilon <= self.epsilon_max <= 1.0:
            raise ValueError(f"epsilon_max={self.epsilon_max}: must be in [epsilon, 1] (epsilon={self.epsilon})")
        if self.behaviour == "instruction" and self.epsilon_max is not None:
            raise ValueError(f"epsilon_max={self.epsilon_max}: only with --behaviour network")
        if self.behaviour == "network" and self.follow_p != 1.0:
            raise ValueError(f"follow_p={self.follow_p}: only with --behaviour instruction")
        if self.num_actors < 1:
            raise ValueError(f"num_actors={self.num_actors}: must be >= 1")


class VectorActions(Protocol):
    """What chooses one env vector's actions in a recording (one per actor)."""

    version: int
    """The policy version stamped on the episodes it starts."""

    @property
    def epsilon(self) -> float:
        """Its probability of a random action on a step, stamped on every episode."""
        ...

    def act(self, obs: np.ndarray, infos: Sequence[dict[str, Any]], starts: np.ndarray) -> np.ndarray:
        """Every env's action, from its observation and info (`EnvVector.infos`); `starts` marks
        the envs whose observation begins an episode."""
        ...

    def episode_metadata(self, env: int) -> dict[str, Any]:
        """More metadata for env `env`'s episode, asked as it ends ({} for none)."""
        ...


@dataclass
class PolicyActions:
    """A network (`learner.Policy`) with epsilon-greedy exploration, as `VectorActions`.

    With `epsilon_max`, each env's episode draws its own epsilon uniformly from [epsilon,
    epsilon_max] as it starts (discrete actions): one policy then records episodes of every
    quality from near-greedy to near-random, which is what lets an offline learner tell good
    actions from bad ones. `episode_epsilon(env)` is the epsilon of env's current episode.
    """

    policy: Any
    epsilon: float
    rng: np.random.Generator
    epsilon_max: float | None = None
    _episode: np.ndarray | None = None

    @property
    def version(self) -> int:
        return int(self.policy.version)

    def episode_epsilon(self, env: int) -> float:
        """The epsilon env `env`'s current episode acts with."""
        return self.epsilon if self._episode is None else float(self._episode[env])

    def act(self, obs: np.ndarray, infos: Sequence[dict[str, Any]], starts: np.ndarray) -> np.ndarray:
        if self.epsilon_max is None:
            return self.policy.act(obs, self.epsilon, self.rng)
        if self._episode is None:
            self._episode = np.full(len(obs), self.epsilon)
        starts = np.asarray(starts, bool)
        self._episode[starts] = self.rng.uniform(self.epsilon, self.epsilon_max, np.count_nonzero(starts))
        actions = self.policy.act(obs, 0.0, self.rng)
        explore = self.rng.random(len(actions)) < self._episode
        actions[explore] = self.rng.integers(0, self.policy.space.num_actions, np.count_nonzero(explore))
        return actions

    def episode_metadata(self, env: int) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Recorded:
    """What `record_episodes` recorded."""

    returns: list[float]
    """Each episode's undiscounted return, actor by actor."""
    successes: list[bool]
    """Each episode's success (empty unless mark_success)."""


def record_episodes(
    writer: DatasetWriter,
    make_vector: Callable[[int, int], Any],
    make_actions: Callable[[int, Any], VectorActions],
    settings: RecordSettings,
    progress: Callable[[str], None] = print,
    mark_success: bool = False,
) -> Recorded:
    """Steps `settings.num_actors` env vectors, each with its own `VectorActions`, until
    `settings.episodes` episodes are written. The writer is flushed (committed) at every progress
    line and at the end, so an interrupted recording keeps what it flushed.

    Args:
        make_vector: (actor index, env seed) -> an `actors.EnvVector` (reset here); actor i's
            seed is `settings.seed * 10000 + 1000 * i`.
        make_actions: (actor index, its vector) -> what chooses that vector's actions
            (`PolicyActions` for a network, seeded `settings.seed + 1000 * i`).
        mark_success: stamp each episode's `success` (`EpisodeRecorder`).
    """
    vectors = [make_vector(i, settings.seed * 10_000 + 1000 * i) for i in range(settings.num_actors)]
    try:
        choosers = [make_actions(i, vector) for i, vector in enumerate(vectors)]
        obs = [vector.reset() for vector in vectors]
        starts = [np.ones(vector.num_envs, bool) for vector in vectors]
        recorders = [
            EpisodeRecorder(writer, o, i, _epsilon_of(chooser), mark_success, chooser.episode_metadata)
            for i, (o, chooser) in enumerate(zip(obs, choosers, strict=True))
        ]
        started = last = time.monotonic()
        done = 0
        while not settings.done(done, writer.steps):
            for i, vector in enumerate(vectors):
                actions = choosers[i].act(obs[i], vector.infos, starts[i])
                out = vector.step(actions)
                done += recorders[i].add(
                    actions,
                    out.reward,
                    out.final_obs,
                    out.obs,
                    out.terminated,
                    out.truncated,
                    out.aborted,
                    choosers[i].version,
                )
                obs[i] = out.obs
                starts[i] = out.terminated | out.truncated | out.aborted
            if time.monotonic() - last >= settings.progress_every_s:
                last = time.monotonic()
                writer.flush()
                recent = [r for rec in recorders for r in rec.returns[-100:]]
                successes = [s for rec in recorders for s in rec.successes]
                progress(
                    f"recorded {done:,}{'' if settings.episodes is None else f'/{settings.episodes:,}'} episodes, "
                    f"{writer.steps:,}{'' if settings.steps is None else f'/{settings.steps:,}'} steps "
                    f"({writer.steps / max(last - started, 1e-9):,.0f} steps/s)"
                    + (f", mean return {np.mean(recent):.1f}" if recent else "")
                    + (f", success {np.mean(successes):.2f}" if successes else "")
                )
        writer.flush()
        return Recorded([r for rec in recorders for r in rec.returns], [s for rec in recorders for s in rec.successes])
    finally:
        for vector in vectors:
            vector.close()


def _epsilon_of(chooser: VectorActions) -> float | Callable[[int], float]:
    """What a recorder stamps as each episode's epsilon: per episode for a spread."""
    if isinstance(chooser, PolicyActions) and chooser.epsilon_max is not None:
        return chooser.episode_epsilon
    return chooser.epsilon
