"""A dataset's metadata.json and its episodes' metadata.json, read and checked once.

Every reader of metadata (loading, `qfleet dataset info` and `list`) goes through
`read_dataset_metadata` and `read_episode_metadata`, so a malformed value is a `DatasetError`
naming the key wherever it is met, never a traceback. Keys qfleet does not know are kept as they
are; the ones it uses are checked when present:

    dataset:  total_episodes, total_steps (counts), data_format, observation_space, action_space,
              env_spec (strings), dataset_size (a number), qfleet (an object; its env_id a string)
    episode:  id, total_steps (counts), policy_version (an integer), actor_id (an int32),
              epsilon and follow_p (in [0, 1]), return (a finite number), sha256 (64 hex digits),
              success (a boolean)
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any

from system.datasets.errors import DatasetError
from system.datasets.layout import METADATA_FILE, episode_dir

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def read_json(path: pathlib.Path, dataset: str, field: str) -> dict[str, Any]:
    """A JSON object from `path`.

    Raises:
        DatasetError: missing, unreadable, not JSON, or not an object.
    """
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(dataset, field, f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(dataset, field, f"{path} is not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DatasetError(dataset, field, f"{path} holds {type(value).__name__}, expected an object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: Any, dataset: str, field: str, low: int, high: int, expected: str) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise DatasetError(dataset, field, f"{value!r}, expected {expected}")


def _check_string(metadata: dict[str, Any], key: str, dataset: str, where: str) -> None:
    if key in metadata and not isinstance(metadata[key], str):
        raise DatasetError(dataset, where, f"{metadata[key]!r}, expected a string")


def read_dataset_metadata(data: pathlib.Path, dataset: str) -> dict[str, Any]:
    """The dataset's metadata.json, checked (see the module doc); total_episodes and total_steps
    are required.

    Raises:
        DatasetError: no dataset there, or a malformed value (naming its key).
    """
    if not (data / METADATA_FILE).is_file():
        raise DatasetError(dataset, "metadata.json", f"no dataset at {data.parent} (no data/{METADATA_FILE})")
    metadata = read_json(data / METADATA_FILE, dataset, "metadata.json")
    for key in ("total_episodes", "total_steps"):
        _check_int(metadata.get(key), dataset, key, 0, _INT64[1], "a count >= 0 in metadata.json")
    for key in ("data_format", "observation_space", "action_space", "env_spec"):
        _check_string(metadata, key, dataset, key)
    size = metadata.get("dataset_size", 0.0)
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise DatasetError(dataset, "dataset_size", f"{size!r}, expected a number of MB")
    qfleet = metadata.get("qfleet", {})
    if not isinstance(qfleet, dict):
        raise DatasetError(dataset, "qfleet", f"{qfleet!r}, expected an object")
    _check_string(qfleet, "env_id", dataset, "qfleet.env_id")
    return metadata


def dataset_env_id(metadata: dict[str, Any]) -> str | None:
    """The env a dataset was recorded in: qfleet's `env_id`, else the id in Minari's `env_spec`."""
    if recorded := metadata.get("qfleet", {}).get("env_id"):
        return recorded
    try:
        spec = json.loads(metadata.get("env_spec") or "null")
    except json.JSONDecodeError:
        return None
    return spec.get("id") if isinstance(spec, dict) and isinstance(spec.get("id"), str) else None


def read_episode_metadata(data: pathlib.Path, dataset: str, episode: int) -> dict[str, Any]:
    """Episode `episode`'s metadata.json, checked (see the module doc); {} when it has none.

    Raises:
        DatasetError: unreadable, or a malformed value, naming `episode N: key`.
    """
    path = episode_dir(data, episode) / METADATA_FILE
    where = f"episode {episode}"
    if not path.exists():
        return {}
    metadata = read_json(path, dataset, f"{where}: metadata.json")
    checks = {
        "id": (0, _INT64[1], "an episode index >= 0"),
        "total_steps": (1, _INT64[1], "a step count >= 1"),
        "policy_version": (*_INT64, "an integer"),
        "actor_id": (*_INT32, "a 32-bit integer"),
    }
    for key, (low, high, expected) in checks.items():
        if key in metadata:
            _check_int(metadata[key], dataset, f"{where}: {key}", low, high, expected)
    for key, low, high in (("epsilon", 0.0, 1.0), ("follow_p", 0.0, 1.0), ("return", -math.inf, math.inf)):
        value = metadata.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise DatasetError(dataset, f"{where}: {key}", f"{value!r}, expected a number in [{low}, {high}]")
        if not math.isfinite(value):
            raise DatasetError(dataset, f"{where}: {key}", f"{value!r}, expected a finite number")
    if "success" in metadata and not isinstance(metadata["success"], bool):
        raise DatasetError(dataset, f"{where}: success", f"{metadata['success']!r}, expected true or false")
    if "sha256" in metadata and not (isinstance(metadata["sha256"], str) and _SHA256.match(metadata["sha256"])):
        raise DatasetError(dataset, f"{where}: sha256", f"{metadata['sha256']!r}, expected 64 hex digits")
    return metadata
