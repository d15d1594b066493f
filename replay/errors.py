"""Typed errors of the replay package.

Every error a caller of `ReplayClient` can see is a `ReplayError`; gRPC status codes map onto the
subclasses below so callers never inspect `grpc.RpcError` themselves.
"""

from __future__ import annotations


class ReplayError(Exception):
    """Base class of every replay error."""


class InvalidBatchError(ReplayError, ValueError):
    """A batch or request was malformed (missing/extra column, wrong dtype or shape, bad priority).

    The whole batch was rejected; the table is unchanged.
    """


class SpecMismatchError(ReplayError, ValueError):
    """Two specs that must be equal differ (a checkpoint or a shard built for another spec)."""


class RateLimiterConfigError(ReplayError, ValueError):
    """A rate limiter configuration that could deadlock or is otherwise unusable."""


class DeadlineExceededError(ReplayError, TimeoutError):
    """A sample or insert waited for the rate limiter (or the server) past its deadline."""


class ReplayUnavailableError(ReplayError, ConnectionError):
    """The shard could not be reached, after retries; the message names the address."""


class CheckpointError(ReplayError):
    """A checkpoint could not be read (corrupt, truncated, or written for another spec)."""
