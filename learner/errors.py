"""The learner's typed errors (all of them), exported from `learner`."""

from __future__ import annotations


class LearnerError(Exception):
    """Base class of the learner's errors."""


class WeightStoreError(LearnerError, RuntimeError):
    """The parameter store is unreachable, or holds bytes that are not a qfleet weights blob.

    Attributes:
        redis_url: the store's Redis (its password hidden) when the failure is reaching it; None
            for a bad blob.
    """

    def __init__(self, message: str, redis_url: str | None = None):
        super().__init__(message)
        self.redis_url = redis_url


class MalformedWeightsError(WeightStoreError):
    """The store was reached but holds a malformed value: a version that is not an integer >= 0, or
    bytes that are not a qfleet weights blob. Readers skip it; the next valid publish replaces it.

    Attributes:
        key: the Redis key that holds it; None for a blob not read from Redis.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class MissingColumnError(LearnerError, KeyError):
    """A batch lacks a column the configured loss needs (e.g. "filtered_bc" needs `episode_return`,
    which datasets provide and online transitions do not).

    Attributes:
        loss: the `learner.loss` that needs it.
        column: the missing column.
        columns: the columns the batch has.
    """

    def __init__(self, loss: str, column: str, columns: list[str]):
        super().__init__(f"learner.loss={loss!r} needs a {column!r} column in its batches; they have {columns}")
        self.loss, self.column, self.columns = loss, column, columns

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsHostError(WeightStoreError):
    """Weights published to Ray's object store cannot be reached: the weights host (the Ray actor
    that hands out the newest version's object references) is absent or dead, the payload's owner
    (the learner) is gone, the pull timed out, or this process is not connected to the run's Ray.
    Readers keep their current weights and retry; the learner's next publish starts a new host.

    Attributes:
        host: the weights host's Ray actor name.
    """

    def __init__(self, message: str, host: str):
        super().__init__(message)
        self.host = host
