"""What `qfleet dataset info` and `list` show: `dataset_info` (a dataset's metadata, its episodes'
metadata and reward columns, without validating it against an env) and `dataset_listing` (every
dataset of a folder from its top-level metadata.json only; an unreadable one says why)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from system.datasets.errors import DatasetError
from system.datasets.layout import EPISODE_FILE, data_path, episode_dir, list_datasets
from system.datasets.metadata import dataset_env_id, read_dataset_metadata, read_episode_metadata


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's summary."""

    dataset: str
    path: str
    episodes: int
    steps: int
    data_format: str
    observation_space: str
    action_space: str
    env_id: str | None
    returns: dict[str, float]
    """mean, std, min, max of the episodes' undiscounted returns (empty when returns=False)."""
    recorded_by: dict[str, Any]
    """qfleet's recording metadata (command, env id, policy checkpoint, epsilon, actors), if qfleet
    recorded it."""
    policy_versions: tuple[int, int] | None
    """Smallest and largest policy_version of the episodes (None: not recorded)."""
    epsilons: list[float]
    """The distinct epsilons the episodes were recorded with."""
    successes: tuple[int, int] | None
    """(episodes that succeeded, episodes that say) where episodes carry `success` (MiniWoB), else None."""
    size_mb: float


def _episode_return(path, dataset: str, episode: int) -> float:
    try:
        with pa.memory_map(str(path)) as source:
            rewards = ipc.open_file(source).read_all()["rewards"].to_numpy()
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise DatasetError(dataset, f"episode {episode}", f"{path}: {exc}") from None
    return float(rewards[:-1].sum())  # Minari pads the last row


def dataset_info(dataset: str, root: str | os.PathLike | None = None, returns: bool = True) -> DatasetInfo:
    """Summary of a dataset by id (under `root`) or folder (absolute, or starting with ./).

    Raises:
        DatasetError: no dataset there, malformed metadata (naming the key), or unreadable
            episode files.
    """
    data = data_path(dataset, root)
    metadata = read_dataset_metadata(data, dataset)
    episodes = metadata["total_episodes"]
    episode_returns, versions, epsilons, successes = [], [], set(), []
    for index in range(episodes):
        meta = read_episode_metadata(data, dataset, index)
        if "policy_version" in meta:
            versions.append(meta["policy_version"])
        if "epsilon" in meta:
            epsilons.add(float(meta["epsilon"]))
        if "success" in meta:
            successes.append(meta["success"])
        if returns:
            episode_returns.append(
                float(meta["return"])
                if "return" in meta
                else _episode_return(episode_dir(data, index) / EPISODE_FILE, dataset, index)
            )
    summary = {}
    if episode_returns:
        values = np.asarray(episode_returns)
        summary = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return DatasetInfo(
        dataset=dataset,
        path=str(data.parent),
        episodes=episodes,
        steps=metadata["total_steps"],
        data_format=str(metadata.get("data_format")),
        observation_space=str(metadata.get("observation_space")),
        action_space=str(metadata.get("action_space")),
        env_id=dataset_env_id(metadata),
        returns=summary,
        recorded_by=metadata.get("qfleet", {}),
        policy_versions=(min(versions), max(versions)) if versions else None,
        epsilons=sorted(epsilons),
        successes=(sum(successes), len(successes)) if successes else None,
        size_mb=float(metadata.get("dataset_size", 0.0)),
    )


@dataclass(frozen=True)
class ListedDataset:
    """One line of `qfleet dataset list`."""

    dataset: str
    episodes: int
    steps: int
    env_id: str | None
    unreadable: str | None
    """Why its metadata.json could not be read (then the counts are 0), or None."""


def dataset_listing(root: str | os.PathLike | None = None) -> list[ListedDataset]:
    """Every dataset under the datasets folder, from its top-level metadata.json only (fast for
    datasets of many episodes); a malformed one is listed with the reason instead of failing."""
    listed = []
    for dataset_id, data in list_datasets(root):
        try:
            metadata = read_dataset_metadata(data, dataset_id)
        except DatasetError as exc:
            listed.append(ListedDataset(dataset_id, 0, 0, None, f"{exc.field}: {exc.reason}"))
            continue
        listed.append(
            ListedDataset(
                dataset_id, metadata["total_episodes"], metadata["total_steps"], dataset_env_id(metadata), None
            )
        )
    return listed
