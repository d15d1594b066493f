"""`DatasetWriter`: whole episodes into a new Minari dataset (arrow format), from any number of
actors.

Each episode is one Arrow IPC file and a JSON metadata file (policy version, epsilon, actor, return,
and the file's sha256), written as it arrives. The dataset's metadata.json is the commit point: it
is written (atomically) by `flush` once at least one episode is in, and a reader takes episodes
0..total_episodes-1 from it. So a recording that dies leaves either the episodes flushed before or,
killed before its first flush, no dataset at all (a folder without metadata.json, which the next
writer of that id clears); one closed with no episode removes its folder. (Minari's own
`update_episodes` rescans the whole folder per episode, quadratic in episodes; this writes the
same files directly.)
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import threading
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from system.datasets.errors import DatasetError
from system.datasets.layout import DATA_FORMAT, EPISODE_FILE, METADATA_FILE, episode_dir, write_json

EPISODE_KEYS = ("id", "total_steps", "sha256")
"""Episode metadata the writer sets itself (an episode's own metadata may not hold them)."""


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
    """[T] bool: True only at the last step of an episode cut short (time limit, env failure). Both
    flags on the last step (gymnasium's TimeLimit does that when the limit and the end coincide)
    is stored as terminated."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """JSON values kept with the episode (qfleet records policy_version, epsilon, actor_id, return)."""

    def __len__(self) -> int:
        return len(self.rewards)


def _column(values: np.ndarray, rows: int) -> pa.Array:
    """A column of `rows` rows: `values`, then zeros (Minari pads actions, rewards and flags to
    the T + 1 rows of the observations)."""
    if len(values) < rows:
        values = np.concatenate([values, np.zeros((rows - len(values), *values.shape[1:]), values.dtype)])
    if values.ndim == 1:
        return pa.array(values)
    flat = np.ascontiguousarray(values).reshape(rows, -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _shareable_spec(env_spec: gym.envs.registration.EnvSpec | None) -> str | None:
    """gymnasium's spec as JSON when it holds no keyword arguments, else None: kwargs can carry
    local paths (an Android SDK, an AVD) that a dataset shared elsewhere must not."""
    if env_spec is None or env_spec.kwargs:
        return None
    try:
        return env_spec.to_json()
    except (TypeError, ValueError):
        return None


def check_dataset_free(data: pathlib.Path, dataset_id: str) -> None:
    """That no dataset is at `data` (a folder left by a recording killed before its first commit is
    free: it holds only numbered episode folders and temporary files).

    Raises:
        DatasetError: a dataset is there, or the folder holds something else.
    """
    if (data / METADATA_FILE).exists():
        raise DatasetError(dataset_id, "dataset id", f"a dataset already exists at {data.parent}")
    if data.is_dir() and any(not _leftover(entry) for entry in data.iterdir()):
        raise DatasetError(dataset_id, "dataset id", f"{data} holds files that are not a dataset's; not writing there")
    if data.exists() and not data.is_dir():
        raise DatasetError(dataset_id, "dataset id", f"{data} is a file")


def _leftover(entry: pathlib.Path) -> bool:
    return (entry.is_dir() and entry.name.isdigit()) or entry.name.startswith(f".{METADATA_FILE}.tmp-")


class DatasetWriter:
    """Writes episodes into a new dataset folder; thread-safe, so many actors can share one.

    Args:
        data: the dataset's `data` folder (must not hold a dataset yet).
        dataset_id: Minari's id for it ([namespace/]name-vN).
        observation_space, action_space: the env's spaces (stored as Minari's JSON).
        env_spec: gymnasium's spec of the env (stored when it has no kwargs), or None.
        extra_metadata: more dataset metadata (JSON values), e.g. who recorded it and how; keys the
            writer sets (dataset_id, total_steps, the spaces, ...) are the writer's.

    Raises:
        DatasetError: a dataset already exists there, or the folder cannot be made.
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

        check_dataset_free(data, dataset_id)
        self.data, self.dataset_id = data, dataset_id
        self._created = [folder for folder in (data, *data.parents) if not folder.exists()]
        try:
            for entry in data.iterdir() if data.is_dir() else ():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            data.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(dataset_id, "datasets dir", f"cannot make {data}: {exc.strerror or exc}") from None
        self.obs_shape, self.obs_dtype = tuple(observation_space.shape), np.dtype(observation_space.dtype)
        self.action_shape, self.action_dtype = tuple(action_space.shape or ()), np.dtype(action_space.dtype)
        self.episodes = self.steps = 0
        self._lock = threading.Lock()
        spec_json = _shareable_spec(env_spec)
        self.metadata: dict[str, Any] = {
            **(extra_metadata or {}),
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
        }
        self._bytes = 0

    def _table(self, episode: Episode) -> pa.Table:
        """The episode as an Arrow table of T + 1 rows, after checking every column's shape."""
        steps = len(episode.rewards)
        expected = {
            "observations": ((steps + 1, *self.obs_shape), episode.observations),
            "actions": ((steps, *self.action_shape), episode.actions),
            "rewards": ((steps,), episode.rewards),
            "terminations": ((steps,), episode.terminations),
            "truncations": ((steps,), episode.truncations),
        }
        if steps < 1:
            raise ValueError("an episode needs T >= 1 steps")
        for name, (shape, values) in expected.items():
            if np.shape(values) != shape:
                raise ValueError(f"{name}: shape {np.shape(values)}, expected {shape} for an episode of {steps} steps")
        terminations = np.asarray(episode.terminations, bool)
        truncations = np.asarray(episode.truncations, bool) & ~terminations
        if (terminations[:-1] | truncations[:-1]).any():
            raise ValueError("terminations/truncations: an episode ends only at its last step")
        reserved = sorted(set(episode.metadata) & set(EPISODE_KEYS))
        if reserved:
            raise ValueError(f"episode metadata {reserved}: set by the writer")
        rows = steps + 1
        return pa.table(
            {
                "observations": _column(np.asarray(episode.observations, self.obs_dtype), rows),
                "actions": _column(np.asarray(episode.actions, self.action_dtype), rows),
                "rewards": _column(np.asarray(episode.rewards, np.float64), rows),
                "terminations": _column(terminations, rows),
                "truncations": _column(truncations, rows),
            }
        )

    def add(self, episode: Episode) -> int:
        """Writes one episode (not yet committed: see `flush`); returns its index.

        Raises:
            ValueError: an episode with no step, columns of other shapes than [T + 1] observations
                and [T] of the rest (as the spaces say), an ending flag before the last step, or
                metadata that sets `id`, `total_steps` or `sha256`, or is not JSON.
            DatasetError: the files could not be written.
        """
        table = self._table(episode)
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, table.schema) as stream:
            stream.write_table(table)
        content = sink.getvalue()
        metadata = {
            **episode.metadata,
            "total_steps": len(episode),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        try:  # refuses what is not JSON before anything is written
            text = json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"episode metadata is not JSON: {exc}") from None
        with self._lock:
            index = self.episodes
            folder = episode_dir(self.data, index)
            try:
                folder.mkdir(exist_ok=True)
                (folder / EPISODE_FILE).write_bytes(content)
                write_json(folder / METADATA_FILE, {"id": index, **json.loads(text)})
                self._bytes += sum(f.stat().st_size for f in folder.iterdir())
            except OSError as exc:
                raise DatasetError(self.dataset_id, f"episode {index}", f"cannot write {folder}: {exc}") from None
            self.episodes += 1
            self.steps += len(episode)
        return index

    def flush(self) -> None:
        """Commits the episodes added so far: rewrites metadata.json (atomically) with their count.
        Does nothing before the first episode (a dataset is never committed empty).

        Raises:
            DatasetError: metadata.json could not be written.
        """
        with self._lock:
            if self.episodes == 0:
                return
            self.metadata.update(
                total_episodes=self.episodes, total_steps=self.steps, dataset_size=round(self._bytes / 1e6, 1)
            )
            try:
                write_json(self.data / METADATA_FILE, self.metadata)
            except OSError as exc:
                raise DatasetError(self.dataset_id, "metadata.json", f"cannot write {self.data}: {exc}") from None

    def close(self) -> None:
        """Commits what was added; with no episode, removes the folders this writer made."""
        self.flush()
        with self._lock:
            if self.episodes == 0:
                shutil.rmtree(self.data, ignore_errors=True)
                for folder in self._created[1:]:
                    try:
                        folder.rmdir()  # only while empty: another dataset may share a namespace folder
                    except OSError:
                        break
