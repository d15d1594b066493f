"""`ReplayClient`: the Python face of one replay shard.

    client = ReplayClient("127.0.0.1:7001")
    client.insert({"obs": obs, "action": action, ...})   # streamed; returns at once
    client.flush()                                      # waits for acks; raises a batch's error
    sample = client.sample(256)                         # .data, .keys, .probabilities, .weights
    client.update_priorities(sample.keys, new_priorities)   # one unary call: waits for the answer
    client.send_priorities(sample.keys, new_priorities)     # streamed and coalesced: returns at once

Inserts ride one bidirectional stream with at most `max_in_flight` unacknowledged batches; an
error in batch k is raised by the next `insert` or `flush`. Calls retry UNAVAILABLE (and a busy
shard's RESOURCE_EXHAUSTED) with capped backoff, except a failed TLS handshake (`ReplayTLSError`:
another certificate, an expired one, or TLS against plaintext), which no wait fixes; a reconnected stream re-sends unacknowledged
batches, deduplicated by the server. The client pickles as its address (and its credentials, if
any), so it can be handed to another process (a Ray actor).

A shard started with `ReplayCredentials` serves TLS only and wants the run's token on every call:

    client = ReplayClient("10.0.0.5:7001", credentials=ReplayCredentials.from_env(required=True))
"""

from __future__ import annotations

import collections
import dataclasses
import math
import queue
import random
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from replay import codec, wire
from replay._proto import replay_pb2, replay_pb2_grpc
from replay.auth import call_metadata
from replay.codec import grpc_options
from replay.credentials import ReplayCredentials
from replay.errors import (
    DeadlineExceededError,
    InvalidBatchError,
    ReplayAuthenticationError,
    ReplayError,
    ReplayTLSError,
    ReplayUnavailableError,
)
from replay.limits import SHARD_BUSY
from replay.priority_stream import PriorityCounts, PriorityStream, PriorityStreamConfig
from replay.same_host import FEED_MODES, FeedCounts, SameHostFeed
from replay.sample import Sample
from replay.source import ReplayStats, make_stats
from replay.spec import Spec

_END = object()
_GRPC_BUSY = "Concurrent RPC limit exceeded"  # gRPC's own refusal beyond maximum_concurrent_rpcs


def _shard_busy(err: grpc.RpcError) -> bool:
    """True for a shard's refusal of one more concurrent call (its own cap or gRPC's).

    Worth retrying, unlike any other RESOURCE_EXHAUSTED: a message over the size limit fails the
    same way every time.
    """
    details = err.details() or ""
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (
        details.startswith(SHARD_BUSY) or _GRPC_BUSY in details
    )


_TLS_FAILURES = ("handshake failed", "certificate_verify_failed", "wrong_version_number", "ssl_error")
"""Words of gRPC's UNAVAILABLE details when the TLS handshake itself failed (BoringSSL's names)."""


def _tls_failure(err: grpc.RpcError) -> bool:
    """True when the shard was reached but the TLS handshake failed: the same every time."""
    details = (err.details() or "").lower()
    return err.code() == grpc.StatusCode.UNAVAILABLE and any(word in details for word in _TLS_FAILURES)


_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
"""Codes of a shard that is down, restarting or hung: a hung shard's channel is closed under a
waiting call ("Channel closed!", CANCELLED), so CANCELLED is as transient as UNAVAILABLE."""


def _retryable(err: grpc.RpcError) -> bool:
    """Retried with capped backoff: the shard is unreachable (down, restarting, hung) or busy.

    A failed TLS handshake is not retried: waiting does not change a pinned certificate.
    """
    return (err.code() in _TRANSIENT and not _tls_failure(err)) or _shard_busy(err)


@dataclass(frozen=True)
class RateLimiterState:
    """The shard's rate limiter (see replay/rate_limiter.py for the semantics)."""

    samples_per_insert: float | None
    min_size: int
    min_diff: float
    max_diff: float
    diff: float
    waiting_inserts: int
    waiting_samples: int
    insert_wait_seconds: float
    sample_wait_seconds: float
    credited: int = 0
    """Items counted as sampled without a draw (`ReplayClient.credit`), to free writers."""


@dataclass(frozen=True)
class ReplayInfo:
    """What `info()` reports of one shard."""

    address: str
    shard_id: int
    size: int
    capacity: int
    inserts: int
    samples: int
    priority_mass: float
    dropped_priority_updates: int
    rejected_batches: int
    selector: str
    spec: Spec
    rate_limiter: RateLimiterState
    checkpoint_sequence: int
    lost_transitions: int
    boot_id: int = 0
    """Random, drawn when the shard process started: a change means a restart (0: an older shard)."""
    host: str = ""
    """The shard's host name and kernel boot id, for the same-host feed ("": unknown, or an older shard)."""


@dataclass(frozen=True)
class PriorityUpdateResult:
    """Outcome of `update_priorities`."""

    applied: int
    dropped_stale: int


@dataclass(frozen=True)
class CheckpointResult:
    """Outcome of `checkpoint`."""

    path: str
    size: int
    sequence: int


_PLAINTEXT_TO_TLS_HINT = (
    "; if the shard serves TLS (every qfleet train shard and `qfleet replay serve` without --insecure do), "
    "this client needs the run's replay token and certificate (ReplayClient(..., credentials=...), or "
    "QFLEET_REPLAY_TOKEN and QFLEET_REPLAY_TLS_CERT for the qfleet commands)"
)


def _unavailable_hint(details: str | None, secure: bool) -> str:
    """What to check when a shard stays unreachable, if the cause may be TLS."""
    return "" if secure else _PLAINTEXT_TO_TLS_HINT


def _tls_cause(details: str) -> str:
    """The likely cause of a failed handshake, from BoringSSL's words in gRPC's details."""
    details = details.lower()
    if "expired" in details:
        return "the shard's certificate has expired: make new credentials and restart the run's shards and clients"
    if "wrong_version_number" in details:
        return "the shard serves plaintext (started with --insecure?) while this client speaks TLS"
    if "certificate_verify_failed" in details:
        return (
            "the shard holds another certificate than the one this client pins (credentials of another run, "
            "or the shard was restarted with new ones)"
        )
    return "the client and the shard do not agree on TLS (another certificate, or plaintext on one side)"


def _typed_error(err: grpc.RpcError, address: str, what: str, secure: bool = True) -> ReplayError:
    code, details = err.code(), err.details()
    text = f"{what} on {address}: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ReplayAuthenticationError(
            f"replay shard {address} refused {what}: it requires the run's replay token (TLS + token), and this "
            f"client's is {'wrong' if secure else 'missing'}",
            address=address,
        )
    if _tls_failure(err):
        return ReplayTLSError(
            f"replay shard {address}: the TLS handshake failed during {what}, not retried: {_tls_cause(details)} "
            f"({details})",
            address=address,
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidBatchError(text)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(text)
    if code in _TRANSIENT or _shard_busy(err):
        hint = _unavailable_hint(details, secure)
        return ReplayUnavailableError(
            f"replay shard {address} unavailable during {what}: {details}{hint}", address=address
        )
    return ReplayError(f"{text} ({code.name})")


class _RetryableFailure(Exception):
    """A call made with `retry=False` failed in a way `_call` would otherwise retry (internal)."""


class _Backoff:
    """Capped exponential backoff with jitter, giving up after `budget_s` seconds."""

    def __init__(self, budget_s: float, initial_s: float = 0.05, cap_s: float = 2.0):
        self._deadline = time.monotonic() + budget_s
        self._delay = initial_s
        self._cap = cap_s

    def sleep(self) -> bool:
        """Sleeps before the next try; False once the budget is spent."""
        delay = self._delay * random.uniform(0.5, 1.0)
        if time.monotonic() + delay > self._deadline:
            return False
        time.sleep(delay)
        self._delay = min(self._delay * 2, self._cap)
        return True


def _new_stream_id() -> int:
    """A stream id no other stream of the run shares: from the OS's entropy, not the `random`
    module (a seeded or forked `random` repeats ids, and a shard's ledger then takes a new
    stream's batches for re-sends of an old one's). Never 0 (a shard refuses stream 0)."""
    return secrets.randbits(63) or 1


_CLOSED = "the client was closed (its shard left the run) with inserts unacknowledged"


@dataclass(frozen=True)
class _PendingBatch:
    """A sent, unacknowledged insert: its serialized request."""

    sequence: int
    items: int
    request: bytes
    resent_from: tuple[tuple[int, int, int, int], ...] = ()


class _InsertStream:
    """One bidirectional Insert stream with a bounded window of unacknowledged batches.

    States: idle (no call), open (a call, its request queue and an ack reader), reconnecting
    (the reader is backing off after UNAVAILABLE). Batches sent while reconnecting wait in
    `_pending`; the new call re-sends all of `_pending` first.
    """

    def __init__(self, client: ReplayClient):
        self._client = client
        self._cond = threading.Condition()
        self._pending: collections.deque[_PendingBatch] = collections.deque()
        self._errors: list[ReplayError] = []
        self._queue: queue.SimpleQueue | None = None  # set while open
        self._reconnecting = False
        self._reader: threading.Thread | None = None
        self._writer_id = _new_stream_id()
        self._sequence = 0
        self._acknowledged_items = 0  # of this stream id: what a receipt says if it is given up
        self._closing = False

    def send(self, columns: dict[str, np.ndarray], timeout_ms: int, writer_tag: int, resent_from: tuple = ()) -> None:
        with self._cond:
            self._raise_error()
            while len(self._pending) >= self._client.max_in_flight and not self._errors:
                self._cond.wait()  # a `close` ends it: the pending batches come back as an error
            self._raise_error()
            if self._closing:  # closed under this sender (its shard left the run): it sends elsewhere
                raise ReplayUnavailableError(
                    f"replay shard {self._client.address}: {_CLOSED}", address=self._client.address
                )
            self._sequence += 1
            request = wire.encode_insert_request(
                columns,
                writer_id=self._writer_id,
                sequence=self._sequence,
                timeout_ms=timeout_ms,
                writer_tag=writer_tag,
                resent_from=resent_from,
            )
            items = next(iter(columns.values())).shape[0] if columns else 0
            self._pending.append(_PendingBatch(self._sequence, items, request, resent_from))
            if self._queue is not None:
                self._queue.put(request)
            elif not self._reconnecting:
                self._open_locked(None)

    def flush(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending and not self._errors:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceededError(
                        f"flush to {self._client.address}: {len(self._pending)} batches still unacknowledged "
                        f"after {timeout}s"
                    )
                self._cond.wait(remaining)
            self._raise_error()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            if self._queue is not None:
                self._queue.put(_END)  # the reader hands back what stays unacknowledged
            elif self._pending:  # backing off before a reconnect: no call will ever ack them
                self._errors.append(self._stream_error(None, _CLOSED))
                self._give_up()
            self._cond.notify_all()  # a sender waiting for room gets the error (or the closing)
            reader = self._reader
        if reader is not None:
            reader.join(timeout=10)

    def _raise_error(self) -> None:
        if self._errors:
            raise self._errors.pop(0)

    def _open_locked(self, backoff: _Backoff | None) -> None:
        """Starts a new call and its reader, (re-)sending every pending batch first."""
        requests: queue.SimpleQueue = queue.SimpleQueue()
        for batch in self._pending:
            requests.put(batch.request)
        self._queue, self._reconnecting = requests, False
        call = self._client._stub().InsertBytes(iter(requests.get, _END), metadata=self._client._metadata)
        self._reader = threading.Thread(
            target=self._read, args=(call, requests, backoff), name="replay-insert-acks", daemon=True
        )
        self._reader.start()

    def _read(self, call, requests: queue.SimpleQueue, backoff: _Backoff | None) -> None:
        acknowledged = False
        try:
            for response in call:
                acknowledged, backoff = True, None
                with self._cond:
                    batch = self._pending.popleft()
                    if response.code:
                        self._errors.append(self._batch_error(batch, response))
                        self._acknowledged_items += response.inserted
                    else:
                        self._acknowledged_items += batch.items
                    self._cond.notify_all()
            error = None  # the shard ended the stream (its max age)
        except grpc.RpcError as err:
            error = err
        requests.put(_END)  # frees the thread gRPC used to drain the dead call's requests
        with self._cond:
            if self._closing:
                if self._pending:  # closed under a waiting sender (its shard left): it sends them elsewhere
                    # Closed while a reconnect was under way, too: the batches come back because
                    # of the close, whatever the dying call said (a refused connection, say).
                    self._errors.append(self._stream_error(None, _CLOSED))
                    self._give_up()
                    self._cond.notify_all()
                return
            self._queue = None
            ended = error is None or error.code() == grpc.StatusCode.CANCELLED  # by the shard's age or idle limit
            if ended and (acknowledged or not self._pending):
                if self._pending:
                    self._open_locked(None)  # re-sends what this stream left unacknowledged
                return
            retry = ended or _retryable(error)  # ended without an ack: reopen after a backoff
            self._reconnecting = retry
        if retry:
            backoff = backoff or _Backoff(self._client.retry_for_s)
            if backoff.sleep():
                with self._cond:
                    if self._closing:  # `close` handed back the pending batches
                        self._reconnecting = False
                        return
                    self._open_locked(backoff)  # the new reader takes over
                return
        with self._cond:
            self._errors.append(self._stream_error(error))
            self._give_up()
            self._reconnecting = False
            self._cond.notify_all()

    def _give_up(self) -> None:
        """Drops the pending batches (their error hands them back) and starts a new stream id:
        the shard's count for the old one stays what it stored of it (see replay/accounting.py)."""
        self._pending.clear()
        self._writer_id, self._sequence, self._acknowledged_items = _new_stream_id(), 0, 0

    def _stream_error(self, error: grpc.RpcError | None, why: str | None = None) -> ReplayError:
        """The typed error of a failed stream (called holding the condition); None: ended
        unacknowledged, or `why` it ended (the client was closed)."""
        address = self._client.address
        what = f"insert stream ({len(self._pending)} unacknowledged batches not inserted)"
        if error is not None and error.code() != grpc.StatusCode.CANCELLED and not _retryable(error):
            return _typed_error(error, address, what, self._client.secure)
        # Unreachable, busy or cancelled past the retry budget: what never got an ack, decoded, so
        # a caller (ShardedReplay, the actors' writer) can send it elsewhere or count it lost.
        unacknowledged = [wire.decode_insert_request(b.request).columns() for b in self._pending]
        details = (why or "the stream ended without an acknowledgement") if error is None else error.details()
        hint = _unavailable_hint(details, self._client.secure)
        message = f"replay shard {address} unavailable during {what}: {details}{hint}"
        return ReplayUnavailableError(
            message,
            address=address,
            unacknowledged=unacknowledged,
            abandoned=(self._writer_id, self._acknowledged_items) if self._pending else None,
            resent_from=[receipt for b in self._pending for receipt in b.resent_from],
        )

    def _batch_error(self, batch: _PendingBatch, response) -> ReplayError:
        text = f"insert batch #{batch.sequence} ({batch.items} items) to {self._client.address}: {response.message}"
        if response.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]:
            return DeadlineExceededError(text, inserted=response.inserted)
        if response.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
            return InvalidBatchError(text)
        return ReplayError(f"{text} (code {response.code})")


class ReplayClient:
    """Client of one replay shard at `address` ("host:port").

    Args:
        address: the shard's gRPC address.
        max_in_flight: unacknowledged insert batches allowed before `insert` blocks.
        max_batch_mb: `insert` splits batches larger than this into several messages.
        retry_for_s: how long calls retry UNAVAILABLE before raising ReplayUnavailableError (a
            failed TLS handshake raises ReplayTLSError at once).
        max_message_mb: gRPC message size limit; must cover the largest sample response.
        credentials: the run's replay credentials: the client then connects with TLS, trusting
            only their certificate (under its `server_name`, whatever host the address names),
            and sends their token with every call. None: plaintext, no token (a shard started
            without credentials). The private key, if present, is dropped: clients never hold it.
        priorities: how `send_priorities` streams and coalesces (replay/priority_stream.py).
        same_host_feed: "auto": when the shard's Info names this host, samples arrive through a
            shared-memory region this client owns instead of the response (replay/same_host.py);
            "off": always in the response.
    """

    def __init__(
        self,
        address: str,
        *,
        max_in_flight: int = 32,
        max_batch_mb: float = 16.0,
        retry_for_s: float = 30.0,
        max_message_mb: int = 512,
        credentials: ReplayCredentials | None = None,
        priorities: PriorityStreamConfig | None = None,
        same_host_feed: str = "off",
    ):
        if same_host_feed not in FEED_MODES:
            raise ValueError(f"same_host_feed={same_host_feed!r}: expected one of {FEED_MODES}")
        self.address = address
        self.same_host_feed = same_host_feed
        self._feed = SameHostFeed(address) if same_host_feed == "auto" else None
        self._shard_host: str | None = None  # from the shard's Info
        self.priority_config = priorities or PriorityStreamConfig()
        self._priorities: PriorityStream | None = None
        self._closed_priorities = PriorityCounts()  # of streams a `close` ended
        self._priorities_closed = False
        self.credentials = None if credentials is None else credentials.for_clients()
        self._metadata = None if credentials is None else call_metadata(credentials.token)
        self.max_in_flight = max_in_flight
        self.max_batch_bytes = int(max_batch_mb * 1024 * 1024)
        self.retry_for_s = retry_for_s
        self._max_message_mb = max_message_mb
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub_obj: replay_pb2_grpc.ReplayServiceStub | None = None
        self._stream: _InsertStream | None = None
        self._closed_stream: _InsertStream | None = None  # its hand-back error, for the next flush
        self.closed = False
        """Whether `close` ran (a later call opens a new channel; a flush after it hands back what
        the close left unacknowledged)."""
        self._counters = (0, 0)  # (inserts, samples) of the shard as of the last response

    def __reduce__(self):
        # The address and the client's credentials (token and certificate; never a private key).
        return (_rebuild, (self.address, self.credentials, self.priority_config, self.same_host_feed))

    def __repr__(self) -> str:
        return f"ReplayClient({self.address!r}{', TLS' if self.secure else ''})"

    @property
    def secure(self) -> bool:
        """Whether the client connects with TLS and sends a token."""
        return self.credentials is not None

    def _open_channel(self) -> grpc.Channel:
        options = grpc_options(self._max_message_mb)
        credentials = self.credentials
        if credentials is None:
            return grpc.insecure_channel(self.address, options=options)
        tls = grpc.ssl_channel_credentials(root_certificates=credentials.cert_pem)
        # The certificate names the run's replay service, not a host: any shard address matches it.
        options = [*options, ("grpc.ssl_target_name_override", credentials.server_name)]
        return grpc.secure_channel(self.address, tls, options=options)

    def _stub(self) -> replay_pb2_grpc.ReplayServiceStub:
        with self._lock:
            if self._stub_obj is None:
                self._channel = self._open_channel()
                self._stub_obj = replay_pb2_grpc.ReplayServiceStub(self._channel)
                # The bulk messages are written and read by replay/wire.py, as bytes.
                self._stub_obj.SampleBytes = self._channel.unary_unary(
                    "/qfleet.replay.ReplayService/Sample",
                    request_serializer=replay_pb2.SampleRequest.SerializeToString,
                    response_deserializer=None,
                )
                self._stub_obj.InsertBytes = self._channel.stream_stream(
                    "/qfleet.replay.ReplayService/Insert",
                    request_serializer=None,
                    response_deserializer=replay_pb2.InsertResponse.FromString,
                )
            return self._stub_obj

    def _priority_stub(self):
        """The UpdatePrioritiesStream call, taking requests already serialized."""
        self._stub()
        with self._lock:
            return self._channel.stream_stream(
                "/qfleet.replay.ReplayService/UpdatePrioritiesStream",
                request_serializer=None,
                response_deserializer=replay_pb2.UpdatePrioritiesResponse.FromString,
            )

    def _call(self, method: str, request, what: str, timeout: float | None = None, retry: bool = True):
        """`method` with `request`; transient failures retried with backoff for `retry_for_s`.

        Raises:
            _RetryableFailure: with `retry=False`, a failure that would have been retried.
        """
        backoff = _Backoff(self.retry_for_s)
        while True:
            try:
                return getattr(self._stub(), method)(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                # A client closed under its call (its shard left the run) says so at once: the
                # caller (ShardedReplay) goes on with the other shards.
                if _retryable(err) and not self._closed_under(err):
                    if not retry:
                        raise _RetryableFailure() from None
                    if backoff.sleep():
                        continue
                raise _typed_error(err, self.address, what, self.secure) from None

    def _closed_under(self, err: grpc.RpcError) -> bool:
        """True when `err` is the CANCELLED of this client's own `close` during the call."""
        return err.code() == grpc.StatusCode.CANCELLED and self._channel is None

    # -- inserts ---------------------------------------------------------------------------------

    def insert(
        self,
        batch: Mapping[str, np.ndarray],
        timeout: float | None = None,
        *,
        writer_tag: int = 0,
        resent_from: Sequence[tuple[int, int, int, int]] = (),
    ) -> None:
        """Streams a batch (arrays with a leading batch dimension) to the shard; returns at once.

        Large batches are split into messages of at most `max_batch_mb`. An optional float64
        `priority` column sets initial priorities.

        Args:
            batch: column name -> array.
            timeout: seconds the batch may wait for the shard's rate limiter; None waits.
            writer_tag: who writes (`replay.writer_tag`), counted per writer by shards with a ledger.
            resent_from: receipts (shard id, stream id, items acknowledged, handed back 0/1) of
                streams given up on (ShardedReplay's failover); they ride with the batch's first
                message.

        Raises:
            InvalidBatchError / DeadlineExceededError: for an *earlier* batch that the shard
                rejected or that timed out (see `flush`).
            ReplayUnavailableError: the shard stayed unreachable for `retry_for_s`.
        """
        arrays = {name: np.asarray(value) for name, value in batch.items()}
        timeout_ms = 0 if timeout is None else max(1, int(math.ceil(timeout * 1000)))
        with self._lock:
            if self._stream is None:
                self._stream = _InsertStream(self)
            stream = self._stream
        receipts = tuple(tuple(receipt) for receipt in resent_from)
        for piece in self._split(arrays):
            stream.send(piece, timeout_ms, writer_tag, receipts)
            receipts = ()

    def _split(self, arrays: dict[str, np.ndarray]):
        lengths = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        nbytes = sum(a.nbytes for a in arrays.values())
        if len(lengths) != 1 or nbytes <= self.max_batch_bytes:
            yield arrays  # malformed batches go whole, for the server to name the problem
            return
        (length,) = lengths
        step = max(1, int(length * self.max_batch_bytes // nbytes))
        for start in range(0, length, step):
            yield {name: a[start : start + step] for name, a in arrays.items()}

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every inserted batch is acknowledged.

        Raises:
            InvalidBatchError: the shard rejected a batch (named by its sequence number).
            DeadlineExceededError: a batch's rate-limiter timeout passed, or this flush's did.
            ReplayUnavailableError: the shard stayed unreachable.
        """
        with self._lock:
            stream, closed, self._closed_stream = self._stream, self._closed_stream, None
        if closed is not None:  # the batches a `close` handed back (ShardWriter sends them elsewhere)
            closed.flush(timeout)
        if stream is not None:
            stream.flush(timeout)

    # -- samples and priorities ------------------------------------------------------------------

    def sample(self, batch_size: int, *, beta: float | None = None, timeout: float | None = None) -> Sample:
        """Draws one batch of `batch_size` items (waits for min_size / the rate limiter).

        Raises:
            DeadlineExceededError: nothing could be sampled within `timeout` seconds.
        """
        return self.sample_batches(batch_size, 1, beta=beta, timeout=timeout)[0]

    def sample_batches(
        self, batch_size: int, num_batches: int, *, beta: float | None = None, timeout: float | None = None
    ) -> list[Sample]:
        """Draws `num_batches` batches in one round trip (each stratified on its own)."""
        if batch_size < 1 or num_batches < 1:
            raise InvalidBatchError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
        what = f"sample({batch_size}x{num_batches})"
        stream = self._priorities
        if stream is not None:  # the sample should see the priorities sent before it
            stream.push()
        deadline = None if timeout is None else time.monotonic() + timeout
        # The server enforces the timeout and says why; the gRPC deadline only guards a lost server.
        # The shard bounds every wait (max_sample_wait_s): until the caller's deadline, ask again.
        feed = self._feed_for_samples()
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            request = replay_pb2.SampleRequest(
                batch_size=batch_size,
                num_batches=num_batches,
                beta=-1.0 if beta is None else beta,
                timeout_ms=0 if remaining is None else max(1, int(math.ceil(remaining * 1000))),
            )
            slot = None if feed is None else feed.take(batch_size * num_batches)
            if slot is not None:
                region, index = slot
                request.region, request.region_offset = region.name, region.offset(index)
                request.region_bytes, request.region_key = region.slot_bytes, region.key
            grpc_timeout = None if remaining is None else remaining + 10
            started = time.monotonic()
            try:
                # A call naming a slot is not resent as it is: the first attempt may still be
                # writing into the slot when a second one would (a torn batch).
                raw = self._call("SampleBytes", request, what, grpc_timeout, retry=slot is None)
                break
            except _RetryableFailure:
                feed.failed(*slot)  # retired: the first attempt may still be writing into it
                feed = None  # again inline, with the usual retries
            except DeadlineExceededError:
                # The shard's own deadline (well before the gRPC one) is answered before anything
                # is written: the slot is free again. The gRPC deadline's may leave it writing.
                if slot is not None:
                    shard_said = grpc_timeout is None or time.monotonic() - started < grpc_timeout - 1
                    if shard_said:
                        slot[0].release(slot[1])
                    else:
                        feed.failed(*slot)
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            except BaseException:
                if slot is not None:
                    feed.failed(*slot)
                raise
        if slot is None:
            response = wire.decode_sample_response(raw)  # every batch of the request as one Sample
            if feed is not None:
                feed.went_inline()
                feed.learn(response.data, batch_size * num_batches)
        else:
            response = self._read_slot(feed, raw, slot, batch_size * num_batches)
        self._counters = (response.inserts, response.samples)
        data, keys, probabilities, weights = response.data, response.keys, response.probabilities, response.weights
        samples = []
        for i in range(num_batches):
            part = slice(i * batch_size, (i + 1) * batch_size)
            samples.append(
                Sample(
                    data={name: column[part] for name, column in data.items()},
                    keys=keys[part],
                    probabilities=probabilities[part],
                    weights=weights[part],
                    table_size=response.table_size,
                    priority_mass=response.priority_mass,
                    inserts=response.inserts,
                    samples=response.samples,
                    boot_id=response.boot_id,
                )
            )
        return samples

    def _feed_for_samples(self) -> SameHostFeed | None:
        """The same-host feed, when it is on and the shard shares this host; else None (inline).

        The shard's host comes from its Info (a `ShardedReplay` reads it anyway; a lone client
        asks once)."""
        if self._feed is None:
            return None
        if self._shard_host is None:
            try:
                self.info(timeout=5.0)
            except ReplayError:
                return None  # inline this time; the sample call itself says what is wrong
        return self._feed if self._feed.usable_with(self._shard_host or "") else None

    def _read_slot(self, feed: SameHostFeed, raw: bytes, slot: tuple, items: int) -> Sample:
        """A response whose columns may be in the feed's slot: copied out, then the slot is freed."""
        region, index = slot
        try:
            view = region.view(index)  # mapped while the slot is held, even if `close` ran meanwhile
            response, answer = wire.decode_sample_reply(raw, view)
            if answer.used:  # copies: the slot is the next call's as soon as it is freed
                response = dataclasses.replace(response, data={k: np.array(v) for k, v in response.data.items()})
            del view
        except BaseException:
            feed.failed(region, index)
            raise
        feed.answered(region, index, used=answer.used, refused=answer.refused)
        if not answer.used:
            feed.learn(response.data, items)
        return response

    def same_host_feed_counts(self) -> FeedCounts | None:
        """What the same-host feed did for this client (None: the feed is off)."""
        return None if self._feed is None else self._feed.counts

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> PriorityUpdateResult:
        """Sets new priorities for sampled keys; keys of overwritten items are dropped and counted.

        Raises:
            InvalidBatchError: lengths differ or a priority is negative or not finite (nothing
                applied).
        """
        request = replay_pb2.UpdatePrioritiesRequest()
        codec.encode_tensor(np.asarray(keys, dtype=np.uint64), request.keys)
        codec.encode_tensor(np.asarray(priorities, dtype=np.float64), request.priorities)
        response = self._call("UpdatePriorities", request, "update_priorities")
        return PriorityUpdateResult(applied=response.applied, dropped_stale=response.dropped_stale)

    def send_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """Sends new priorities of sampled keys on this client's priority stream; returns at once
        (unless `priorities.max_in_flight` requests are unanswered). Coalesced as configured, and
        sent before this client's next sample. What became of them: `flush_priorities`,
        `priority_counts`.

        Raises:
            InvalidBatchError: keys and priorities are not equal 1-d shapes, or the shard refused
                an earlier update.
            ReplayUnavailableError: an earlier update's stream failed (counted lost) or the shard
                answered nothing for `priorities.max_wait_s`.
            ReplayError: the client is closed (the keys counted lost), or the shard stayed busy
                (its priority stream slots taken) for `retry_for_s`.
        """
        with self._lock:
            if self._priorities_closed:  # no new stream on a closed client: refused, and counted
                lost = int(np.asarray(keys).size)
                self._closed_priorities += PriorityCounts(lost=lost)
                raise ReplayError(f"replay client of {self.address} is closed: {lost} priority updates counted lost")
            if self._priorities is None:
                self._priorities = PriorityStream(self, self.priority_config)
            stream = self._priorities
        stream.send(keys, priorities)

    def flush_priorities(self, timeout: float | None = None) -> PriorityCounts:
        """Sends held priorities and waits for every answer; returns `priority_counts()`.

        Raises:
            DeadlineExceededError: updates still unanswered after `timeout` seconds.
            as `send_priorities`, for a failed earlier update.
        """
        stream = self._priorities
        if stream is not None:
            stream.flush(timeout)
        return self.priority_counts()

    def priority_counts(self) -> PriorityCounts:
        """Keys sent with `send_priorities` so far: applied, dropped as stale, lost, rejected."""
        stream = self._priorities
        return self._closed_priorities + (stream.counts() if stream is not None else PriorityCounts())

    def credit(self, items: int, timeout: float | None = None) -> int:
        """Counts up to `items` items against the shard's rate limiter as if sampled, without a
        draw, to free its waiting writers; returns how many were credited (the shard stops at its
        window's lower edge, and credits nothing without a ratio). They are no samples: the
        shard's `samples` counter does not change.
        """
        return self._call("Credit", replay_pb2.CreditRequest(items=items), "credit", timeout).credited

    # -- state -----------------------------------------------------------------------------------

    def info(self, timeout: float | None = None) -> ReplayInfo:
        """Size, counters, priority mass and rate-limiter state of the shard."""
        response = self._call("Info", replay_pb2.InfoRequest(), "info", timeout)
        self._counters = (response.inserts, response.samples)
        self._shard_host = response.host
        limiter = response.rate_limiter
        return ReplayInfo(
            address=self.address,
            shard_id=response.shard_id,
            size=response.size,
            capacity=response.capacity,
            inserts=response.inserts,
            samples=response.samples,
            priority_mass=response.priority_mass,
            dropped_priority_updates=response.dropped_priority_updates,
            rejected_batches=response.rejected_batches,
            selector=response.selector,
            spec=Spec.from_json(response.spec_json),
            checkpoint_sequence=response.checkpoint_sequence,
            lost_transitions=response.lost_transitions,
            boot_id=response.boot_id,
            host=response.host,
            rate_limiter=RateLimiterState(
                samples_per_insert=limiter.samples_per_insert or None,
                min_size=limiter.min_size,
                min_diff=limiter.min_diff,
                max_diff=limiter.max_diff,
                diff=limiter.diff,
                waiting_inserts=limiter.waiting_inserts,
                waiting_samples=limiter.waiting_samples,
                insert_wait_seconds=limiter.insert_wait_seconds,
                sample_wait_seconds=limiter.sample_wait_seconds,
                credited=limiter.credited,
            ),
        )

    def stats(self) -> ReplayStats:
        """The shard's counters as of the last sample or info response (no RPC).

        A lone shard enforces no global ratio here (its own limiter is in `info()`), so the target
        is 0; `run` is "" as the client knows only its address.
        """
        inserts, samples = self._counters
        return make_stats("", inserts, samples)

    def checkpoint(self) -> CheckpointResult:
        """Asks the shard to write a checkpoint now; returns where."""
        response = self._call("Checkpoint", replay_pb2.CheckpointRequest(), "checkpoint")
        return CheckpointResult(path=response.path, size=response.size, sequence=response.sequence)

    def close(self, priority_timeout: float = 10.0) -> None:
        """Ends the priority stream (after its answers, up to `priority_timeout` s), the insert
        stream (after pending acks) and the channel."""
        with self._lock:
            priorities, self._priorities = self._priorities, None
            self._priorities_closed = True  # a send from now on is refused, not a new stream
        if priorities is not None:  # what it holds goes first; what stays unanswered counts lost
            counts = priorities.close(priority_timeout)
            with self._lock:
                self._closed_priorities += counts
        with self._lock:
            stream, self._stream = self._stream, None
            self._closed_stream, self.closed = stream, True
            channel, self._channel, self._stub_obj = self._channel, None, None
        if stream is not None:
            stream.close()
        if channel is not None:
            channel.close()
        if self._feed is not None:
            self._feed.close()

    def __enter__(self) -> ReplayClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rebuild(
    address: str,
    credentials: ReplayCredentials | None,
    priorities: PriorityStreamConfig | None = None,
    same_host_feed: str = "off",
) -> ReplayClient:
    return ReplayClient(address, credentials=credentials, priorities=priorities, same_host_feed=same_host_feed)
