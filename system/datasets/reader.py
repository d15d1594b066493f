"""Reading a dataset whole, validated before anything of it is used.

`read_dataset` checks the metadata (`metadata.read_dataset_metadata`: counts and types; the format;
the spaces against the env's: observation shape and dtype, a Discrete action space of the env's n
starting at 0, or a Box of the env's shape; the screen grid a features dataset recorded against
the env's), then every episode: its file against the sha256 its
metadata holds (qfleet writes one; a Minari-made dataset has none, and then only Arrow's own
structure checks catch damage), its schema (no extension types, read before any data), its
columns (present, types, lengths, dtypes, no missing values) and values (no NaN or infinity in
observations, actions or rewards; discrete actions in [0, n), continuous ones within the env's
bounds; an episode ends only at its last step), its metadata (`read_episode_metadata`) and the
totals. Observations are not checked against the observation space's bounds. The first problem
raises `DatasetError` naming the dataset and the field; the caller gets the episodes only when all
of them passed, so a bad file never half-loads.
"""

from __future__ import annotations

import hashlib
import math
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from learner import ActionSpace, ScreenGrid
from replay import Spec
from system.datasets.errors import DatasetError
from system.datasets.layout import DATA_FORMAT, EPISODE_FILE, episode_dir
from system.datasets.metadata import read_dataset_metadata, read_episode_metadata

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


SCREEN_GRID_KEY = "screen_grid"
"""Key, in the dataset metadata's "qfleet" record, of the screen grid its features carry (absent: none,
or a dataset recorded before qfleet wrote it)."""


def screen_grid_record(screen: ScreenGrid | None) -> dict[str, int] | None:
    """The screen grid as the dataset's metadata records it: {rows, cols, channels}, or None."""
    return None if screen is None else {"rows": screen.rows, "cols": screen.cols, "channels": screen.channels}


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
        # A features vector's width is set by env.features: the likeliest cause of a mismatch.
        hint = (
            "; features datasets are read with the env.features they were recorded with "
            "(encoder, instruction_dim, grid_rows x grid_cols)"
            if len(obs_shape) == 1 and isinstance(observation_space, gym.spaces.Box)
            else ""
        )
        raise DatasetError(
            dataset,
            "observation_space",
            f"{observation_space} does not match the env's Box{obs_shape} {obs_dtype}{hint}",
        )
    if action.discrete:
        if (
            not isinstance(action_space, gym.spaces.Discrete)
            or int(action_space.n) != action.num_actions
            or int(action_space.start) != 0
        ):
            raise DatasetError(
                dataset, "action_space", f"{action_space} does not match the env's Discrete({action.num_actions})"
            )
    elif not isinstance(action_space, gym.spaces.Box) or tuple(action_space.shape) != (len(action.low),):
        raise DatasetError(dataset, "action_space", f"{action_space} does not match the env's Box({len(action.low)},)")


def check_screen_grid(metadata: dict, action: ActionSpace, dataset: str) -> None:
    """The screen grid the dataset recorded (metadata "qfleet" -> "screen_grid") against the env's
    (env.features.grid_rows x grid_cols): a 12 x 10 grid read as 10 x 12 has the same width, so the
    spaces alone would not tell them apart. Datasets that record none (recorded elsewhere, or before
    qfleet wrote it) are checked by their width only.

    Raises:
        DatasetError: naming `screen_grid`, both grids and the keys to set.
    """
    recorded_by = metadata.get("qfleet")
    if not isinstance(recorded_by, dict) or SCREEN_GRID_KEY not in recorded_by:
        return
    recorded, expected = recorded_by[SCREEN_GRID_KEY], screen_grid_record(action.screen)
    if recorded != expected:
        raise DatasetError(
            dataset,
            SCREEN_GRID_KEY,
            f"recorded with the screen grid {_grid(recorded)}, the env's is {_grid(expected)}: set "
            "env.features.grid_rows and grid_cols (and the encoder) as when it was recorded",
        )


def _grid(record: object) -> str:
    if isinstance(record, dict):
        return f"{record.get('rows')} x {record.get('cols')} cells of {record.get('channels')} channels"
    return "none" if record is None else repr(record)


def _is_extension(field: pa.Field) -> bool:
    """An extension type (registered: a `BaseExtensionType`; unregistered: its name in the field's
    metadata), here or in a nested field."""
    if isinstance(field.type, pa.BaseExtensionType) or b"ARROW:extension:name" in (field.metadata or {}):
        return True
    return any(_is_extension(field.type.field(i)) for i in range(field.type.num_fields))


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


def _read_table(path: pathlib.Path, where: str, sha256: str | None, dataset: str) -> pa.Table:
    """An episode file as a table: its bytes against `sha256`, its schema before its data."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(dataset, where, f"{path} is missing (metadata.json counts it)") from None
    except OSError as exc:
        raise DatasetError(dataset, where, f"{path} is unreadable ({exc})") from None
    if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
        raise DatasetError(dataset, where, f"{path} is corrupt (its sha256 differs from the one recorded with it)")
    try:
        reader = ipc.open_file(pa.py_buffer(content))
        for field in reader.schema:
            if _is_extension(field):
                raise DatasetError(
                    dataset, f"{where}: {field.name}", "Arrow extension types are refused (their readers are code)"
                )
        return reader.read_all()
    except pa.ArrowException as exc:
        raise DatasetError(dataset, where, f"{path} is truncated or corrupt ({exc})") from None


def _read_episode(
    path: pathlib.Path, episode: int, sha256: str | None, obs_shape, obs_dtype, action_shape, action_dtype, dataset: str
):
    where = f"episode {episode}"
    table = _read_table(path, where, sha256, dataset)
    missing = [name for name in COLUMNS if name not in table.column_names]
    if missing:
        raise DatasetError(dataset, f"{where}: {missing[0]}", "column missing")
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
    is taken as truncated: its last observation is real, so bootstrapping from it is sound. One
    whose last step is both (gymnasium's TimeLimit flags truncation on the very step that
    terminates) is taken as terminated: the state is terminal, there is nothing to bootstrap.

    Raises:
        DatasetError: the first problem found, naming the dataset and the field.
    """
    metadata = read_dataset_metadata(data, dataset)
    if metadata.get("data_format") != DATA_FORMAT:
        raise DatasetError(
            dataset, "data_format", f"{metadata.get('data_format')!r}; qfleet reads Minari's {DATA_FORMAT!r} datasets"
        )
    observation_space, action_space = parse_spaces(metadata, dataset)
    check_spaces(observation_space, action_space, spec, action, dataset)
    check_screen_grid(metadata, action, dataset)
    episodes, total_steps = metadata["total_episodes"], metadata["total_steps"]
    if episodes == 0:
        raise DatasetError(dataset, "total_episodes", "the dataset holds no episode")
    obs_shape, obs_dtype = spec["obs"]
    action_shape = () if action.discrete else (len(action.low),)
    action_dtype = np.dtype(np.int64) if action.discrete else np.dtype(np.float32)
    parts: list[tuple] = []
    episode_metadata = []
    for index in range(episodes):
        meta = read_episode_metadata(data, dataset, index)
        path = episode_dir(data, index) / EPISODE_FILE
        parts.append(
            _read_episode(path, index, meta.get("sha256"), obs_shape, obs_dtype, action_shape, action_dtype, dataset)
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
    truncations &= ~terminations
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
    else:
        low, high = np.asarray(action.low, np.float32), np.asarray(action.high, np.float32)
        bad = ((actions < low) | (actions > high)).any(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                dataset,
                f"episode {_first_episode(lengths, row)}: actions",
                f"{actions[row]} outside the env's bounds [{low}, {high}]",
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
