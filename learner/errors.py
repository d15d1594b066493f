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

    def __reduce__(self):  # with its fields: these errors cross Ray's process boundaries
        return (type(self), (str(self), self.redis_url))


class MalformedWeightsError(WeightStoreError):
    """The store was reached but holds a malformed value: a version that is not an integer >= 0, or
    bytes that are not a qfleet weights blob. Readers skip it; the next valid publish replaces it.

    Attributes:
        key: the Redis key that holds it; None for a blob not read from Redis.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key

    def __reduce__(self):
        return (type(self), (str(self), self.key))


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


class MalformedColumnError(LearnerError, ValueError):
    """A batch column the configured loss needs holds values it cannot use (e.g. a NaN or infinite
    `episode_return` for "filtered_bc": the top-k% selection would silently keep or drop it).

    Attributes:
        loss: the `learner.loss` that reads it.
        column: the column.
        why: what is wrong with its values.
    """

    def __init__(self, loss: str, column: str, why: str):
        super().__init__(f"learner.loss={loss!r}: column {column!r} {why}")
        self.loss, self.column, self.why = loss, column, why


class CheckpointLossError(LearnerError):
    """A checkpoint was written by a learner of another `learner.loss` than the configured one: its
    networks and optimizers are not this agent's, so it cannot be resumed (and it is not damaged:
    it is left in place, not set aside).

    Attributes:
        path: the checkpoint.
        saved_loss: the loss it was written under (None: a checkpoint from before losses were
            recorded, whose parts did not fit).
        configured_loss: the configured `learner.loss`.
    """

    def __init__(self, path: str, saved_loss: str | None, configured_loss: str, detail: str = ""):
        written = f"learner.loss={saved_loss!r}" if saved_loss is not None else "another learner.loss"
        super().__init__(
            f"learner checkpoint {path} was written under {written}; this run's is "
            f"learner.loss={configured_loss!r}: resume with the loss it was trained with, or use another "
            f"checkpoint directory (a new run){f' ({detail})' if detail else ''}"
        )
        self.path, self.saved_loss, self.configured_loss = path, saved_loss, configured_loss


class CheckpointShapeError(LearnerError):
    """A checkpoint written under the configured `learner.loss` holds networks of other sizes than
    the configured ones (e.g. `learner.ensemble_size`, whose default went from 10 to 2, or
    `hidden_size`): it cannot be resumed under these settings (and it is left in place).

    Attributes:
        path: the checkpoint.
        detail: what did not fit (the first lines of torch's message).
    """

    def __init__(self, path: str, detail: str):
        super().__init__(
            f"learner checkpoint {path} holds networks of other sizes than this run's learner settings "
            f"({detail}): resume with the settings it was trained with (its run's config.yaml: e.g. "
            "learner.ensemble_size, hidden_size, num_layers), or use another checkpoint directory (a new run)"
        )
        self.path, self.detail = path, detail


class CheckpointSupportError(LearnerError):
    """A checkpoint's distribution heads were trained on another value support than the configured
    one: each bin would read as another value, so it is not resumed (and it is left in place).

    Attributes:
        path: the checkpoint.
        saved: the support it was written under (learner key -> value).
        configured: the configured support (learner key -> value).
    """

    def __init__(self, path: str, saved: dict, configured: dict):
        differ = [key for key in configured if saved.get(key) != configured[key]]
        changes = ", ".join(f"learner.{key}={saved.get(key)!r} (configured {configured[key]!r})" for key in differ)
        super().__init__(
            f"learner checkpoint {path} was trained on another value support: {changes}; resume with the "
            "checkpoint's values, or use another checkpoint directory (a new run)"
        )
        self.path, self.saved, self.configured = path, saved, configured


class WeightsHostError(WeightStoreError):
    """Weights published to Ray's object store cannot be reached or are not the publisher's: the
    weights host (the Ray actor that hands out the newest version's object references) is absent,
    dead, hung or holds another version than Redis announces, the object it hands out is not the
    size or does not have the header digest the manifest announces, the payload's owner (the learner)
    is gone, the pull timed out, or this process is not connected to the run's Ray. Readers keep their current weights and retry; the
    learner replaces a host that fails it.

    Pickles with its fields (it crosses Ray's process boundaries).

    Attributes:
        host: the weights host's Ray actor name.
    """

    def __init__(self, message: str, host: str = ""):
        super().__init__(message)
        self.host = host

    def __reduce__(self):
        return (type(self), (str(self), self.host))


class HostAheadError(WeightsHostError):
    """The host holds a newer version than the manifest read (published in between): read the
    manifest again. A race with the learner's publishing, not a fault: the reader's next read
    sees the newer manifest."""


class SupersededReadError(WeightStoreError):
    """The payload being read was deleted: `keep_versions` newer versions were published while a
    Redis reader read its chunks. The reader reads the new manifest instead; raised to callers only
    when that happens twice in a row.

    Attributes:
        redis_url: the store's Redis (its password hidden).
    """


class EncoderError(LearnerError, ValueError):
    """A frozen encoder cannot be loaded or saved: its directory is missing, holds pickle weights
    (refused: unpickling runs code), a malformed config, or weights that do not fit it.

    Attributes:
        path: the encoder's directory.
        why: what is wrong there.
    """

    def __init__(self, path: str, why: str):
        super().__init__(f"encoder {path}: {why}")
        self.path, self.why = path, why
