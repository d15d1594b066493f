"""`DatasetWriter`: whole episodes into a new Minari dataset (arrow format), from any number of
actors.

Each episode is one Arrow IPC file and a JSON metadata file (policy version, epsilon, actor, return),
written as it arrives; the dataset's metadata.json is rewritten atomically after every `flush`
and is the commit point: a reader takes episodes 0..total_episodes-1 from it, so a recording that
dies leaves a dataset of the episodes flushed before, never a half one. (Minari's own
`update_episodes` rescans the whole folder per episode, quadratic in episodes; this writes the
same files directly.)
"""

from __future__ import annotations

import pathlib
import threading
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from system.datasets.errors import DatasetError
from system.datasets.layout import DATA_FORMAT, EPISODE_FILE, METADATA_FILE, episode_dir, write_json


@dataclass
class Episode:
    """One whole episode of T steps, as Minari stores it."""

    observations: np.ndarray
    """[T + 1, *obs_shape]: the first observation, then each step's next one (the last is final)."""
    actions: np.ndarray
    """[T] (discrete) or [T, *action_shape]."""
    rewards: np.ndarray
    """[T]."""
    terminations: np.ndarray
    """[T] bool: True only at the last step of an episode that reached a terminal state."""
    truncations: np.ndarray
    """[T] bool: True only at the last step of an episode cut short (time limit, env failure)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """JSON values kept with the episode (qfleet records policy_version, epsilon, actor_id)."""

    def __len__(self) -> int:
        return len(self.rewards)


def _column(values: np.ndarray, rows: int) -> pa.Array:
    """A column of `rows` rows (zero-padded below `values`, as Minari pads actions and rewards)."""
    values = np.asarray(values)
    if len(values) < rows:
        values = np.concatenate([values, np.zeros((rows - len(values), *values.shape[1:]), values.dtype)])
    if values.ndim == 1:
        return pa.array(values)
    flat = np.ascontiguousarray(values).reshape(rows, -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


class DatasetWriter:
    """Writes episodes into a new dataset folder; thread-safe, so many actors can share one.

    Args:
        data: the dataset's `data` folder (must not hold a dataset yet).
        dataset_id: Minari's id for it ([namespace/]name-vN).
        observation_space, action_space: the env's spaces (stored as Minari's JSON).
        env_spec: gymnasium's spec of the env (JSON, informative), or None.
        extra_metadata: more dataset metadata (JSON values), e.g. who recorded it and how.

    Raises:
        DatasetError: a dataset already exists there.
    """

    def __init__(
        self,
        data: pathlib.Path,
        dataset_id: str,
        observation_space: gym.spaces.Box,
        action_space: gym.Space,
        env_spec: gym.envs.registration.EnvSpec | None = None,
        extra_metadata: dict[str, Any] | None = None,
    ):
        from minari import __version__ as minari_version
        from minari.serialization import serialize_space

        if (data / METADATA_FILE).exists():
            raise DatasetError(dataset_id, "dataset id", f"a dataset already exists at {data.parent}")
        data.mkdir(parents=True, exist_ok=True)
        self.data, self.dataset_id = data, dataset_id
        self.obs_dtype = np.dtype(observation_space.dtype)
        self.action_dtype = np.dtype(action_space.dtype)
        self.episodes = self.steps = 0
        self._lock = threading.Lock()
        spec_json = None
        if env_spec is not None:
            try:
                spec_json = env_spec.to_json()
            except (TypeError, ValueError):
                spec_json = None  # kwargs that are not JSON: the spaces still describe the data
        self.metadata: dict[str, Any] = {
            "dataset_id": dataset_id,
            "total_episodes": 0,
            "total_steps": 0,
            "data_format": DATA_FORMAT,
            "jpeg_encoding": False,  # pixels stay exact (Minari's default JPEG-encodes large uint8 frames)
            "observation_space": serialize_space(observation_space),
            "action_space": serialize_space(action_space),
            "minari_version": minari_version,
            "dataset_size": 0.0,
            **({"env_spec": spec_json} if spec_json else {}),
            **(extra_metadata or {}),
        }
        self._bytes = 0
        self.flush()

    def add(self, episode: Episode) -> int:
        """Writes one episode (not yet committed: see `flush`); returns its index.

        Raises:
            ValueError: an episode with no step, or columns of inconsistent lengths.
        """
        steps = len(episode.rewards)
        if steps < 1 or len(episode.observations) != steps + 1:
            raise ValueError(
                f"an episode needs T >= 1 steps and T + 1 observations; got {steps}, {len(episode.observations)}"
            )
        rows = steps + 1
        table = pa.table(
            {
                "observations": _column(np.asarray(episode.observations, self.obs_dtype), rows),
                "actions": _column(np.asarray(episode.actions, self.action_dtype), rows),
                "rewards": _column(np.asarray(episode.rewards, np.float64), rows),
                "terminations": _column(np.asarray(episode.terminations, bool), rows),
                "truncations": _column(np.asarray(episode.truncations, bool), rows),
            }
        )
        with self._lock:
            index = self.episodes
            folder = episode_dir(self.data, index)
            folder.mkdir(exist_ok=True)
            with ipc.new_file(folder / EPISODE_FILE, table.schema) as sink:
                sink.write_table(table)
            metadata = {"id": index, "total_steps": steps, **episode.metadata}
            write_json(folder / METADATA_FILE, metadata)
            self._bytes += sum(f.stat().st_size for f in folder.iterdir())
            self.episodes += 1
            self.steps += steps
        return index

    def flush(self) -> None:
        """Commits the episodes added so far: rewrites metadata.json (atomically) with their count."""
        with self._lock:
            self.metadata.update(
                total_episodes=self.episodes, total_steps=self.steps, dataset_size=round(self._bytes / 1e6, 1)
            )
            write_json(self.data / METADATA_FILE, self.metadata)

    def close(self) -> None:
        self.flush()
