"""A dataset as an offline replay source: its own shards, filled once, never evicted.

    source = DatasetSource("cartpole/medium-v0", datasets_dir="datasets", num_shards=2)
    loaded = load_transitions(source, spec, action_space, n_step=3, gamma=0.99)   # validated, n-step
    configs = [offline_shard_config(replay_config, source, loaded.size, i, first_shard_id=100) for i in range(2)]
    ... start a ReplayServer per config (in process, or as the run's shard services) ...
    fill_shards(loaded, [ReplayClient(address) for address in addresses])

`load_transitions` reads and validates the whole dataset before anything is inserted (a bad file
raises `DatasetError` and no shard holds any of it). `offline_shard_config` sizes each shard to
hold its share (no eviction) with no rate limiter (offline data is sampled as often as the learner
likes); `fill_shards` refuses shards that hold data or lack room before inserting anything, then
streams large columnar batches; a shard failing after that raises `ShardFillError` (the shards hold
part of the dataset and must be started afresh). The offline phase of `qfleet train` loads its
`offline:` dataset this way.

Loaded rows carry policy_version -1: the versions in a dataset are the recording run's, not this
learner's, and would distort its staleness and sample-age figures. `episode_return` (each
transition's episode's undiscounted return) is a column of the offline shards only when the loss
needs it (`with_episode_return`): online transitions have no such column.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from actors import UnsupportedEnvError
from learner import ActionSpace
from replay import ReplayClient, ReplayConfig, ReplayError, Spec
from system.datasets.errors import DatasetError, ShardFillError
from system.datasets.layout import data_path
from system.datasets.reader import Episodes, read_dataset
from system.datasets.transitions import nstep_transitions

INSERT_BATCH_ITEMS = 65_536
"""Transitions per insert message while filling (messages stay below 16 MiB for small items;
the client splits larger ones)."""


@dataclass(frozen=True)
class DatasetSource:
    """An offline dataset to learn from (what the offline phase of `qfleet train` will name)."""

    dataset: str
    """Minari dataset id under datasets_dir (e.g. cartpole/medium-v0), or the dataset's folder."""

    datasets_dir: str | None = None
    """Folder of datasets; null: MINARI_DATASETS_PATH, else ~/.minari/datasets. Never downloads."""

    num_shards: int = 1
    """Offline replay shards the dataset is spread over (each holds its share, never evicted)."""

    selector: Literal["uniform", "prioritized"] = "uniform"
    """How the offline shards sample: "uniform", or "prioritized" (by TD error, like online replay)."""

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("dataset: must name a dataset id or folder")
        if self.num_shards < 1:
            raise ValueError(f"num_shards={self.num_shards}: must be >= 1")
        if self.selector not in ("uniform", "prioritized"):
            raise ValueError(f"selector={self.selector!r}: must be 'uniform' or 'prioritized'")


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset's n-step transitions, ready to insert."""

    source: DatasetSource
    transitions: dict[str, np.ndarray]
    episodes: int
    read_s: float
    """Seconds reading and validating the files."""
    nstep_s: float
    """Seconds computing the n-step transitions."""

    @property
    def size(self) -> int:
        return len(self.transitions["reward"])


def load_episodes(source: DatasetSource, spec: Spec, action_space: ActionSpace) -> Episodes:
    """The dataset's episodes, validated against the env's spec and action space.

    Raises:
        DatasetError: the first problem, naming the dataset and the field.
    """
    return read_dataset(data_path(source.dataset, source.datasets_dir), source.dataset, spec, action_space)


def load_recorded_episodes(dataset: str, datasets_dir: str | None = None) -> Episodes:
    """A dataset's episodes, validated against the spaces its own metadata declares (for tools
    that take a dataset without an env config, e.g. `qfleet encoder train`).

    Raises:
        DatasetError: the first problem, naming the dataset and the field.
    """
    import gymnasium as gym

    from actors import spec_for_spaces
    from system.datasets.metadata import read_dataset_metadata
    from system.datasets.reader import parse_spaces

    data = data_path(dataset, datasets_dir)
    observation_space, action_space = parse_spaces(read_dataset_metadata(data, dataset), dataset)
    if isinstance(action_space, gym.spaces.Discrete):
        action = ActionSpace(num_actions=int(action_space.n))
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        action = ActionSpace(low=tuple(map(float, action_space.low)), high=tuple(map(float, action_space.high)))
    else:
        raise DatasetError(dataset, "action_space", f"{action_space} is neither Discrete nor a 1-D Box")
    try:
        spec = spec_for_spaces(dataset, observation_space, action_space)
    except UnsupportedEnvError as exc:
        raise DatasetError(dataset, "observation_space", str(exc)) from None
    return read_dataset(data, dataset, spec, action)


EPISODE_RETURN = "episode_return"
"""The column of each transition's episode's undiscounted return (what "filtered_bc" ranks by)."""

OFFLINE_POLICY_VERSION = -1
"""The policy_version of every loaded row: not a version of this run's learner."""


def with_episode_return(spec: Spec) -> Spec:
    """`spec` plus the float32 `episode_return` column (offline shards of a "filtered_bc" run)."""
    return Spec({**spec.columns, EPISODE_RETURN: ((), "float32")})


def load_transitions(
    source: DatasetSource, spec: Spec, action_space: ActionSpace, *, n_step: int, gamma: float
) -> LoadedDataset:
    """Reads, validates and turns the dataset into n-step transitions in `spec`'s columns (with
    `episode_return` only if `spec` has it; policy_version -1 on every row).

    Raises:
        DatasetError: a problem with the dataset (nothing is returned).
    """
    started = time.perf_counter()
    episodes = load_episodes(source, spec, action_space)
    read = time.perf_counter()
    transitions = nstep_transitions(episodes, n_step, gamma)
    transitions["policy_version"] = np.full(len(transitions["reward"]), OFFLINE_POLICY_VERSION, np.int64)
    columns = {name: transitions[name].astype(dtype, copy=False) for name, (_, dtype) in spec.columns.items()}
    return LoadedDataset(source, columns, len(episodes.lengths), read - started, time.perf_counter() - read)


def shard_share(size: int, num_shards: int, shard: int) -> int:
    """Transitions shard `shard` (0-based) of `num_shards` holds: the first ones take one more."""
    return size // num_shards + (1 if shard < size % num_shards else 0)


def offline_shard_config(
    base: ReplayConfig, source: DatasetSource, size: int, shard: int, first_shard_id: int
) -> ReplayConfig:
    """Offline shard `shard`'s settings: room for its share exactly, no rate limiter, no checkpoints
    (the dataset is the checkpoint), the source's selector, shard id `first_shard_id + shard` (ids
    distinct from the online shards', so priority updates route)."""
    return dataclasses.replace(
        base,
        capacity=max(1, shard_share(size, source.num_shards, shard)),
        selector=source.selector,
        samples_per_insert=None,
        min_size=1,
        error_buffer=None,
        checkpoint_dir=None,
        checkpoint_every_s=None,
        shard_id=first_shard_id + shard,
        port=0,
        mix=None,
    )


def fill_shards(
    loaded: LoadedDataset, shards: Sequence[ReplayClient], batch_items: int = INSERT_BATCH_ITEMS
) -> list[int]:
    """Inserts every transition, shard i taking `shard_share` of them; returns the counts.

    Raises:
        DatasetError: a shard that already holds data or has too little room (checked on every
            shard before any insert: an offline shard must never evict).
        ShardFillError: a shard refused a batch or a flush after inserts began (its `ReplayError`
            is the cause): the shards hold part of the dataset; start fresh ones.
    """
    dataset = loaded.source.dataset
    counts = [shard_share(loaded.size, len(shards), i) for i in range(len(shards))]
    for client, count in zip(shards, counts, strict=True):
        info = client.info()
        if info.inserts or info.size:
            raise DatasetError(
                dataset, "shards", f"shard {client.address} already holds {info.size} items; load into fresh shards"
            )
        if info.capacity < count:
            raise DatasetError(
                dataset,
                "shards",
                f"shard {client.address} has room for {info.capacity} items, its share is {count}: it would evict",
            )
    begin = sent = 0
    client = shards[0]
    try:
        for client, count in zip(shards, counts, strict=True):
            for start in range(begin, begin + count, batch_items):
                stop = min(start + batch_items, begin + count)
                client.insert({name: column[start:stop] for name, column in loaded.transitions.items()})
                sent += stop - start
            begin += count
        for client in shards:
            client.flush()
    except ReplayError as exc:
        raise ShardFillError(dataset, client.address, sent, loaded.size, f"{type(exc).__name__}: {exc}") from exc
    return counts
