"""Item keys: (shard id, generation, slot) packed into one uint64.

    bit 63 ........ 54 | 53 ......... 30 | 29 ............ 0
        shard (10 bits)  generation (24)   slot (30 bits)

A slot's generation increases every time the slot is (over)written, so a key names one occupant
of one slot of one shard. A priority update whose generation no longer matches the slot is stale
and is dropped. Generations wrap after 2**24 writes to the same slot, far beyond the life of a
sampled key. Limits: 1024 shards, 2**30 (about 1e9) items per shard.
"""

from __future__ import annotations

import numpy as np

SLOT_BITS = 30
GENERATION_BITS = 24
SHARD_BITS = 10
MAX_SHARDS = 1 << SHARD_BITS
MAX_CAPACITY = 1 << SLOT_BITS
GENERATION_MASK = (1 << GENERATION_BITS) - 1
_SLOT_MASK = np.uint64((1 << SLOT_BITS) - 1)
_GEN_MASK = np.uint64(GENERATION_MASK)


def make_keys(shard_id: int, slots: np.ndarray, generations: np.ndarray) -> np.ndarray:
    """Packs slots and their current generations into uint64 keys of `shard_id`."""
    return (
        (np.uint64(shard_id) << np.uint64(SLOT_BITS + GENERATION_BITS))
        | ((generations.astype(np.uint64) & _GEN_MASK) << np.uint64(SLOT_BITS))
        | slots.astype(np.uint64)
    )


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (shard ids, slots, generations) of uint64 keys, each as int64 arrays."""
    keys = np.asarray(keys, dtype=np.uint64)
    shard = (keys >> np.uint64(SLOT_BITS + GENERATION_BITS)).astype(np.int64)
    generation = ((keys >> np.uint64(SLOT_BITS)) & _GEN_MASK).astype(np.int64)
    slot = (keys & _SLOT_MASK).astype(np.int64)
    return shard, slot, generation


def shard_of(keys: np.ndarray) -> np.ndarray:
    """Shard id of each key (used to route priority updates)."""
    return (np.asarray(keys, dtype=np.uint64) >> np.uint64(SLOT_BITS + GENERATION_BITS)).astype(np.int64)
