"""Offline datasets in Minari's format: record episodes, list and describe datasets, load one as
an offline replay source (validated, n-step transitions, its own never-evicting shards).

Public surface: DatasetSource, LoadedDataset, load_transitions, with_episode_return, load_episodes, offline_shard_config,
fill_shards, shard_share, load_recorded_episodes (loading); DatasetWriter, Episode, check_dataset_free (writing);
EpisodeRecorder, record_episodes, RecordSettings, Recorded, VectorActions, PolicyActions (recording
from actors' env vectors, by a network or a behaviour policy); Episodes,
read_dataset (reading); read_dataset_metadata, read_episode_metadata (checked metadata);
nstep_transitions; datasets_dir, data_path, list_datasets, check_dataset_id (where datasets live);
dataset_info, dataset_listing (what `qfleet dataset info` and `list` show); DatasetError,
ShardFillError.
"""

from system.datasets.errors import DatasetError, ShardFillError
from system.datasets.info import DatasetInfo, ListedDataset, dataset_info, dataset_listing
from system.datasets.layout import check_dataset_id, data_path, datasets_dir, list_datasets
from system.datasets.loading import (
    DatasetSource,
    LoadedDataset,
    fill_shards,
    load_episodes,
    load_recorded_episodes,
    load_transitions,
    offline_shard_config,
    shard_share,
    with_episode_return,
)
from system.datasets.metadata import read_dataset_metadata, read_episode_metadata
from system.datasets.reader import Episodes, read_dataset
from system.datasets.recorder import (
    EpisodeRecorder,
    PolicyActions,
    Recorded,
    RecordSettings,
    VectorActions,
    record_episodes,
)
from system.datasets.transitions import nstep_transitions
from system.datasets.writer import DatasetWriter, Episode, check_dataset_free

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "DatasetSource",
    "DatasetWriter",
    "Episode",
    "EpisodeRecorder",
    "Episodes",
    "ListedDataset",
    "LoadedDataset",
    "PolicyActions",
    "RecordSettings",
    "Recorded",
    "ShardFillError",
    "VectorActions",
    "check_dataset_free",
    "check_dataset_id",
    "data_path",
    "dataset_info",
    "dataset_listing",
    "datasets_dir",
    "fill_shards",
    "list_datasets",
    "load_episodes",
    "load_recorded_episodes",
    "load_transitions",
    "nstep_transitions",
    "offline_shard_config",
    "with_episode_return",
    "read_dataset",
    "read_dataset_metadata",
    "read_episode_metadata",
    "record_episodes",
    "shard_share",
]
