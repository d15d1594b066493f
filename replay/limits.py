"""What one request may ask of a shard: bounds checked before anything takes the table lock.

Every bound here is a number a caller can read (`ReplayConfig` fields or the constants below), so
a refusal names the limit it hit and no request can hold the lock, memory or a thread unbounded.
"""

from __future__ import annotations

from replay.errors import InvalidBatchError
from replay.spec import Spec

SHARD_BUSY = "replay shard busy"
"""How the details of a shard's own RESOURCE_EXHAUSTED refusals begin (clients retry only these)."""

MAX_PRIORITY = 1e30
"""Priorities above this are stored as this: with alpha <= 1 and < 2**30 slots the sum stays finite."""

MAX_DIMS = 32
"""Most dimensions a wire tensor may have (numpy's own limit is 64)."""

MAX_UNKNOWN_FIELDS = 16
"""Fields a wire message may carry beyond the ones this version reads (room for newer writers)."""

SAMPLE_ITEM_OVERHEAD = 24
"""Bytes a sample response adds per item beyond the spec: key, probability and weight (8 each)."""

SAMPLE_HEADER_BYTES = 64 * 1024
"""Room kept in a sample response for headers (column names, shapes, counters)."""


def sample_response_nbytes(spec: Spec, items: int) -> int:
    """Upper bound of the array bytes a Sample response of `items` items carries."""
    return items * (spec.item_nbytes() + SAMPLE_ITEM_OVERHEAD)


def check_priority_update(keys: int, max_keys: int) -> None:
    """Refuses an UpdatePriorities call carrying more than `max_keys` keys.

    Raises:
        InvalidBatchError: naming the limit (`max_priority_updates`).
    """
    if keys > max_keys:
        raise InvalidBatchError(f"priority update of {keys} keys exceeds max_priority_updates={max_keys}")


def check_sample_request(spec: Spec, batch_size: int, num_batches: int, max_items: int, max_message_mb: int) -> None:
    """Refuses a Sample that asks for too many items or a response larger than a message may be.

    Raises:
        InvalidBatchError: naming the limit (`max_sample_items` or `max_message_mb`).
    """
    if batch_size < 1 or num_batches < 1:
        raise InvalidBatchError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    items = batch_size * num_batches
    if items > max_items:
        raise InvalidBatchError(
            f"sample of {batch_size} x {num_batches} = {items} items exceeds max_sample_items={max_items}"
        )
    limit = max_message_mb * 1024 * 1024 - SAMPLE_HEADER_BYTES
    nbytes = sample_response_nbytes(spec, items)
    if nbytes > limit:
        raise InvalidBatchError(
            f"sample of {items} items would be a {nbytes / 2**20:.1f} MiB response, over the "
            f"max_message_mb={max_message_mb} limit: ask for at most {limit // (nbytes // items)} items"
        )
