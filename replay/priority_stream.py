"""`PriorityStream`: a learner's priority updates to one shard, sent without waiting for replies.

The unary `UpdatePriorities` call costs a round trip and a gRPC call per update, and the shard's
CPU per call is far more than applying 256 priorities. A stream (`UpdatePrioritiesStream`)
carries the updates one request after another, the shard answering each in order, and `send`
returns as soon as the update is queued: at most `max_in_flight` updates wait unanswered (then
`send` waits, as an insert does on a full window). Updates queued while the previous request is on
the wire ride together in the next one (all of them, in order: nothing is merged away), so the
stream keeps up with a caller however small its updates.

With `coalesce_keys` the client also coalesces: updates are held, the latest priority of each key
wins, and they go as one request once `coalesce_keys` keys are held, once the oldest has waited
`coalesce_s`, and before every sample of the client (`push`). `push` does not wait for the
answers: a sample may still see older priorities of keys whose update is on the wire.

Nothing is lost silently: `counts()` says what the shard applied, dropped as stale (the key's slot
was overwritten since it was sampled), refused, and what was lost (held or unanswered when the
stream failed or was closed: a dead or hung shard). A failed stream's error (at most one waits)
is raised by the next `send` or `flush`, and the next `send` opens a new stream; until then
neither the timer nor `push` reopens. A shard that refuses the stream as busy (all its priority
stream slots taken) is tried again with backoff for the client's `retry_for_s`, the updates kept.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from replay import codec
from replay._proto import replay_pb2
from replay.errors import DeadlineExceededError, InvalidBatchError, ReplayError, ReplayUnavailableError
from replay.spec import validate_priorities

if TYPE_CHECKING:
    from replay.client import ReplayClient

MAX_REQUEST_KEYS = 1 << 20
"""Keys per request at most: a shard's default `max_priority_updates`."""


@dataclass(frozen=True)
class PriorityStreamConfig:
    """How a client streams priority updates."""

    max_in_flight: int = 64
    """Updates queued or unanswered before `send` waits for the shard (each `send`, or each
    coalesced batch, is one update)."""
    coalesce_keys: int = 16_384
    """N > 0: updates are held (latest priority per key) and sent together once N keys are held,
    after `coalesce_s`, or before the client samples. 0: every `send` goes at once."""
    coalesce_s: float = 0.02
    """With coalescing, the longest an update is held before it is sent."""
    max_wait_s: float | None = None
    """How long `send` waits for room in a full window before giving the stream up: its unanswered
    updates are counted lost and ReplayUnavailableError is raised (a hung shard). `flush` without
    a timeout also stops after this long without an answer. None: the client's `retry_for_s`
    (30 s; a ShardedReplay's clients: its `failover_after_s`, as its inserts and samples)."""

    max_request_keys: int = MAX_REQUEST_KEYS
    """Most keys one request carries when queued updates are merged: the shard's
    `max_priority_updates` (a shard refuses larger requests). One `send` larger than this still
    goes alone, and is refused."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_request_keys <= MAX_REQUEST_KEYS:
            raise ValueError(f"max_request_keys must be in [1, {MAX_REQUEST_KEYS}], got {self.max_request_keys}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if not 0 <= self.coalesce_keys <= self.max_request_keys:
            raise ValueError(
                f"coalesce_keys must be in [0, max_request_keys={self.max_request_keys}], got {self.coalesce_keys}"
            )
        if self.coalesce_s <= 0 or (self.max_wait_s is not None and self.max_wait_s <= 0):
            raise ValueError("coalesce_s and max_wait_s must be > 0")


@dataclass(frozen=True)
class PriorityCounts:
    """What became of the keys sent on priority streams so far."""

    applied: int = 0
    dropped_stale: int = 0
    """Keys whose slot had been overwritten since they were sampled (as the unary call counts)."""
    lost: int = 0
    """Keys never answered: held or unanswered when the stream failed (a dead or hung shard) or was
    closed, or sent to a shard that had left the run."""
    rejected: int = 0
    """Keys of requests the shard refused as invalid (their error is raised by the next call)."""
    coalesced: int = 0
    """Updates replaced by a newer priority of the same key before they were sent."""
    unused: int = 0
    """Keys not sent because their shard's selector draws uniformly and would discard them."""

    def __add__(self, other: PriorityCounts) -> PriorityCounts:
        return PriorityCounts(
            self.applied + other.applied,
            self.dropped_stale + other.dropped_stale,
            self.lost + other.lost,
            self.rejected + other.rejected,
            self.coalesced + other.coalesced,
            self.unused + other.unused,
        )


def latest_per_key(keys: np.ndarray, priorities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last priority given to each key (keys sorted): what applying them in order leaves.

    An unstable sort, then the largest position within each run of equal keys: a quarter of the
    time of np.unique(return_index=True), whose stable sort is slow on uint64.
    """
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return ordered[starts], priorities[np.maximum.reduceat(order, starts)]


class _Update:
    """One update queued for the stream: a `send`'s arrays, or the arrays held for coalescing."""

    __slots__ = ("keys", "priorities", "size", "coalesce")

    def __init__(self, keys: list[np.ndarray], priorities: list[np.ndarray], size: int, coalesce: bool):
        self.keys, self.priorities, self.size, self.coalesce = keys, priorities, size, coalesce


def _request(updates: list[_Update]) -> tuple[bytes, int, int]:
    """The request carrying `updates` in order, its key count, and how many keys coalescing
    dropped (an older priority of a key the request also carries)."""
    keys = [k for update in updates for k in update.keys]
    priorities = [p for update in updates for p in update.priorities]
    keys = keys[0] if len(keys) == 1 else np.concatenate(keys)
    priorities = priorities[0] if len(priorities) == 1 else np.concatenate(priorities)
    given = keys.size
    if any(update.coalesce for update in updates):
        keys, priorities = latest_per_key(keys, priorities)
    request = replay_pb2.UpdatePrioritiesRequest()
    codec.encode_tensor(keys, request.keys)
    codec.encode_tensor(priorities, request.priorities)
    return request.SerializeToString(), keys.size, given - keys.size


class _OpenCall:
    """One live `UpdatePrioritiesStream` call: the updates it will send next (`ready`), those
    being made into a request (`building`), and the requests it sent and has not had answered
    (`unanswered`: keys, updates and bytes of each, oldest first, kept for a re-send)."""

    def __init__(self, resend: tuple[tuple[int, int, bytes], ...]):
        self.ready: list[_Update] = []
        self.building: list[_Update] = []
        self.unanswered: collections.deque[tuple[int, int, bytes]] = collections.deque(resend)
        self.resend = collections.deque(raw for _, _, raw in resend)  # popped as sent
        self.answered = False
        self.backing_off = False  # refused as busy: the reader waits to reopen
        self.ended = False
        self.call = None

    def in_flight(self) -> int:
        """Updates queued or unanswered (the window)."""
        return len(self.ready) + len(self.building) + sum(updates for _, updates, _ in self.unanswered)

    def keys(self) -> int:
        queued = sum(update.size for update in self.ready) + sum(update.size for update in self.building)
        return queued + sum(keys for keys, _, _ in self.unanswered)


class PriorityStream:
    """Priority updates to one shard on one `UpdatePrioritiesStream` (see the module docstring).

    Made by `ReplayClient` (its channel, TLS and token); thread-safe.
    """

    def __init__(self, client: ReplayClient, config: PriorityStreamConfig):
        self._client = client
        self.config = config
        self._cond = threading.Condition()
        self._open: _OpenCall | None = None
        self._error: ReplayError | None = None  # for the next send/flush: one at most
        self._error_from_stream = False  # it is a failed stream's (cleared when a later one answers)
        self._answers = 0
        self._backoff = None  # while a busy shard refuses the stream: the client's backoff
        self._request_keys = config.max_request_keys
        self._max_wait_s = client.retry_for_s if config.max_wait_s is None else config.max_wait_s
        self._applied = self._dropped = self._lost = self._rejected = self._coalesced = 0
        self._held: list[tuple[np.ndarray, np.ndarray]] = []
        self._held_keys = 0
        self._held_since = 0.0
        self._closed = False
        self._timer: threading.Thread | None = None
        if config.coalesce_keys:
            self._timer = threading.Thread(target=self._send_held_in_time, name="replay-priorities", daemon=True)
            self._timer.start()

    # -- the caller's side ----------------------------------------------------------------------

    def send(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """Queues new priorities of sampled keys; returns at once unless `max_in_flight` updates
        are queued or unanswered.

        Raises:
            InvalidBatchError: keys and priorities are not equal 1-d shapes, or a priority is
                negative or not finite (nothing queued, nothing counted); or the shard refused an
                earlier request.
            ReplayUnavailableError / ReplayAuthenticationError / ReplayTLSError: an earlier
                request's stream failed, or the window stayed full for `max_wait_s`.
            ReplayError: the stream was closed, or the shard stayed busy for `retry_for_s`.
            Whenever an earlier failure is raised, this update is not sent and counts as lost.
        """
        # Copies: the request is made later, on another thread, and the caller may reuse its arrays.
        keys = np.array(keys, dtype=np.uint64)
        priorities = np.array(priorities, dtype=np.float64)
        if keys.ndim != 1:
            raise InvalidBatchError(f"keys must be one-dimensional, got shape {keys.shape}")
        # Two reductions (a NaN fails both comparisons); validate_priorities names the problem.
        if priorities.shape != keys.shape or not (
            priorities.size == 0 or 0 <= priorities.min() <= priorities.max() < np.inf
        ):
            validate_priorities(priorities, keys.shape[0])
        if not keys.size:
            return
        with self._cond:
            if self._closed:
                self._lost += keys.size
                raise ReplayError(
                    f"priority stream to {self._client.address} is closed ({keys.size} keys counted lost)"
                )
            if self._error is not None:  # this update is not sent either: counted, so nothing goes silently
                self._lost += keys.size
                self._raise_error()
            if not self.config.coalesce_keys:
                try:
                    self._wait_for_room_locked()
                except ReplayError:
                    self._lost += keys.size
                    raise
                self._queue_locked(_Update([keys], [priorities], keys.size, coalesce=False))
                return
            if not self._held:
                self._held_since = time.monotonic()
                self._cond.notify_all()  # the timer starts counting
            self._held.append((keys, priorities))
            self._held_keys += keys.size
            if self._held_keys >= self.config.coalesce_keys:
                self._send_held_locked()

    def push(self) -> None:
        """Queues the held updates now (before a sample), without waiting for their answers;
        errors wait for the next `send`/`flush`. Nothing is sent while an error waits."""
        with self._cond:
            if self._held and self._error is None:
                try:
                    self._send_held_locked()
                except ReplayError as exc:
                    self._keep_error(exc)

    def flush(self, timeout: float | None = None) -> PriorityCounts:
        """Sends the held updates and waits until every request is answered; returns `counts()`.
        Without a timeout it stops once the shard has answered nothing for `max_wait_s`.

        Raises:
            DeadlineExceededError: requests still unanswered after `timeout` seconds.
            ReplayUnavailableError: no answer for `max_wait_s` (timeout None): the stream is
                given up, its unanswered updates counted lost.
            the error of a failed request or stream, as `send` does.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._raise_error()
            if self._held:
                self._send_held_locked()
            progress, last = time.monotonic(), self._answers
            while self._open is not None and self._open.in_flight():
                now = time.monotonic()
                if self._answers != last or self._open.backing_off:
                    progress, last = now, self._answers
                remaining = None if deadline is None else deadline - now
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceededError(
                        f"priority flush to {self._client.address}: {self._open.in_flight()} updates unanswered "
                        f"after {timeout}s"
                    )
                if deadline is None and now - progress >= self._max_wait_s:
                    raise self._give_up_locked()
                wait = self._max_wait_s - (now - progress)
                self._cond.wait(wait if remaining is None else min(wait, remaining))
            self._raise_error()
            return self._counts_locked()

    def counts(self) -> PriorityCounts:
        """What the shard applied, dropped as stale, and what was lost or refused, so far."""
        with self._cond:
            return self._counts_locked()

    def close(self, timeout: float = 10.0) -> PriorityCounts:
        """Sends what is held, waits up to `timeout` s for the answers, then ends the stream;
        whatever stays unanswered counts as lost. Never raises; returns `counts()`."""
        try:
            self.flush(timeout)
        except ReplayError:
            pass  # counted: lost or rejected
        with self._cond:
            self._closed = True
            self._lost += self._held_keys
            self._held, self._held_keys = [], 0
            open_call = self._end_locked()
        if open_call is not None and open_call.call is not None:
            open_call.call.cancel()  # answered or counted lost by now: nothing left to wait for
        if self._timer is not None:
            self._timer.join(timeout=5)
        return self.counts()

    # -- sending ----------------------------------------------------------------------------------

    def _counts_locked(self) -> PriorityCounts:
        return PriorityCounts(self._applied, self._dropped, self._lost, self._rejected, self._coalesced)

    def _keep_error(self, error: ReplayError, from_stream: bool = False) -> None:
        """Keeps `error` for the next `send`/`flush`: one at most (the first), as one failure
        must not cost a caller (a ShardedReplay failing the shard over) several."""
        if self._error is None:
            self._error, self._error_from_stream = error, from_stream

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _end_locked(self) -> _OpenCall | None:
        """Detaches the open call, counting what it has not answered as lost; returns it."""
        open_call, self._open = self._open, None
        if open_call is not None:
            self._lost += open_call.keys()
            open_call.ready.clear()
            open_call.building.clear()
            open_call.unanswered.clear()
            open_call.resend.clear()
            open_call.ended = True
        self._cond.notify_all()
        return open_call

    def _send_held_locked(self) -> None:
        """Queues the held updates as one, to be coalesced (latest per key) as the request is made:
        on gRPC's thread, not the caller's. Waits for room first and only then takes what is held,
        in one step: an older update can never be queued after a newer one."""
        try:
            self._wait_for_room_locked()
        except ReplayError:
            self._lost += self._held_keys
            self._held, self._held_keys = [], 0
            raise
        if not self._held:  # another thread queued them while this one waited
            return
        held, count = self._held, self._held_keys
        self._held, self._held_keys = [], 0
        self._queue_locked(_Update([k for k, _ in held], [p for _, p in held], count, coalesce=True))

    def _wait_for_room_locked(self) -> None:
        """Waits until the window has room; raises (the window's unanswered updates counted lost)
        when the shard answers nothing for `max_wait_s`, or the error a failed stream left."""
        deadline = time.monotonic() + self._max_wait_s
        while self._open is not None and self._open.in_flight() >= self.config.max_in_flight:
            if self._open.backing_off:  # a busy shard: the reader retries up to retry_for_s
                deadline = time.monotonic() + self._max_wait_s
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._give_up_locked()
            self._cond.wait(remaining)
        if self._closed:
            raise ReplayError(f"priority stream to {self._client.address} is closed")
        self._raise_error()

    def _queue_locked(self, update: _Update) -> None:
        if self._open is None:
            self._open_locked(())
        self._open.ready.append(update)
        self._cond.notify_all()  # the call's request iterator takes it

    def _give_up_locked(self) -> ReplayUnavailableError:
        """The shard answers nothing: ends the call (counting what it did not answer as lost) and
        returns the error to raise; the next `send` opens a new stream."""
        unanswered = self._open.keys()
        open_call = self._end_locked()
        open_call.call.cancel()
        return ReplayUnavailableError(
            f"replay shard {self._client.address} answered no priority update for {self._max_wait_s}s "
            f"({unanswered} keys unanswered, counted lost)",
            address=self._client.address,
        )

    def _open_locked(self, resend: tuple[tuple[int, int, bytes], ...]) -> None:
        """Starts a call and its reader; `resend` (requests of an ended call) go first."""
        open_call = _OpenCall(resend)
        open_call.call = self._client._priority_stub()(self._requests(open_call), metadata=self._client._metadata)
        self._open = open_call
        threading.Thread(target=self._read, args=(open_call,), name="replay-priority-answers", daemon=True).start()

    def _reopen_locked(self, open_call: _OpenCall) -> None:
        """Moves everything `open_call` holds, unanswered requests first, to a new call."""
        ready, resend = open_call.building + open_call.ready, tuple(open_call.unanswered)
        open_call.ready, open_call.building, open_call.unanswered = [], [], collections.deque()
        open_call.resend.clear()
        open_call.ended = True
        self._open_locked(resend)
        self._open.ready.extend(ready)
        self._cond.notify_all()

    def _requests(self, open_call: _OpenCall):
        """The call's requests: each takes every update ready when gRPC asks for the next one."""
        while True:
            with self._cond:
                if open_call.ended:
                    return
                if not open_call.resend:
                    break
                raw = open_call.resend.popleft()  # dropped here once sent (`unanswered` keeps it)
            yield raw
        while True:
            with self._cond:
                while not open_call.ready and not open_call.ended:
                    self._cond.wait()
                if open_call.ended:
                    return
                taken, keys = 0, 0
                while taken < len(open_call.ready) and (
                    not taken or keys + open_call.ready[taken].size <= self._request_keys
                ):
                    keys += open_call.ready[taken].size
                    taken += 1
                open_call.building, open_call.ready = open_call.ready[:taken], open_call.ready[taken:]
                updates = open_call.building
            raw, keys, coalesced = _request(updates)  # outside the lock: the caller goes on sending
            with self._cond:
                if open_call.ended or open_call.building is not updates:  # closed, given up or moved meanwhile
                    return
                open_call.building = []
                self._coalesced += coalesced
                open_call.unanswered.append((keys, len(updates), raw))
            yield raw

    def _read(self, open_call: _OpenCall) -> None:
        error = None
        try:
            for response in open_call.call:
                with self._cond:
                    if not open_call.unanswered:  # given up on (counted lost) while this answer came
                        continue
                    keys, _, _ = open_call.unanswered.popleft()
                    open_call.answered = True
                    self._answers += 1
                    self._backoff = None
                    if self._error_from_stream:  # a later stream answers: the shard is back
                        self._error, self._error_from_stream = None, False
                    if response.code:
                        self._rejected += keys
                        self._keep_error(
                            InvalidBatchError(
                                f"priority update of {keys} keys to {self._client.address}: {response.message}"
                            )
                        )
                    else:
                        self._applied += response.applied
                        self._dropped += response.dropped_stale
                    self._cond.notify_all()
        except grpc.RpcError as err:
            error = err
        busy = error is not None and not open_call.answered and _refused_busy(error)
        with self._cond:
            if self._open is not open_call:  # given up on or closed: counted already
                open_call.ended = True
                self._cond.notify_all()
                return
            ended = error is None or error.code() == grpc.StatusCode.CANCELLED  # the shard's age or idle limit
            if ended and open_call.in_flight():
                # The shard ended the stream before answering the last requests: a new call sends
                # them again, in order, before anything newer.
                self._reopen_locked(open_call)
                return
            if busy:  # refused before any answer: all the shard's priority slots taken
                open_call.backing_off = True
                self._cond.notify_all()
                if self._backoff is None:
                    from replay.client import _Backoff  # the client's backoff, over its retry_for_s

                    self._backoff = _Backoff(self._client.retry_for_s)
                backoff = self._backoff
            else:
                unanswered = open_call.keys()
                self._end_locked()
                # Ended by the shard's idle or age limit with nothing unanswered: the next send
                # reopens, nothing to say.
                if unanswered or not ended:
                    self._keep_error(self._stream_error(error, unanswered), from_stream=True)
                return
        retry = backoff.sleep()  # outside the lock: senders go on queueing (the window bounds them)
        with self._cond:
            if self._open is not open_call:
                open_call.ended = True
                return
            if retry:
                self._reopen_locked(open_call)
                return
            self._backoff = None
            unanswered = open_call.keys()
            self._end_locked()
            self._keep_error(
                ReplayError(
                    f"replay shard {self._client.address} is busy: it refused the priority stream for "
                    f"{self._client.retry_for_s}s, all its priority stream slots taken ({unanswered} keys "
                    "counted lost)"
                ),
                from_stream=True,
            )

    def _stream_error(self, error: grpc.RpcError | None, unanswered: int) -> ReplayError:
        from replay.client import _typed_error  # the client's one mapping of gRPC failures

        what = f"priority stream ({unanswered} keys unanswered, counted lost)"
        if error is None:
            return ReplayUnavailableError(
                f"replay shard {self._client.address} ended the {what}", address=self._client.address
            )
        return _typed_error(error, self._client.address, what, self._client.secure)

    def _send_held_in_time(self) -> None:
        """Sends held updates once the oldest has waited `coalesce_s` (the coalescing timer);
        not while an error waits for the caller (it reopens with the next `send`)."""
        with self._cond:
            while not self._closed:
                if not self._held or self._error is not None:
                    self._cond.wait(None if not self._held else self.config.coalesce_s)
                    continue
                remaining = self._held_since + self.config.coalesce_s - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                try:
                    self._send_held_locked()
                except ReplayError as exc:
                    self._keep_error(exc)


def _refused_busy(error: grpc.RpcError) -> bool:
    """The shard refused the call as busy (all its priority stream slots taken, or gRPC's own
    concurrent-RPC cap): worth retrying."""
    from replay.client import _shard_busy  # the client's one test of a busy refusal

    return _shard_busy(error)
