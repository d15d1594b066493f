"""`Sample`: one sampled batch, as the clients hand it out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One sampled batch. Arrays are read-only views of the received bytes."""

    data: dict[str, np.ndarray]
    """Column name -> array of shape [batch_size, *item_shape]."""
    keys: np.ndarray
    """uint64 keys to pass back to `update_priorities`."""
    probabilities: np.ndarray
    """Probability with which each item was drawn from its table."""
    weights: np.ndarray
    """Importance weights (N * P)^-beta, normalised by the batch maximum."""
    table_size: int
    """Items in the table when the sample was drawn."""
    priority_mass: float
    """Sum of priority^alpha in the table when the sample was drawn."""
    inserts: int = 0
    """Items inserted into the table(s) so far, as of this sample."""
    samples: int = 0
    """Items sampled from the table(s) so far, this sample included."""
    boot_id: int = 0
    """The shard process's boot id (`ReplayInfo.boot_id`); 0 when unknown or of several shards."""
