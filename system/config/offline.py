"""The `offline` section of a run config: a dataset the learner trains on first, then mixes into
every online batch (RLPD), and `batch_mix`, the fractions of each online-phase batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OFFLINE = "offline"
ONLINE = "online"
"""The sources of a mixed batch, as `replay.mix` names them."""

FINISHED = "finished"
"""The phase of the learner of an offline-only run (train.total_env_steps 0) once it made its
offline updates: it trains no more (there is no online phase)."""

DEFAULT_MIX = {OFFLINE: 0.5, ONLINE: 0.5}
"""RLPD's symmetric sampling: half of every online-phase batch from the dataset."""


@dataclass(frozen=True)
class OfflineConfig:
    """An offline phase: the learner trains on a dataset alone, then actors start and every batch
    mixes the dataset with their data (`replay.mix`)."""

    dataset: str | None = None
    """Minari dataset id under datasets_dir (e.g. cartpole/medium-v0), or its folder; null: no
    offline data (an online-only run). Checked against the env before anything starts."""

    datasets_dir: str | None = None
    """Folder of datasets; null: MINARI_DATASETS_PATH, else ~/.minari/datasets. Never downloads."""

    num_shards: int = 1
    """Offline replay shards the dataset is spread over (loaded at each start, never evicted,
    never checkpointed: the dataset is their checkpoint)."""

    selector: Literal["uniform", "prioritized"] = "uniform"
    """How the offline shards sample: "uniform", or "prioritized" (by TD error, like online replay)."""

    updates: int = 10_000
    """Learner updates on the dataset alone before actors start (0: no offline phase; the data is
    still mixed into every online batch)."""

    eval_every_updates: int = 1000
    """Learner updates between evaluations in the offline phase (env steps do not move there; 0:
    only at its end). Online, train.eval_every_steps applies."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"{name}={getattr(self, name)!r}: {why}")

        if self.dataset is not None and not self.dataset:
            bad("dataset", "must name a dataset id or folder, or be null")
        if not 1 <= self.num_shards <= 512:
            bad("num_shards", "must be in [1, 512]")
        if self.selector not in ("uniform", "prioritized"):
            bad("selector", "must be 'uniform' or 'prioritized'")
        if self.updates < 0:
            bad("updates", "must be >= 0")
        if self.eval_every_updates < 0:
            bad("eval_every_updates", "must be >= 0")

    @property
    def enabled(self) -> bool:
        """Whether the run has offline data."""
        return self.dataset is not None


def batch_mix(offline: OfflineConfig, mix: dict[str, float] | None) -> dict[str, float] | None:
    """The fractions of each online-phase batch by source ("offline", "online"): `replay.mix`, or
    RLPD's 50/50 when a dataset is configured; None for an online-only run."""
    if not offline.enabled:
        return None
    return dict(mix) if mix is not None else dict(DEFAULT_MIX)


def online_batch_items(batch_size: int, mix: dict[str, float] | None) -> int:
    """Items of each learner batch drawn from the online replay: all of them in an online-only run,
    its share of the mix otherwise (the UTD is held on these)."""
    from replay import split_counts

    return batch_size if mix is None else split_counts(batch_size, mix).get(ONLINE, 0)


def offline_run_name(run: str) -> str:
    """The shard-registry namespace of a run's offline shards: apart from the online shards', so
    actors' writers never discover (and write into) them."""
    return f"{run}.offline"
