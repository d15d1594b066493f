"""`ReplayServer`: one replay shard served over gRPC.

The server owns a `Table`, restores it from the newest good checkpoint at start, writes
checkpoints on request / every `checkpoint_every_s` / at stop, and serves Prometheus /metrics.
Given `ReplayCredentials` it serves TLS only and refuses every call without the run's token
(replay/auth.py); without them it serves plaintext, for in-process tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import redis

from replay import checkpoint as ckpt
from replay import codec, wire
from replay._proto import replay_pb2, replay_pb2_grpc
from replay.accounting import ShardAccounting
from replay.admission import Slots, StreamWatch
from replay.allocator import keep_freed_memory
from replay.auth import TokenInterceptor
from replay.codec import grpc_options
from replay.config import ReplayConfig
from replay.credentials import ReplayCredentials
from replay.errors import (
    DeadlineExceededError,
    InvalidBatchError,
    RegionRefusedError,
    RequestCancelledError,
    TableClosedError,
)
from replay.http_server import start_metrics_server
from replay.insert_ledger import InsertLedger, Receipt, open_ledger
from replay.limits import SHARD_BUSY, check_priority_update, check_sample_request
from replay.metrics import ReplayMetrics
from replay.rate_limiter import RateLimiter
from replay.redis_connection import redact_url
from replay.registry import ShardRecord, ShardRegistry, new_record
from replay.same_host import RegionWriter, host_identity
from replay.selectors import make_selector
from replay.spec import PRIORITY_COLUMN, Spec
from replay.table import Table, TableInfo
from replay.writers import WriterSequences

log = logging.getLogger(__name__)


def importance_weights(probabilities: np.ndarray, table_size: int, beta: float, batch_size: int) -> np.ndarray:
    """(N * P(i))**-beta, normalised by the largest weight within each batch (Schaul et al. 2016)."""
    weights = (table_size * probabilities) ** (-beta)
    per_batch = weights.reshape(-1, batch_size)
    return (per_batch / per_batch.max(axis=1, keepdims=True)).reshape(-1)


_SERVICE = "qfleet.replay.ReplayService"


def _serialized(message: bytes) -> bytes:
    return message


def add_servicer(servicer: replay_pb2_grpc.ReplayServiceServicer, server: grpc.Server) -> None:
    """Registers the service as the generated `add_ReplayServiceServicer_to_server` does, except
    that Insert requests and Sample responses stay bytes, read and written by replay/wire.py
    (the same wire format, fewer copies)."""

    def unary(behaviour, request, response_serializer):
        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=request.FromString, response_serializer=response_serializer
        )

    handlers = {
        "Insert": grpc.stream_stream_rpc_method_handler(
            servicer.Insert,
            request_deserializer=_serialized,
            response_serializer=replay_pb2.InsertResponse.SerializeToString,
        ),
        "Sample": unary(servicer.Sample, replay_pb2.SampleRequest, _serialized),
        "Credit": unary(servicer.Credit, replay_pb2.CreditRequest, replay_pb2.CreditResponse.SerializeToString),
        "UpdatePriorities": unary(
            servicer.UpdatePriorities,
            replay_pb2.UpdatePrioritiesRequest,
            replay_pb2.UpdatePrioritiesResponse.SerializeToString,
        ),
        "UpdatePrioritiesStream": grpc.stream_stream_rpc_method_handler(
            servicer.UpdatePrioritiesStream,
            request_deserializer=replay_pb2.UpdatePrioritiesRequest.FromString,
            response_serializer=replay_pb2.UpdatePrioritiesResponse.SerializeToString,
        ),
        "Info": unary(servicer.Info, replay_pb2.InfoRequest, replay_pb2.InfoResponse.SerializeToString),
        "Checkpoint": unary(
            servicer.Checkpoint, replay_pb2.CheckpointRequest, replay_pb2.CheckpointResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)


def insert_response(sequence: int, inserted: int) -> replay_pb2.InsertResponse:
    """What an Insert stream answers batch `sequence` with, for any servicer `add_servicer` registers."""
    return replay_pb2.InsertResponse(sequence=sequence, inserted=inserted)


def _cancellation(context: grpc.ServicerContext) -> threading.Event:
    """An event set when the call ends (its client went away); table waits poll it.

    The callback runs on gRPC's polling thread, so it only sets the event: no lock taken there.
    """
    ended = threading.Event()
    if not context.add_callback(ended.set):
        ended.set()
    return ended


_running_servers: weakref.WeakSet[ReplayServer] = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _stop_servers_at_exit() -> None:
    """Stops every server still running when the interpreter exits, before it joins threads.

    gRPC serves on a `ThreadPoolExecutor`, whose worker threads the interpreter joins at exit
    (concurrent.futures registers that join with `threading._register_atexit`). A worker serving
    an open Insert stream blocks reading it until the client hangs up, so a script that raised,
    or simply ended, with a server running never exited. Stopping the servers first (no grace, no
    checkpoint: as if the process had died, which the registry's loss accounting covers) cancels
    those calls, and the join returns at once. Hooks run in reverse order of registration, and
    this one is registered after the executor module is imported, so it runs before the join.
    """
    for server in list(_running_servers):
        try:
            server.stop(grace=0, checkpoint=False)
        except Exception as exc:  # the process is exiting: stop the others regardless
            log.warning("replay shard %d did not stop cleanly at exit: %s", server.config.shard_id, exc)


def _stop_at_exit(server: ReplayServer) -> None:
    """Has `_stop_servers_at_exit` stop `server` if it is still running when the interpreter exits."""
    global _exit_hook_registered
    with _exit_hook_lock:
        if not _exit_hook_registered:
            # CPython's hook for exactly this (concurrent.futures uses it); atexit runs too late,
            # after the threads are joined.
            threading._register_atexit(_stop_servers_at_exit)
            _exit_hook_registered = True
    _running_servers.add(server)


class _LedgerProgress:
    """One batch's insert as the shard's ledger sees it (see `Table.insert`'s `progress`)."""

    __slots__ = ("_ledger", "_stream_id", "_writer_tag", "_sequence")

    def __init__(self, ledger: InsertLedger, stream_id: int, writer_tag: int, sequence: int):
        self._ledger, self._stream_id, self._writer_tag, self._sequence = ledger, stream_id, writer_tag, sequence

    def stored(self) -> int:
        return self._ledger.stored(self._stream_id, self._sequence)

    def record(self, count: int) -> Callable[[], None]:
        return self._ledger.record(self._stream_id, self._writer_tag, self._sequence, count)


class _Servicer(replay_pb2_grpc.ReplayServiceServicer):
    def __init__(self, server: ReplayServer, streams: StreamWatch):
        config = server.config
        self._server = server
        self._table = server.table
        self._metrics = server.metrics
        self._streams = streams
        self._stream_slots = Slots(config.max_insert_streams)
        self._sample_slots = Slots(config.max_concurrent_samples)
        self._priority_slots = Slots(config.max_priority_streams)
        self._writers = WriterSequences(config.max_tracked_writers)
        self._columns = frozenset([*server.spec, PRIORITY_COLUMN])
        self._insert_latency = self._metrics.latency("insert")
        self._sample_latency = self._metrics.latency("sample")
        self._update_latency = self._metrics.latency("update_priorities")
        self._regions = server.regions

    def Insert(self, request_iterator, context):
        slot = self._stream_slots.acquire(context)
        if slot is None:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{SHARD_BUSY}: it serves at most {self._stream_slots.limit} Insert streams at once "
                "(max_workers - max_concurrent_samples - max_priority_streams - 4)",
            )
        cancelled = _cancellation(context)
        stream = self._streams.opened(context)
        try:
            for request in request_iterator:
                self._streams.busy(stream)
                started = time.perf_counter()
                response = self._insert_one(request, context, cancelled)
                self._insert_latency.observe(time.perf_counter() - started)
                # Waiting from here: a client that never reads its replies blocks the yield, and
                # the watch cancels the stream after insert_idle_s.
                self._streams.waiting(stream)
                yield response
                if self._streams.expired(stream):
                    return  # the client reopens and re-sends what this stream left unacknowledged
        finally:
            self._streams.closed(stream)
            slot.release()

    def _insert_one(self, raw: bytes, context, cancelled: threading.Event) -> replay_pb2.InsertResponse:
        try:
            request = wire.decode_insert_request(raw)
        except InvalidBatchError as exc:  # not even the sequence could be read
            self._server.count_rejected()
            code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            return replay_pb2.InsertResponse(code=code, message=str(exc))
        response = replay_pb2.InsertResponse(sequence=request.sequence)
        ledger = self._server.ledger
        progress = None
        if ledger is not None:  # it counts every stream, and de-duplicates those it tracks across restarts too
            if request.resent_from:
                receipts = (
                    Receipt(s, stream, acked, bool(back), request.writer_tag)
                    for s, stream, acked, back in request.resent_from
                )
                ledger.receive(receipts, request.writer_tag)
            if request.receipts_beyond:  # not read: shown as dropped receipts, never silently lost
                ledger.count_unread(request.receipts_beyond)
            progress = _LedgerProgress(ledger, request.writer_id, request.writer_tag, request.sequence)
        # Without a ledger, or for a stream beyond its slots (a new one gets a slot on its first
        # write: never seen here), the last sequences in memory skip a re-sent batch.
        in_memory = ledger is None or not ledger.tracks(request.writer_id)
        if in_memory and request.sequence and self._writers.seen(request.writer_id, request.sequence):
            return response  # a re-sent batch after a reconnect: it is in the table already
        try:
            arrays = request.columns(self._columns)
            timeout = request.timeout_ms / 1000.0 if request.timeout_ms else None
            response.inserted = self._table.insert(arrays, timeout=timeout, cancelled=cancelled, progress=progress)
        except InvalidBatchError as exc:
            self._server.count_rejected()
            response.code, response.message = grpc.StatusCode.INVALID_ARGUMENT.value[0], str(exc)
        except DeadlineExceededError as exc:
            response.code, response.message = grpc.StatusCode.DEADLINE_EXCEEDED.value[0], str(exc)
            response.inserted = exc.inserted
        except (TableClosedError, RequestCancelledError) as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if request.sequence and (ledger is None or not ledger.tracks(request.writer_id)):
            self._writers.record(request.writer_id, request.sequence)
        return response

    def Sample(self, request, context):
        started = time.perf_counter()
        config = self._server.config
        batch_size, num_batches = request.batch_size, request.num_batches or 1
        try:  # before the table lock: a request too large for its limits costs nothing
            check_sample_request(
                self._server.spec, batch_size, num_batches, config.max_sample_items, config.max_message_mb
            )
        except InvalidBatchError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        slot = self._sample_slots.acquire(context)
        if slot is None:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{SHARD_BUSY}: it serves at most max_concurrent_samples={self._sample_slots.limit} Samples at once",
            )
        try:
            response = self._sample(request, context, batch_size, num_batches)
        finally:
            slot.release()
        self._sample_latency.observe(time.perf_counter() - started)
        return response  # already serialized: see add_servicer

    def _sample(self, request, context, batch_size: int, num_batches: int) -> bytes:
        """Draws, encodes and hands over; items that can't be handed over are un-counted."""
        config = self._server.config
        beta = request.beta if request.beta >= 0 else config.beta
        timeout = config.max_sample_wait_s
        if request.timeout_ms:
            timeout = min(timeout, request.timeout_ms / 1000.0)
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        try:
            items = self._table.sample(batch_size, num_batches, timeout=timeout, cancelled=_cancellation(context))
        except InvalidBatchError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DeadlineExceededError as exc:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except (TableClosedError, RequestCancelledError) as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        delivered = False
        try:
            offsets, refused = self._write_region(request, items.data, context)
            response = wire.encode_sample_response(
                items.data,
                items.keys,
                items.probabilities,
                importance_weights(items.probabilities, items.table_size, beta, batch_size),
                table_size=items.table_size,
                priority_mass=items.priority_mass,
                inserts=items.inserts,
                samples=items.samples,
                boot_id=self._server.boot_id,
                region_offsets=offsets,
                region_refused=refused,
            )
            # gRPC gives a unary handler no send confirmation: the items count as delivered when
            # the response is handed over to a call that is still live.
            delivered = context.is_active()
        finally:
            self._table.settle_samples(batch_size * num_batches, delivered)
        if not delivered:
            context.abort(grpc.StatusCode.CANCELLED, "the client went away before the sample was handed over")
        return response

    def _write_region(self, request, columns, context) -> tuple[list[int], str]:
        """The same-host feed: the columns into the request's region slot, if it names one.

        Returns each column's offset in the slot (empty: answer inline) and why a named region
        was not used. Nothing is written for a call that has already ended (its slot may be the
        learner's again).
        """
        if not request.region:
            return [], ""
        if not context.is_active():
            return [], "the call ended before the sample was written"
        try:
            return (
                self._regions.write(
                    request.region, request.region_key, request.region_offset, request.region_bytes, columns
                ),
                "",
            )
        except RegionRefusedError as exc:
            self._server.count_refused_region(exc.reason)
            return [], exc.reason

    def Credit(self, request, context):
        # O(1) under the table lock and bounded by the window (`Table.credit`): no slot needed.
        return replay_pb2.CreditResponse(credited=self._table.credit(request.items))

    def UpdatePriorities(self, request, context):
        response = self._update_priorities(request)
        if response.code:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, response.message)
        return response

    def UpdatePrioritiesStream(self, request_iterator, context):
        """Priority updates on one stream, answered in order; a bad request is answered with its
        error and the stream goes on. It holds a worker thread as an Insert stream does, from its
        own slots (`max_priority_streams`: busy Inserts cannot refuse it, nor it starve them), and
        the same watch ends it when idle or old (the client reopens it and re-sends what was not
        answered)."""
        slot = self._priority_slots.acquire(context)
        if slot is None:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{SHARD_BUSY}: it serves at most max_priority_streams={self._priority_slots.limit} priority "
                "streams at once",
            )
        stream = self._streams.opened(context)
        try:
            for request in request_iterator:
                self._streams.busy(stream)
                response = self._update_priorities(request)
                self._streams.waiting(stream)
                yield response
                if self._streams.expired(stream):
                    return
        finally:
            self._streams.closed(stream)
            slot.release()

    def _update_priorities(self, request) -> replay_pb2.UpdatePrioritiesResponse:
        """Applies one request; an invalid one comes back with code INVALID_ARGUMENT, nothing applied."""
        started = time.perf_counter()
        try:
            keys = codec.decode_tensor(request.keys, "keys")
            priorities = codec.decode_tensor(request.priorities, "priorities")
            if keys.dtype != np.uint64:
                raise InvalidBatchError(f"column 'keys': dtype {keys.dtype.name}, expected uint64")
            check_priority_update(keys.size, self._server.config.max_priority_updates)
            applied, dropped = self._table.update_priorities(keys, priorities)
        except InvalidBatchError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            return replay_pb2.UpdatePrioritiesResponse(code=code, message=str(exc))
        self._update_latency.observe(time.perf_counter() - started)
        return replay_pb2.UpdatePrioritiesResponse(applied=applied, dropped_stale=dropped)

    def Info(self, request, context):
        return self._server.info_message()

    def Checkpoint(self, request, context):
        if self._server.config.checkpoint_dir is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this shard was started without a checkpoint_dir")
        written = self._server.checkpoint(wait=False)
        if written is None:  # each one copies the whole table: callers take turns, never pile up
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{SHARD_BUSY}: a checkpoint is being written")
        path, sequence, size = written
        return replay_pb2.CheckpointResponse(path=str(path), sequence=sequence, size=size)


class ReplayServer:
    """A replay shard: a table served over gRPC on `host:port` (port 0 picks a free one).

    Construct from keyword arguments (any `ReplayConfig` field) or from a `ReplayConfig`:

        server = ReplayServer(spec, capacity=100_000, port=0, selector="prioritized")
        server = ReplayServer(spec, config=ReplayConfig(...))
        server = ReplayServer(spec, config=..., credentials=generate_credentials())   # TLS + token

    With `credentials` (the run's token, certificate and private key) the shard listens with TLS
    only, and every call of every method must carry the token (`authorization: Bearer <token>`);
    others get UNAUTHENTICATED before any handler runs and are counted
    (`unauthenticated_requests`, `qfleet_replay_unauthenticated_requests_total`). Without them it
    serves plaintext to anyone who reaches its port: for in-process tests and benchmarks only;
    `qfleet train` and the standalone services always pass credentials.

    Raises:
        ValueError / RateLimiterConfigError: an invalid or deadlock-prone configuration, or
            credentials without the private key or with a key of another certificate, at
            construction, before anything is served; an expired certificate, at `start`.
    """

    def __init__(
        self,
        spec: Spec,
        config: ReplayConfig | None = None,
        *,
        credentials: ReplayCredentials | None = None,
        **overrides,
    ):
        config = dataclasses.replace(config or ReplayConfig(), **overrides)
        if credentials is not None:
            credentials.check_key()  # else gRPC's bind fails as if the port were taken
        self.spec = spec
        self.config = config
        self.credentials = credentials
        limiter = RateLimiter(config.min_size, config.samples_per_insert, config.error_buffer, config.limit_samples)
        self.table = Table(
            spec,
            config.capacity,
            make_selector(config.selector, config.capacity, config.alpha),
            limiter,
            shard_id=config.shard_id,
            seed=config.seed,
        )
        self.metrics = ReplayMetrics(self.table, config.shard_id)
        self._identity = ckpt.TableIdentity(spec, config.capacity, config.selector)
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_sequence = 0
        self._rejected_batches = 0
        self._rejected_lock = threading.Lock()
        self._unauthenticated = 0
        self._grpc: grpc.Server | None = None
        self._streams: StreamWatch | None = None
        self._metrics_http = None
        self._stop_event = threading.Event()
        self._periodic: threading.Thread | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.restored_from: pathlib.Path | None = None
        self.refused_checkpoints: list[str] = []
        self.registry: ShardRegistry | None = None
        self._record: ShardRecord | None = None
        self._heartbeats: threading.Thread | None = None
        self._checkpoint_inserts = 0
        self.lost_transitions = 0
        """Transitions this shard id acknowledged and lost to crashes (its ledger, else the registry)."""
        self._ledger: InsertLedger | None = None
        self._ledger_lost = 0
        self.boot_id = secrets.randbits(63) | 1
        """Random and non-zero, drawn per process: clients tell a restart by it (Info, Sample)."""
        self.host = host_identity()
        """This host as the same-host feed compares it (Info): learners with the same one may
        name a shared-memory region for samples (replay/same_host.py)."""
        self.regions = RegionWriter()
        """The same-host feed's mappings (swept by its own timer; dropped at `stop`)."""
        self.refused_regions = 0
        """Sample requests whose named region was not used (answered inline), since start."""
        self._refusal_logged = False

    @property
    def secure(self) -> bool:
        """Whether the shard serves TLS and checks the token."""
        return self.credentials is not None

    @property
    def unauthenticated_requests(self) -> int:
        """Calls refused for a missing or wrong token since start."""
        return self._unauthenticated

    @property
    def address(self) -> str:
        """host:port clients connect to (after start)."""
        return f"{self.config.host}:{self.port}"

    def start(self) -> ReplayServer:
        """Restores the newest good checkpoint, then starts serving. Returns self."""
        try:
            return self._start()
        except BaseException:
            if self._ledger is not None:  # its file lock: a next try in this process may take it
                self._ledger.close()
            raise

    def _start(self) -> ReplayServer:
        keep_freed_memory()  # samples and inserts churn through large buffers
        if self.config.checkpoint_dir is not None:
            self._restore(pathlib.Path(self.config.checkpoint_dir))
            self._start_ledger(pathlib.Path(self.config.checkpoint_dir))
        if self.config.redis_url is not None:
            self._join_registry()
        credentials = self.credentials
        if credentials is not None:
            credentials.check_expiry()  # a restart late in a run says so, instead of failing every handshake
        interceptors = [] if credentials is None else [TokenInterceptor(credentials.token, self._count_unauthenticated)]
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix="replay"),
            interceptors=interceptors,
            options=grpc_options(self.config.max_message_mb),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        self._streams = StreamWatch(self.config.insert_idle_s, self.config.insert_stream_max_age_s)
        add_servicer(_Servicer(self, self._streams), self._grpc)
        address = f"{self.config.host}:{self.config.port}"
        try:
            if credentials is None:
                self.port = self._grpc.add_insecure_port(address)
            else:
                tls = grpc.ssl_server_credentials([(credentials.key_pem, credentials.cert_pem)])
                self.port = self._grpc.add_secure_port(address, tls)
        except RuntimeError:  # grpc's message for a failed bind names no cause
            self.port = 0
        if self.port == 0:
            self._grpc = None
            raise OSError(f"replay server cannot listen on {address}: port in use or address not local")
        self._grpc.start()
        _stop_at_exit(self)
        self._streams.start()
        if self.config.metrics_port is not None:
            try:
                self._metrics_http = start_metrics_server(
                    self.config.metrics_port, self.config.host, self.metrics.registry
                )
            except OSError as exc:
                self._grpc.stop(0)
                self._grpc = None
                raise OSError(
                    f"replay /metrics cannot listen on {self.config.host}:{self.config.metrics_port}: {exc.strerror}"
                ) from None
            self.metrics_port = self._metrics_http.server_port
        if self.config.checkpoint_every_s:
            self._periodic = threading.Thread(
                target=self._checkpoint_periodically, name="replay-checkpoints", daemon=True
            )
            self._periodic.start()
        if self.registry is not None:
            metrics_address = f"{self.config.host}:{self.metrics_port}" if self.metrics_port else ""
            self._record = new_record(self.config.shard_id, self.address, metrics_address, self.spec)
            self._heartbeat()  # registered before start() returns: discoverable at once
            self._heartbeats = threading.Thread(target=self._heartbeat_loop, name="replay-heartbeats", daemon=True)
            self._heartbeats.start()
        log.info(
            "replay shard %d serving %s on %s (%s)",
            self.config.shard_id,
            self.spec,
            self.address,
            "TLS, token required" if credentials is not None else "plaintext, no token",
        )
        return self

    def stop(self, grace: float = 1.0, checkpoint: bool = True) -> None:
        """Releases waiting calls, stops serving, then writes a final checkpoint if configured."""
        if self._grpc is None:
            return
        self._stop_event.set()
        self.table.close()
        self.regions.close()
        self._grpc.stop(grace).wait()
        self._grpc = None
        _running_servers.discard(self)
        self._streams.stop()
        if self._periodic is not None:
            self._periodic.join()
        if self._heartbeats is not None:
            self._heartbeats.join()
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None
        if checkpoint and self.config.checkpoint_dir is not None:
            path, _, size = self.checkpoint()
            log.info("final checkpoint of %d items written to %s", size, path)
        if self._ledger is not None:
            self._ledger.close()
        if self.registry is not None:
            try:
                self.registry.deregister(self.config.shard_id, self._registry_counters())
            except redis.RedisError as exc:
                log.warning("could not deregister from %s: %s", redact_url(self.config.redis_url), exc)
            self.registry.close()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def checkpoint(self, wait: bool = True) -> tuple[pathlib.Path, int, int] | None:
        """Writes a checkpoint now; returns (path, sequence, items).

        One checkpoint is written at a time. With `wait` False, returns None at once when another
        one is being written (the Checkpoint RPC: a caller cannot queue copies of the table).
        """
        if self.config.checkpoint_dir is None:
            raise ValueError("this shard has no checkpoint_dir")
        if not self._checkpoint_lock.acquire(blocking=wait):
            return None
        try:
            arrays, counters = self.table.state()
            path, sequence = ckpt.write_checkpoint(
                pathlib.Path(self.config.checkpoint_dir),
                self._identity,
                arrays,
                counters,
                extra={"shard_id": str(self.config.shard_id)},
            )
            self._checkpoint_sequence = sequence
            self._checkpoint_inserts = counters["inserts"]
        finally:
            self._checkpoint_lock.release()
        self.metrics.checkpoints.inc()
        return path, sequence, counters["size"]

    @property
    def ledger(self) -> InsertLedger | None:
        """The record of what this shard id stored (with a checkpoint_dir; else None)."""
        return self._ledger

    def counters(self) -> tuple[TableInfo, ShardAccounting]:
        """The table's counters and `accounting()` at one moment (`Table.info_with`): the items
        present and the ledger's per-stream counts agree however fast inserts come."""
        return self.table.info_with(self.accounting)

    def accounting(self) -> ShardAccounting:
        """What the ledger says of each insert stream and of streams writers gave up on."""
        ledger = self._ledger
        if ledger is None:
            return ShardAccounting(self.config.shard_id, tracked=False)
        return ShardAccounting(
            self.config.shard_id,
            ledger.stream_items(),
            ledger.receipts(),
            untracked_items=ledger.untracked_items,
            dropped_receipts=ledger.dropped_receipts,
        )

    def _start_ledger(self, directory: pathlib.Path) -> None:
        """Counts what the previous process of this shard id acknowledged after the restored checkpoint."""
        self._ledger = open_ledger(directory)
        restored = self.table.info().inserts
        previous = self._ledger.previous_inserts
        self._ledger_lost = self._ledger.start(restored)
        self.lost_transitions = self._ledger.lost_total
        if self._ledger_lost:
            log.warning(
                "shard %d lost %d transitions: it had acknowledged %d inserts, its newest checkpoint holds %d",
                self.config.shard_id,
                self._ledger_lost,
                previous,
                restored,
            )

    def count_rejected(self) -> None:
        """Counts one batch rejected for bad input (Info and metrics)."""
        with self._rejected_lock:
            self._rejected_batches += 1
        self.metrics.rejected_batches.inc()

    def count_refused_region(self, reason: str) -> None:
        """Counts a same-host feed region not used; the first is logged (warning) with its reason."""
        with self._rejected_lock:
            self.refused_regions += 1
            first, self._refusal_logged = not self._refusal_logged, True
        if first:
            log.warning("replay shard %d answers samples inline: %s", self.config.shard_id, reason)

    def _count_unauthenticated(self) -> None:
        # Runs on gRPC's polling thread (the interceptor): an int add under the GIL, no lock.
        self._unauthenticated += 1
        self.metrics.unauthenticated_requests.inc()

    def _restore(self, directory: pathlib.Path) -> None:
        loaded, self.refused_checkpoints = ckpt.load_latest(directory, self._identity)
        if loaded is None:
            if self.refused_checkpoints:
                log.warning("no usable checkpoint in %s; starting empty", directory)
            return
        self.table.restore(loaded.arrays, loaded.counters)
        self.restored_from = loaded.path
        self._checkpoint_sequence = loaded.sequence
        self._checkpoint_inserts = loaded.counters["inserts"]
        log.info(
            "restored %d items (inserts=%d) from %s", loaded.counters["size"], loaded.counters["inserts"], loaded.path
        )

    def _join_registry(self) -> None:
        """Checks the run's spec and counts what a crash of this shard id lost, before serving.

        Raises:
            SpecMismatchError: the run's shards hold another spec.
            ReplayUnavailableError: Redis is unreachable.
        """
        registry = ShardRegistry(self.config.redis_url, self.config.run, self.config.registry_ttl_s)
        try:
            registry.check_spec(self.spec, self.config.shard_id)
            previous = registry.last_state(self.config.shard_id)
        except Exception:
            registry.close()
            raise
        restored = self.table.info().inserts
        lost = max(0, previous.get("inserts", 0) - restored)
        if self._ledger is None:  # no checkpoint directory: the last heartbeat is all there is
            self.lost_transitions = previous.get("lost_total", 0) + lost
        if lost and self._ledger is None:
            log.warning(
                "shard %d lost %d transitions: its last heartbeat reported %d inserts, its newest checkpoint holds %d",
                self.config.shard_id,
                lost,
                previous["inserts"],
                restored,
            )
        self.registry = registry

    def _registry_counters(self) -> dict[str, int]:
        info = self.table.info()
        return {
            "inserts": info.inserts,
            "samples": info.samples,
            "size": info.size,
            "checkpoint_inserts": self._checkpoint_inserts,
            "lost_total": self.lost_transitions,
        }

    def _heartbeat(self) -> bool:
        try:
            self.registry.heartbeat(self._record, self.spec, self._registry_counters())
            return True
        except redis.RedisError as exc:
            log.warning(
                "heartbeat to %s failed (%s); retrying every %ss",
                redact_url(self.config.redis_url),
                exc,
                self.config.heartbeat_s,
            )
            return False

    def _heartbeat_loop(self) -> None:
        healthy = True
        while not self._stop_event.wait(self.config.heartbeat_s):
            ok = self._heartbeat()
            if ok and not healthy:
                log.info("re-registered shard %d with %s", self.config.shard_id, redact_url(self.config.redis_url))
            healthy = ok

    def _checkpoint_periodically(self) -> None:
        while not self._stop_event.wait(self.config.checkpoint_every_s):
            try:
                self.checkpoint()
            except OSError as exc:  # a full disk must not take the shard down
                log.error("periodic checkpoint failed: %s", exc)

    def info_message(self) -> replay_pb2.InfoResponse:
        """The Info RPC's answer."""
        info = self.table.info()
        limiter = self.table.limiter
        return replay_pb2.InfoResponse(
            shard_id=self.config.shard_id,
            size=info.size,
            capacity=info.capacity,
            inserts=info.inserts,
            samples=info.samples,
            priority_mass=info.priority_mass,
            dropped_priority_updates=info.dropped_priority_updates,
            rejected_batches=self._rejected_batches,
            selector=self.config.selector,
            spec_json=self.spec.to_json(),
            checkpoint_sequence=self._checkpoint_sequence,
            lost_transitions=self.lost_transitions,
            boot_id=self.boot_id,
            host=self.host,
            rate_limiter=replay_pb2.RateLimiterInfo(
                samples_per_insert=limiter.samples_per_insert or 0.0,
                min_size=limiter.min_size,
                min_diff=limiter.min_diff,
                max_diff=limiter.max_diff,
                diff=info.diff,
                waiting_inserts=info.waiting_inserts,
                waiting_samples=info.waiting_samples,
                insert_wait_seconds=info.insert_wait_seconds,
                sample_wait_seconds=info.sample_wait_seconds,
                credited=info.credited,
            ),
        )
