"""Environments: building one from an `EnvConfig`, and the vector of them an actor steps.

`make_env` knows any registered gymnasium id, Atari (ale-py's bundled ROMs, the standard DQN
preprocessing, channels last), MinAtar, qfleet/Android-v0 and MiniWoB (`miniwob/<task>-v1`, in
headless Chromium: actors/browser.py). `EnvVector` steps `num_envs` copies with same-step
auto-reset; an env that raises in `step` is rebuilt, its step reported as aborted, and counted.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from actors.config import ANDROID_ID, MINIWOB_PREFIX, AndroidConfig, EnvConfig
from actors.errors import EnvFailedError, UnsupportedEnvError
from actors.features import FeaturizedEnv, featurize
from actors.spec import spec_for_spaces
from actors.ui_actions import UIActionSpace
from learner import ActionSpace
from replay import Spec

log = logging.getLogger(__name__)


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4")


@contextlib.contextmanager
def _quiet_root_logger():
    # MinAtar logs warnings on the root logger about optional plotting packages at import.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _register(env_id: str) -> None:
    try:
        if env_id == ANDROID_ID:
            from actors.android import register

            register()
        elif env_id.startswith("MinAtar/"):
            with _quiet_root_logger():
                import minatar.gym
            if env_id not in gym.registry:
                minatar.gym.register_envs()
        elif is_atari(env_id):
            import ale_py

            gym.register_envs(ale_py)
    except ImportError as exc:
        raise UnsupportedEnvError(f"env.id={env_id!r}: its package is not installed ({exc})", env_id=env_id) from None


class _ChannelsLast(gym.ObservationWrapper):
    """[C, H, W] frame stacks -> [H, W, C], the layout of the Nature CNN torso, as C-contiguous
    arrays: a transposed view would make every later copy of the observation (n-step windows,
    insert messages) an element-by-element transpose, several times slower than one copy here."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(
            np.moveaxis(space.low, 0, -1), np.moveaxis(space.high, 0, -1), dtype=space.dtype
        )

    def observation(self, observation):
        return np.ascontiguousarray(np.moveaxis(np.asarray(observation), 0, -1))


def make_env(config: EnvConfig) -> gym.Env:
    """One environment as configured; with `env.features`, its observations are the frozen
    encoder's features (actors/features.py).

    Raises:
        UnsupportedEnvError: unknown id, a family whose package is missing, or an encoder that
            cannot be loaded or does not fit the env.
    """
    return featurize(_make_raw_env(config), config.features, config.id)


def _make_raw_env(config: EnvConfig) -> gym.Env:
    _register(config.id)
    kwargs = {} if config.max_episode_steps is None else {"max_episode_steps": config.max_episode_steps}
    if config.id == ANDROID_ID:  # AndroidSetupError (bad task file, ...) is an UnsupportedEnvError
        return gym.make(ANDROID_ID, config=config.android or AndroidConfig(), **kwargs)
    if config.id.startswith(MINIWOB_PREFIX):  # our adapter, not the miniwob package's Dict-space envs
        try:
            from actors.browser import make_browser_env
        except ImportError as exc:
            raise UnsupportedEnvError(f"env.id={config.id!r}: {exc} (install miniwob)", env_id=config.id) from None
        env = make_browser_env(config.id, config.browser)
        if config.max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, config.max_episode_steps)
        return env
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # e.g. "MinAtar/...-v0 is out of date"
            if is_atari(config.id):
                if config.id.startswith("ALE/"):
                    kwargs["frameskip"] = 1  # the preprocessing skips (and max-pools) frames itself
                env = gym.make(config.id, **kwargs)
                # Machado et al. (2018)'s v5 settings plus the DQN wrappers: 30 no-op starts, frame
                # skip 4 with max-pooling, 84x84 grayscale, then a frame stack.
                env = gym.wrappers.AtariPreprocessing(
                    env,
                    noop_max=30,
                    frame_skip=4,
                    screen_size=84,
                    terminal_on_life_loss=config.terminal_on_life_loss,
                    grayscale_obs=True,
                )
                env = _ChannelsLast(gym.wrappers.FrameStackObservation(env, config.frame_stack))
            else:
                env = gym.make(config.id, **kwargs)
    except (gym.error.Error, ModuleNotFoundError) as exc:  # the latter: an allowed "module:Env" is missing
        raise UnsupportedEnvError(f"env.id={config.id!r}: {exc}", env_id=config.id) from None
    return env


@dataclass(frozen=True)
class EnvSpaces:
    """What the rest of the system needs to know about an environment."""

    obs_shape: tuple[int, ...]
    action_space: ActionSpace
    spec: Spec
    """The replay spec of its n-step transitions."""


def describe_env(config: EnvConfig) -> EnvSpaces:
    """Builds the env once to read its spaces (and closes it).

    Raises:
        UnsupportedEnvError: unknown id, or spaces qfleet's learners do not handle.
    """
    env = make_env(config)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        ui_actions = getattr(env.unwrapped, "ui_actions", None)  # MiniWoB and Android envs have one
        layout = ui_actions.layout() if isinstance(ui_actions, UIActionSpace) else None
        screen = env.screen if isinstance(env, FeaturizedEnv) else None
    finally:
        env.close()
    spec = spec_for_spaces(config.id, obs_space, act_space)
    if isinstance(act_space, gym.spaces.Discrete):
        space = ActionSpace(num_actions=int(act_space.n), layout=layout, screen=screen)
    else:
        space = ActionSpace(low=tuple(map(float, act_space.low)), high=tuple(map(float, act_space.high)))
    return EnvSpaces(tuple(obs_space.shape), space, spec)


def transition_spec(config: EnvConfig | str) -> Spec:
    """The replay spec of an env's n-step transitions (an id means the default EnvConfig for it)."""
    return describe_env(EnvConfig(id=config) if isinstance(config, str) else config).spec


@dataclass
class Episode:
    """A finished episode of one env of the vector."""

    env: int
    episode_return: float
    length: int


@dataclass
class VectorStep:
    """What one step of every env produced."""

    obs: np.ndarray
    """The observations to act on next (the first one of a new episode where one ended)."""
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    aborted: np.ndarray
    """Envs that raised: their step did not happen, and they were rebuilt."""
    final_obs: np.ndarray
    """Each env's real next observation (before any reset); for aborted envs, the one before the step."""
    failed: list[int] = field(default_factory=list)
    """The aborted envs' indices (empty on almost every step, so callers can skip the mask)."""
    episodes: list[Episode] = field(default_factory=list)


class EnvVector:
    """`num_envs` environments stepped together, resetting each the step its episode ends.

    Args:
        config: the environment.
        seed: env i is seeded with seed + i at its first reset (and a fresh seed when rebuilt).
        max_rebuilds: consecutive failed rebuilds of one env before `EnvFailedError`.
    """

    def __init__(self, config: EnvConfig, seed: int, max_rebuilds: int = 5):
        self.config, self.max_rebuilds = config, max_rebuilds
        self.num_envs = config.num_envs
        self._seed = seed
        self._seeds_used = 0
        self.restarts = 0
        """Envs rebuilt after raising (in step or reset), over the vector's life."""
        self.envs: list[gym.Env] = [make_env(config) for _ in range(self.num_envs)]
        self._unseeded = set(range(self.num_envs))
        self._returns = [0.0] * self.num_envs
        self._lengths = [0] * self.num_envs
        self._obs: np.ndarray | None = None
        self.infos: list[dict] = [{} for _ in range(self.num_envs)]
        """Each env's info for the observation it acts on next (its reset's where an episode began):
        what a policy reading the page (actors/ui_behaviour.py) acts on."""
        self._none_aborted = np.zeros(self.num_envs, bool)
        self._none_aborted.flags.writeable = False  # shared by every step without a failure

    def _next_seed(self) -> int:
        self._seeds_used += 1
        return self._seed + self._seeds_used - 1

    def reset(self) -> np.ndarray:
        """Resets every env; returns the stacked first observations."""
        first = [self._reset(i) for i in range(self.num_envs)]
        self._obs = np.stack(first)
        self._returns = [0.0] * self.num_envs
        self._lengths = [0] * self.num_envs
        return self._obs

    def _reset(self, i: int) -> np.ndarray:
        """Resets env i, rebuilding it while it raises (up to max_rebuilds times)."""
        failures = 0
        while True:
            try:
                # A new env instance is seeded once; later resets continue its random stream.
                seed = self._next_seed() if i in self._unseeded else None
                obs, self.infos[i] = self.envs[i].reset(seed=seed)
                self._unseeded.discard(i)
                return np.asarray(obs)
            except UnsupportedEnvError as exc:  # a setup that cannot work (Android launch settings): no retry
                raise EnvFailedError(f"env {self.config.id!r} #{i}: {exc}", env_id=self.config.id, env_index=i) from exc
            except Exception as exc:  # an env is foreign code: any exception means "rebuild it"
                failures += 1
                if failures > self.max_rebuilds:
                    raise EnvFailedError(
                        f"env {self.config.id!r} #{i} raised in reset {failures} times in a row; last: "
                        f"{type(exc).__name__}: {exc}",
                        env_id=self.config.id,
                        env_index=i,
                    ) from exc
                self._rebuild(i, "reset", exc)

    def _rebuild(self, i: int, where: str, exc: Exception) -> None:
        self.restarts += 1
        log.warning(
            "env %r #%d raised in %s (%s: %s); rebuilding it", self.config.id, i, where, type(exc).__name__, exc
        )
        with contextlib.suppress(Exception):
            self.envs[i].close()
        self.envs[i] = make_env(self.config)
        self._unseeded.add(i)

    def step(self, actions: np.ndarray) -> VectorStep:
        """Steps every env with its action; ended episodes are reset in the same step."""
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        rewards, terminated, truncated = [0.0] * n, [False] * n, [False] * n
        next_obs = np.empty_like(self._obs)  # filled row by row (cheaper than np.stack)
        finals: list[tuple[int, np.ndarray]] = []  # (env, real next obs) where it is not next_obs
        failed: list[int] = []
        episodes: list[Episode] = []
        for i, env in enumerate(self.envs):
            try:
                obs, reward, term, trunc, info = env.step(actions[i])
            except Exception as exc:  # an env is foreign code: any exception means "rebuild it"
                failed.append(i)
                finals.append((i, self._obs[i]))
                self._rebuild(i, "step", exc)
                next_obs[i] = self._reset(i)
                self._returns[i], self._lengths[i] = 0.0, 0
                continue
            rewards[i], terminated[i], truncated[i] = reward, term, trunc
            if info and info.get("env_restarted"):  # the env relaunched its own simulator (Android)
                self.restarts += 1
                log.warning("env %r #%d: its simulator failed and is relaunched; episode truncated", self.config.id, i)
            self._returns[i] += reward
            self._lengths[i] += 1
            if term or trunc:
                finals.append((i, np.array(obs)))  # a copy: frame stacks reuse one buffer across reset
                episodes.append(Episode(i, float(self._returns[i]), self._lengths[i]))
                self._returns[i], self._lengths[i] = 0.0, 0
                next_obs[i] = self._reset(i)
            else:
                next_obs[i] = obs
                self.infos[i] = info
        final_obs = next_obs
        if finals:
            final_obs = next_obs.copy()
            for i, obs in finals:
                final_obs[i] = obs
        aborted = self._none_aborted
        if failed:
            aborted = np.zeros(n, bool)
            aborted[failed] = True
        self._obs = next_obs
        return VectorStep(
            next_obs, np.array(rewards), np.array(terminated), np.array(truncated), aborted, final_obs, failed, episodes
        )

    def close(self) -> None:
        for env in self.envs:
            with contextlib.suppress(Exception):
                env.close()
