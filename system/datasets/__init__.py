"""Offline datasets in Minari's format: record episodes, list and describe datasets, load one as
an offline replay source (validated, n-step transitions, its own never-evicting shards).

Public surface: DatasetSource, LoadedDataset, load_transitions, load_episodes, offline_shard_config,
fill_shards, shard_share (loading); DatasetWriter, Episode (writing); EpisodeRecorder, record_episodes,
RecordSettings (recording from actors' env vectors); Episodes, read_dataset (reading);
nstep_transitions; datasets_dir, data_path, list_datasets, check_dataset_id (where datasets live);
dataset_info (what `qfleet dataset info` shows); DatasetError.
"""

from system.datasets.errors import DatasetError
from system.datasets.info import DatasetInfo, dataset_info
from system.datasets.layout import check_dataset_id, data_path, datasets_dir, list_datasets
from system.datasets.loading import (
    DatasetSource,
    LoadedDataset,
    fill_shards,
    load_episodes,
    load_transitions,
    offline_shard_config,
    shard_share,
)
from system.datasets.reader import Episodes, read_dataset
from system.datasets.recorder import EpisodeRecorder, RecordSettings, record_episodes
from system.datasets.transitions import nstep_transitions
from system.datasets.writer import DatasetWriter, Episode

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "DatasetSource",
    "DatasetWriter",
    "Episode",
    "EpisodeRecorder",
    "Episodes",
    "LoadedDataset",
    "RecordSettings",
    "check_dataset_id",
    "data_path",
    "dataset_info",
    "datasets_dir",
    "fill_shards",
    "list_datasets",
    "load_episodes",
    "load_transitions",
    "nstep_transitions",
    "offline_shard_config",
    "read_dataset",
    "record_episodes",
    "shard_share",
]
