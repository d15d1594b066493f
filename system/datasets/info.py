"""`dataset_info`: what `qfleet dataset info` and `list` show about a dataset (from its metadata and
reward columns, without validating it against an env)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from system.datasets.errors import DatasetError
from system.datasets.layout import EPISODE_FILE, METADATA_FILE, data_path, episode_dir, read_json, read_metadata


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
    """qfleet's recording metadata (command, policy, epsilon, actors), if qfleet recorded it."""
    policy_versions: tuple[int, int] | None
    """Smallest and largest policy_version of the episodes (None: not recorded)."""
    epsilons: list[float]
    """The distinct epsilons the episodes were recorded with."""
    size_mb: float


def _episode_return(path, dataset: str, episode: int) -> float:
    try:
        with pa.memory_map(str(path)) as source:
            rewards = ipc.open_file(source).read_all()["rewards"].to_numpy()
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise DatasetError(dataset, f"episode {episode}", f"{path}: {exc}") from None
    return float(rewards[:-1].sum())  # Minari pads the last row


def dataset_info(dataset: str, root: str | os.PathLike | None = None, returns: bool = True) -> DatasetInfo:
    """Summary of a dataset by id (under `root`) or folder.

    Raises:
        DatasetError: no dataset there, or unreadable metadata or episode files.
    """
    data = data_path(dataset, root)
    metadata = read_metadata(data, dataset)
    episodes = int(metadata.get("total_episodes", 0))
    episode_returns, versions, epsilons = [], [], set()
    for index in range(episodes):
        folder = episode_dir(data, index)
        meta = (
            read_json(folder / METADATA_FILE, dataset, f"episode {index}: metadata.json")
            if (folder / METADATA_FILE).exists()
            else {}
        )
        if "policy_version" in meta:
            versions.append(int(meta["policy_version"]))
        if "epsilon" in meta:
            epsilons.add(float(meta["epsilon"]))
        if returns:
            episode_returns.append(
                float(meta["return"]) if "return" in meta else _episode_return(folder / EPISODE_FILE, dataset, index)
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
    env_id = metadata.get("qfleet", {}).get("env", {}).get("id") if isinstance(metadata.get("qfleet"), dict) else None
    return DatasetInfo(
        dataset=dataset,
        path=str(data.parent),
        episodes=episodes,
        steps=int(metadata.get("total_steps", 0)),
        data_format=str(metadata.get("data_format")),
        observation_space=str(metadata.get("observation_space")),
        action_space=str(metadata.get("action_space")),
        env_id=env_id,
        returns=summary,
        recorded_by=metadata.get("qfleet", {}) if isinstance(metadata.get("qfleet"), dict) else {},
        policy_versions=(min(versions), max(versions)) if versions else None,
        epsilons=sorted(epsilons),
        size_mb=float(metadata.get("dataset_size", 0.0)),
    )
