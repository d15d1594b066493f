"""Typed errors of the replay package.

Every error a caller of the replay clients can see is a `ReplayError`; gRPC status codes map onto
the subclasses below, so callers never inspect `grpc.RpcError` themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


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
    """A sample or insert waited for the rate limiter (or the server) past its deadline.

    Attributes:
        inserted: items of the timed-out insert batch that made it into the table (0 for samples).
    """

    def __init__(self, message: str, *, inserted: int = 0):
        super().__init__(message)
        self.inserted = inserted


class ReplayUnavailableError(ReplayError, ConnectionError):
    """The shard (or every shard) could not be reached, after retries; the message names where.

    Attributes:
        address: the unreachable shard's address ("" when no single shard is meant).
        unacknowledged: insert batches (column name -> array) not known to be stored, for the
            caller to send again or count as lost; empty when the failed call was no insert.
        abandoned: (stream id, items acknowledged on it) of the insert stream given up on, whose
            unacknowledged batches the shard may have stored all the same; None: no stream.
        resent_from: receipts (shard id, stream id, items acknowledged, handed back) that the unacknowledged
            batches carried, to be carried again with them.
    """

    def __init__(
        self,
        message: str,
        *,
        address: str = "",
        unacknowledged: Sequence[Mapping[str, np.ndarray]] = (),
        abandoned: tuple[int, int] | None = None,
        resent_from: Sequence[tuple[int, int, int, int]] = (),
    ):
        super().__init__(message)
        self.address = address
        self.unacknowledged = list(unacknowledged)
        self.abandoned = abandoned
        self.resent_from = list(resent_from)


class ReplayAuthenticationError(ReplayError, PermissionError):
    """A shard refused a call UNAUTHENTICATED: the client sent no replay token or a wrong one.

    Not retried: the token does not change by waiting. The message never holds a token.

    Attributes:
        address: the shard's address.
    """

    def __init__(self, message: str, *, address: str = ""):
        super().__init__(message)
        self.address = address


class ReplayTLSError(ReplayAuthenticationError):
    """The TLS handshake with a shard failed: the client and the shard do not trust each other.

    The client pins another certificate than the shard holds (credentials of another run, or a
    shard restarted with new ones), the shard's certificate expired, or one side speaks TLS and the
    other plaintext. Not retried, unlike a shard that is merely down: the handshake fails the same
    way until this configuration changes. The message names the likely cause.

    Attributes:
        address: the shard's address.
    """


class CheckpointError(ReplayError):
    """A checkpoint could not be read (corrupt, truncated, or written for another spec)."""


class LedgerError(ReplayError):
    """A shard's insert ledger file is not one this shard can use (another layout or size).

    Attributes:
        path: the file.
        found_size: its size in bytes.
        expected_size: the size of a ledger of this layout.
    """

    def __init__(self, message: str, *, path: str, found_size: int, expected_size: int):
        super().__init__(message)
        self.path = path
        self.found_size = found_size
        self.expected_size = expected_size


class LedgerInUseError(ReplayError):
    """Another live process holds the shard's insert ledger (the same shard id started twice on
    one checkpoint folder): this one does not start, rather than overwrite its records.

    Attributes:
        path: the ledger file.
    """

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


class RequestCancelledError(ReplayError):
    """The caller of a waiting insert or sample went away (cancelled, or past its deadline).

    Nothing of the sample was drawn; the shard stops waiting for a client that can't receive it.
    """


class TableClosedError(ReplayError):
    """The table is shutting down; waiting calls are released with this."""


class RegionRefusedError(ReplayError):
    """A shard would not write a sample into the shared-memory region a request named
    (replay/same_host.py); it answers inline instead.

    Attributes:
        reason: why (the name's form, the file's type, owner, mode or size, or the slot's size).
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
