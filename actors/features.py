"""Observations as frozen-encoder features (Digi-Q's phase 2, docs/digiq.md).

`make_env` wraps an image env in `FeaturizedEnv` when `env.features.encoder` is not none: every
observation it returns (reset, step, the final one of an episode) is the frozen encoder's features
of the screenshot, followed by a fixed embedding of the instruction's tokens
(`info["instruction_tokens"]`, as MiniWoB and Android give them), float32 [D]. Features are thus
computed once, in the actor, and what reaches replay, datasets and the learner is that vector:
every loss trains small heads on it without touching pixels.

With `env.features.grid_rows/grid_cols`, the vector goes on with the screen grid: the encoder's
spatial feature map pooled to that many cells (`FrozenEncoder.encode_with_grid`), flattened row-major; the
wrapper's `screen` (a `learner.ScreenGrid`) says where it lies, and the learner's "spatial" critic
reads a tap's cell from it (learner/action_heads.py).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from actors.config import FeaturesConfig
from actors.errors import UnsupportedEnvError
from learner import EncoderError


class FeaturizedEnv(gym.Wrapper):
    """An image env whose observations are `encoder` features + the instruction embedding.

    Args:
        env: an env with a Box uint8 [H, W, C] observation space.
        encoder: a `learner.FrozenEncoder` (`encode` uint8 [B, H, W, C] -> float32 [B, D]).
        instruction_dim: length of the appended instruction embedding (0: none).
        env_id: for errors.
        grid: (rows, cols) of the screen grid appended last, or None.
    """

    def __init__(self, env: gym.Env, encoder, instruction_dim: int, env_id: str, grid: tuple[int, int] | None = None):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 3 or space.dtype != np.uint8:
            raise UnsupportedEnvError(
                f"env.features: {env_id!r} observes {space}, not uint8 HxWxC screens an encoder can read",
                env_id=env_id,
            )
        wanted = getattr(encoder, "input_shape", None)
        if wanted is not None and tuple(wanted) != tuple(space.shape):
            raise UnsupportedEnvError(
                f"env.features.path: {encoder.name} takes {'x'.join(map(str, wanted))} screens; "
                f"{env_id!r} gives {'x'.join(map(str, space.shape))} (train it on this env's observations)",
                env_id=env_id,
            )
        from learner import ScreenGrid

        self.encoder, self.instruction_dim = encoder, instruction_dim
        size = encoder.feature_dim + instruction_dim
        self.screen: ScreenGrid | None = None
        """Where the observation holds the screen grid (None without one)."""
        if grid is not None:
            if not encoder.map_channels:
                raise UnsupportedEnvError(
                    f"env.features.grid_rows: {encoder.name} has no spatial feature map for a screen grid",
                    env_id=env_id,
                )
            self.screen = ScreenGrid(size, grid[0], grid[1], encoder.map_channels)
            size += self.screen.size
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self._instruction = np.zeros(instruction_dim, np.float32)

    def features(self, frame: np.ndarray) -> np.ndarray:
        """[D] float32: one screenshot's features with the current instruction's embedding (and the
        screen grid, flattened, when configured)."""
        frames = np.asarray(frame)[None]
        if self.screen is None:
            return np.concatenate([self.encoder.encode(frames)[0], self._instruction]).astype(np.float32, copy=False)
        image, grid = self.encoder.encode_with_grid(frames, self.screen.rows, self.screen.cols)  # one conv pass
        return np.concatenate([image[0], self._instruction, grid[0].reshape(-1)]).astype(np.float32, copy=False)

    def _follow_instruction(self, info: dict | None) -> None:
        from learner import instruction_embedding

        tokens = (info or {}).get("instruction_tokens")
        if self.instruction_dim and tokens is not None:
            self._instruction = instruction_embedding(np.asarray(tokens)[None], self.instruction_dim)[0]

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._instruction = np.zeros(self.instruction_dim, np.float32)
        self._follow_instruction(info)
        return self.features(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._follow_instruction(info)
        return self.features(obs), reward, terminated, truncated, info


def featurize(env: gym.Env, config: FeaturesConfig, env_id: str) -> gym.Env:
    """`env` itself when `config.encoder` is none; else wrapped in `FeaturizedEnv` with the frozen
    encoder of `config` (loaded once per process and shared by its envs).

    Raises:
        UnsupportedEnvError: the encoder cannot be loaded (naming env.features.path and why), or
            does not fit the env's observations.
    """
    if config.encoder == "none":
        return env
    from learner import load_encoder

    try:
        encoder = load_encoder(config.encoder, config.path, config.layer)
    except EncoderError as exc:
        env.close()
        raise UnsupportedEnvError(f"env.features.path={config.path!r}: {exc.why}", env_id=env_id) from None
    try:
        grid = (config.grid_rows, config.grid_cols) if config.grid_rows else None
        return FeaturizedEnv(env, encoder, config.instruction_dim, env_id, grid)
    except UnsupportedEnvError:
        env.close()
        raise
