"""Reading a dataset whole, validated before anything of it is used.

`read_dataset` checks the metadata (format, spaces against the env), then every episode file
(Arrow IPC: a truncated or corrupt file fails to open), its columns (types, lengths, dtypes), its
values (no NaN or infinity, actions in range, episode ends only at the last step) and the totals.
The first problem raises `DatasetError` naming the dataset and the field; the caller gets the
episodes only when all of them passed, so a bad file never half-loads.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from learner import ActionSpace
from replay import Spec
from system.datasets.errors import DatasetError
from system.datasets.layout import DATA_FORMAT, EPISODE_FILE, METADATA_FILE, episode_dir, read_json, read_metadata

COLUMNS = ("observations", "actions", "rewards", "terminations", "truncations")
"""The columns of an episode file qfleet reads (others, e.g. Minari's `infos`, are not read)."""


@dataclass(frozen=True)
class Episodes:
    """A dataset's episodes, concatenated column by column.

    Episode e has steps `starts[e] : starts[e] + lengths[e]` of `actions`, `rewards`,
    `terminations`, `truncations`, and observations `starts[e] + e : starts[e] + e + lengths[e] + 1`
    (each episode keeps its T + 1 observations).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    lengths: np.ndarray
    """[episodes] steps per episode."""
    metadata: list[dict[str, Any]]
    """Each episode's metadata.json (qfleet's: policy_version, epsilon, actor_id, return)."""
    dataset_metadata: dict[str, Any]

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode."""
        return np.add.reduceat(self.rewards, self.starts) if len(self.lengths) else np.zeros(0)


def parse_spaces(metadata: dict[str, Any], dataset: str):
    """The dataset's (observation_space, action_space) from Minari's JSON, never from its env_spec.

    Raises:
        DatasetError: a space missing or not parseable.
    """
    from minari.serialization import deserialize_space

    spaces = []
    for key in ("observation_space", "action_space"):
        if not isinstance(metadata.get(key), str):
            raise DatasetError(
                dataset, key, "missing from metadata.json (qfleet does not build the env from env_spec to find it)"
            )
        try:
            spaces.append(deserialize_space(metadata[key]))
        except Exception as exc:  # malformed JSON of any shape: KeyError, AssertionError, ValueError...
            raise DatasetError(dataset, key, f"not a valid Minari space ({type(exc).__name__}: {exc})") from None
    return spaces[0], spaces[1]


def check_spaces(observation_space, action_space, spec: Spec, action: ActionSpace, dataset: str) -> None:
    """The dataset's spaces against the env's (its transition spec and action space).

    Raises:
        DatasetError: naming `observation_space` or `action_space` and both sides.
    """
    import gymnasium as gym

    obs_shape, obs_dtype = spec["obs"]
    if not isinstance(observation_space, gym.spaces.Box) or (
        tuple(observation_space.shape),
        np.dtype(observation_space.dtype),
    ) != (obs_shape, obs_dtype):
        raise DatasetError(
            dataset, "observation_space", f"{observation_space} does not match the env's Box{obs_shape} {obs_dtype}"
        )
    if action.discrete:
        if not isinstance(action_space, gym.spaces.Discrete) or int(action_space.n) != action.num_actions:
            raise DatasetError(
                dataset, "action_space", f"{action_space} does not match the env's Discrete({action.num_actions})"
            )
    elif not isinstance(action_space, gym.spaces.Box) or tuple(action_space.shape) != (len(action.low),):
        raise DatasetError(dataset, "action_space", f"{action_space} does not match the env's Box({len(action.low)},)")


def _count(metadata: dict[str, Any], key: str, dataset: str) -> int:
    value = metadata.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DatasetError(dataset, key, f"{value!r} in metadata.json, expected a count >= 0")
    return value


def _has_extension_type(data_type: pa.DataType) -> bool:
    if isinstance(data_type, pa.ExtensionType):
        return True
    return any(_has_extension_type(data_type.field(i).type) for i in range(data_type.num_fields))


def _numpy(column: pa.ChunkedArray, shape: tuple[int, ...], dtype: np.dtype, field: str, dataset: str) -> np.ndarray:
    """A column as [rows, *shape] of `dtype`, or DatasetError for another layout."""
    array = column.combine_chunks()
    if shape:
        size = math.prod(shape)
        if not pa.types.is_fixed_size_list(array.type) or array.type.list_size != size:
            raise DatasetError(dataset, field, f"column type {array.type}, expected fixed_size_list[{size}] of {dtype}")
        if array.null_count:
            raise DatasetError(dataset, field, f"{array.null_count} missing values")
        values = array.flatten()
    else:
        values = array
    if values.null_count:
        raise DatasetError(dataset, field, f"{values.null_count} missing values")
    try:
        out = values.to_numpy(zero_copy_only=False)
    except (pa.ArrowException, TypeError) as exc:
        raise DatasetError(dataset, field, f"column type {values.type} cannot be read as {dtype}: {exc}") from None
    # Observations must be stored as the env's dtype; actions and rewards may be any width of their kind.
    same_kind = out.dtype.kind == dtype.kind or {out.dtype.kind, dtype.kind} <= {"i", "u"}
    if out.dtype != dtype and (field.endswith("observations") or not same_kind):
        raise DatasetError(dataset, field, f"dtype {out.dtype}, expected {dtype}")
    return out.astype(dtype, copy=False).reshape(len(array), *shape)


def _read_episode(path: pathlib.Path, episode: int, obs_shape, obs_dtype, action_shape, action_dtype, dataset: str):
    where = f"episode {episode}"
    try:
        with pa.memory_map(str(path)) as source:
            table = ipc.open_file(source).read_all()
    except FileNotFoundError:
        raise DatasetError(dataset, where, f"{path} is missing (metadata.json counts it)") from None
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(dataset, where, f"{path} is truncated or corrupt ({exc})") from None
    missing = [name for name in COLUMNS if name not in table.column_names]
    if missing:
        raise DatasetError(dataset, f"{where}: {missing[0]}", "column missing")
    for name in table.column_names:
        if _has_extension_type(table.schema.field(name).type):
            raise DatasetError(dataset, f"{where}: {name}", "Arrow extension types are refused (they may unpickle)")
    rows = table.num_rows
    if rows < 2:
        raise DatasetError(dataset, where, f"empty episode ({max(rows - 1, 0)} steps)")
    steps = rows - 1
    observations = _numpy(table["observations"], obs_shape, obs_dtype, f"{where}: observations", dataset)
    actions = _numpy(table["actions"], action_shape, action_dtype, f"{where}: actions", dataset)[:steps]
    rewards = _numpy(table["rewards"], (), np.dtype(np.float64), f"{where}: rewards", dataset)[:steps]
    flags = []
    for name in ("terminations", "truncations"):
        column = table[name]
        if not pa.types.is_boolean(column.type):
            raise DatasetError(dataset, f"{where}: {name}", f"column type {column.type}, expected bool")
        flags.append(_numpy(column, (), np.dtype(bool), f"{where}: {name}", dataset)[:steps])
    return observations, actions, rewards, flags[0], flags[1]


def read_dataset(data: pathlib.Path, dataset: str, spec: Spec, action: ActionSpace) -> Episodes:
    """Every episode of the dataset at `data`, validated against the env (see the module doc).

    An episode whose last step is neither terminated nor truncated (a recording cut mid-episode)
    is taken as truncated: its last observation is real, so bootstrapping from it is sound.

    Raises:
        DatasetError: the first problem found, naming the dataset and the field.
    """
    metadata = read_metadata(data, dataset)
    if metadata.get("data_format") != DATA_FORMAT:
        raise DatasetError(
            dataset, "data_format", f"{metadata.get('data_format')!r}; qfleet reads Minari's {DATA_FORMAT!r} datasets"
        )
    observation_space, action_space = parse_spaces(metadata, dataset)
    check_spaces(observation_space, action_space, spec, action, dataset)
    episodes, total_steps = _count(metadata, "total_episodes", dataset), _count(metadata, "total_steps", dataset)
    if episodes == 0:
        raise DatasetError(dataset, "total_episodes", "the dataset holds no episode")
    obs_shape, obs_dtype = spec["obs"]
    action_shape = () if action.discrete else (len(action.low),)
    action_dtype = np.dtype(np.int64) if action.discrete else np.dtype(np.float32)
    parts: list[tuple] = []
    episode_metadata = []
    for index in range(episodes):
        folder = episode_dir(data, index)
        parts.append(
            _read_episode(folder / EPISODE_FILE, index, obs_shape, obs_dtype, action_shape, action_dtype, dataset)
        )
        meta = (
            read_json(folder / METADATA_FILE, dataset, f"episode {index}: metadata.json")
            if (folder / METADATA_FILE).exists()
            else {}
        )
        episode_metadata.append(meta)
    observations, actions, rewards, terminations, truncations = (np.concatenate(c) for c in zip(*parts, strict=True))
    lengths = np.array([len(p[2]) for p in parts], np.int64)
    if int(lengths.sum()) != total_steps:
        raise DatasetError(
            dataset, "total_steps", f"{total_steps} in metadata.json, the episodes hold {int(lengths.sum())}"
        )
    for index, (meta, length) in enumerate(zip(episode_metadata, lengths, strict=True)):
        if "total_steps" in meta and meta["total_steps"] != int(length):
            raise DatasetError(
                dataset, f"episode {index}: total_steps", f"{meta['total_steps']}, the file holds {length}"
            )
    _check_values(dataset, observations, actions, rewards, terminations, truncations, lengths, action)
    ends = np.cumsum(lengths) - 1
    unended = ~(terminations[ends] | truncations[ends])
    truncations[ends[unended]] = True
    return Episodes(observations, actions, rewards, terminations, truncations, lengths, episode_metadata, metadata)


def _first_episode(lengths: np.ndarray, step: int) -> int:
    return int(np.searchsorted(np.cumsum(lengths), step, side="right"))


def _check_values(dataset, observations, actions, rewards, terminations, truncations, lengths, action) -> None:
    obs_lengths = lengths + 1
    for name, values, per_episode in (
        ("observations", observations, obs_lengths),
        ("rewards", rewards, lengths),
        ("actions", actions, lengths),
    ):
        if values.dtype.kind == "f":
            finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
            if not finite.all():
                row = int(np.flatnonzero(~finite)[0])
                raise DatasetError(
                    dataset, f"episode {_first_episode(per_episode, row)}: {name}", "NaN or infinite value"
                )
    if action.discrete:
        bad = (actions < 0) | (actions >= action.num_actions)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                dataset,
                f"episode {_first_episode(lengths, row)}: actions",
                f"{actions[row]} outside [0, {action.num_actions})",
            )
    if (terminations & truncations).any():
        row = int(np.flatnonzero(terminations & truncations)[0])
        raise DatasetError(
            dataset, f"episode {_first_episode(lengths, row)}: terminations", "terminated and truncated at once"
        )
    last = np.zeros(len(rewards), bool)
    last[np.cumsum(lengths) - 1] = True
    early = (terminations | truncations) & ~last
    if early.any():
        row = int(np.flatnonzero(early)[0])
        field = "terminations" if terminations[row] else "truncations"
        raise DatasetError(
            dataset, f"episode {_first_episode(lengths, row)}: {field}", "episode ends before its last step"
        )
