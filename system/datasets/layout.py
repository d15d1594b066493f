"""Where datasets live and how a Minari dataset is laid out on disk (its `arrow` format).

    DATASETS_DIR/<dataset id>/data/metadata.json          the dataset: spaces, counts, who recorded it
    DATASETS_DIR/<dataset id>/data/<episode>/part-0.arrow  one episode: observations (T + 1 rows),
                                                           actions, rewards, terminations, truncations
    DATASETS_DIR/<dataset id>/data/<episode>/metadata.json that episode's metadata (JSON)

This is the layout Minari 0.5's `ArrowStorage` writes and reads, so `minari.load_dataset` opens
what qfleet records and qfleet loads what Minari makes. The dataset folder is a `--datasets-dir`
option, else `MINARI_DATASETS_PATH`, else Minari's default `~/.minari/datasets`; nothing is ever
downloaded. Only JSON and Arrow IPC files are read: nothing is unpickled, and a dataset's
`env_spec` is shown, never used to build an environment (that would import its entry point).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

from system.datasets.errors import DatasetError

DATA_FORMAT = "arrow"
"""The Minari storage qfleet reads and writes (Arrow IPC files, one per episode)."""

EPISODE_FILE = "part-0.arrow"
METADATA_FILE = "metadata.json"

_ID = re.compile(r"^(?:[A-Za-z0-9_.-]+/)*[A-Za-z0-9_.-]+-v\d+$")


def datasets_dir(explicit: str | os.PathLike | None = None) -> pathlib.Path:
    """The datasets folder: `explicit`, else MINARI_DATASETS_PATH, else ~/.minari/datasets."""
    if explicit is not None:
        return pathlib.Path(explicit)
    if env := os.environ.get("MINARI_DATASETS_PATH"):
        return pathlib.Path(env)
    return pathlib.Path.home() / ".minari" / "datasets"


def check_dataset_id(dataset_id: str) -> str:
    """Minari's id form `[namespace/]name-vN` (letters, digits, `_.-`); returns it.

    Raises:
        DatasetError: another form (a path-like id could write outside the datasets folder).
    """
    if not _ID.match(dataset_id) or any(part in ("", ".", "..") for part in dataset_id.split("/")):
        raise DatasetError(dataset_id, "dataset id", "expected [namespace/]name-vN, e.g. cartpole/medium-v0")
    return dataset_id


def data_path(dataset: str, root: str | os.PathLike | None = None) -> pathlib.Path:
    """The `data` folder of a dataset named by id (under `datasets_dir(root)`) or by its folder.

    A name is a folder only when it says so: an absolute path, or one starting with `./` (the
    dataset's folder, or its `data/`). Anything else is an id, so a folder in the working
    directory named like an id never shadows the datasets folder.

    Raises:
        DatasetError: a name that is neither a path nor a valid id.
    """
    if os.path.isabs(dataset) or dataset.startswith("./"):
        given = pathlib.Path(dataset)
        return given if given.name == "data" and (given / METADATA_FILE).is_file() else given / "data"
    return datasets_dir(root) / check_dataset_id(dataset) / "data"


def episode_dir(data: pathlib.Path, episode: int) -> pathlib.Path:
    return data / str(episode)


def write_json(path: pathlib.Path, value: dict[str, Any]) -> None:
    """Writes JSON atomically (a temporary file renamed over `path`): readers never see half."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(value, allow_nan=True))
    os.replace(temporary, path)


def list_datasets(root: str | os.PathLike | None = None) -> list[tuple[str, pathlib.Path]]:
    """(dataset id, data folder) of every dataset under the datasets folder, sorted by id."""
    base = datasets_dir(root)
    if not base.is_dir():
        return []
    found = []
    for metadata in base.rglob(f"data/{METADATA_FILE}"):
        data = metadata.parent
        dataset_id = data.parent.relative_to(base).as_posix()
        if _ID.match(dataset_id):
            found.append((dataset_id, data))
    return sorted(found)
