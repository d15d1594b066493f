"""A small HTTP server with a bounded number of threads and connections, for /metrics and discovery.

prometheus-client's `start_http_server` and `http.server.ThreadingHTTPServer` start one thread per
connection and wait for its request without a time limit: a thousand connections that send half a
request hold a thousand threads for as long as their clients like. Here one thread accepts
connections and reads their request heads without blocking (a `selectors` loop); a connection
whose head is not complete within `head_timeout_s`, or is larger than `max_head_bytes`, is closed,
and when `max_pending` connections are still sending their heads the oldest is closed to admit a
new one. Only a complete request reaches the fixed pool of `workers` threads, through a queue of at
most `max_queued` requests (more are closed at once); a worker gives up on a response that is not
completely sent within `io_timeout_s` of its first byte and resets that connection (a client that
reads slowly holds a worker that long at most). So the thread count is 1 + `workers` whatever clients do, and a fresh request
is answered while slow ones wait.

The accept thread survives what goes wrong: when `accept` fails (out of file descriptors, EMFILE)
the listener is set aside for `ACCEPT_PAUSE_S` (connections wait in the backlog instead of the
thread spinning on a listener that stays readable), an unexpected exception drops the connection
it came from, and either is logged at most once per `LOG_EVERY_S`. `close()` closes every
connection it leaves unanswered, queued ones included.

Only the request head is read: the servers here answer GET (a request body is not delivered to
the handler). One request per connection (HTTP/1.0, as `http.server` handlers speak by default).
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

log = logging.getLogger(__name__)

ACCEPT_PAUSE_S = 0.5
"""After a failed accept (e.g. EMFILE), how long the listener is left alone before trying again."""

LOG_EVERY_S = 10.0
"""A recurring failure of the accept thread is logged at most this often (with a count)."""


@dataclass(frozen=True)
class HTTPLimits:
    """How much of a server's threads, memory and time clients may take.

    Attributes:
        workers: threads that answer complete requests.
        max_queued: complete requests waiting for a worker; more are closed at once.
        max_pending: connections still sending their request head; at the cap, the oldest is
            closed to admit a new one.
        head_timeout_s: a connection's whole request head must arrive within this many seconds.
        max_head_bytes: a larger request head closes the connection.
        io_timeout_s: a response must be sent completely within this many seconds of its first
            write (one deadline for all its writes); a slower reader's connection is closed.
    """

    workers: int = 4
    max_queued: int = 16
    max_pending: int = 256
    head_timeout_s: float = 5.0
    max_head_bytes: int = 16384
    io_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("workers", "max_queued", "max_pending", "max_head_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"HTTPLimits.{name}={getattr(self, name)}: must be >= 1")
        for name in ("head_timeout_s", "io_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HTTPLimits.{name}={getattr(self, name)}: must be > 0")


class _ReadConnection:
    """The accepted socket as `StreamRequestHandler` uses it, its request head already read.

    Every write goes through `sendall` (the handlers write unbuffered), which holds all of a
    response's writes to one deadline, `write_timeout_s` after the first.
    """

    def __init__(self, sock: socket.socket, head: bytes, write_timeout_s: float):
        self._sock, self._head, self._write_timeout_s = sock, head, write_timeout_s
        self._deadline: float | None = None
        self.timed_out = False
        """The response missed its deadline (`http.server` handlers swallow the TimeoutError)."""

    def makefile(self, mode: str, *args, **kwargs):
        if "r" in mode:
            return io.BytesIO(self._head)
        raise io.UnsupportedOperation("responses are written with sendall (handlers' wbufsize = 0)")

    def sendall(self, data) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self._write_timeout_s
        view = memoryview(data).cast("B")
        while view:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out = True
                raise TimeoutError(f"response not sent within {self._write_timeout_s} s")
            self._sock.settimeout(remaining)
            try:
                view = view[self._sock.send(view) :]
            except TimeoutError:
                self.timed_out = True
                raise

    def settimeout(self, timeout: float | None) -> None:
        pass  # sendall sets the time left before each send

    def setsockopt(self, *args) -> None:
        self._sock.setsockopt(*args)

    def getpeername(self):
        return self._sock.getpeername()


class _Pending:
    """A connection still sending its request head."""

    __slots__ = ("sock", "address", "deadline", "head")

    def __init__(self, sock: socket.socket, address, deadline: float):
        self.sock, self.address, self.deadline, self.head = sock, address, deadline, bytearray()


class BoundedHTTPServer:
    """Serves `handler_class` (an `http.server.BaseHTTPRequestHandler`) within `limits`.

    Args:
        host, port: where to listen (port 0: a free one; `server_port` tells which).
        handler_class: answers one request; it runs on a worker thread.
        limits: the bounds on threads, connections and time.
        name: names the threads (`<name>-accept`, `<name>-worker_N`).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handler_class: type[BaseHTTPRequestHandler],
        limits: HTTPLimits = HTTPLimits(),
        name: str = "qfleet-http",
    ):
        self.handler_class, self.limits, self.name = handler_class, limits, name
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=max(128, limits.max_pending))
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.server_port: int = self.server_address[1]
        self.closed_early = 0
        """Connections closed before an answer: head too slow or too large, or no room."""
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix=f"{name}-worker")
        self._queue_slots = threading.BoundedSemaphore(limits.workers + limits.max_queued)
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._accept_paused_until: float | None = None
        self._queued: set[socket.socket] = set()
        self._queued_lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def start(self) -> BoundedHTTPServer:
        """Serves on a daemon thread until `close()`."""
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-accept", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops accepting, closes waiting connections and the listening socket; idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        for pending in list(self._pending.values()):
            self._drop(pending, count=False)
        try:
            self._selector.close()
        except (OSError, ValueError):
            pass
        self.socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._queued_lock:  # cancelled before a worker took them: nobody else closes these
            unanswered, self._queued = self._queued, set()
        for sock in unanswered:
            sock.close()

    # `http.server`'s names, for callers written against it.
    def shutdown(self) -> None:
        self.close()

    def server_close(self) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_once()
            except Exception as exc:  # never leave the socket bound with nobody accepting
                self._log_sometimes("serve", "%s: accept thread: %r; serving on", self.name, exc, exc_info=True)
                self._stop.wait(0.05)

    def _serve_once(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._selector.register(self.socket, selectors.EVENT_READ)
        timeout = 0.2
        if self._pending:
            first = next(iter(self._pending.values()))
            timeout = min(timeout, max(0.0, first.deadline - now))
        if self._accept_paused_until is not None:
            timeout = min(timeout, max(0.0, self._accept_paused_until - now))
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self.socket:
                self._accept()
            else:
                pending = self._pending.get(key.fileobj)
                if pending is not None:
                    try:
                        self._read(pending)
                    except Exception as exc:  # that connection's problem: drop it, serve the others
                        self._drop(pending)
                        self._log_sometimes("read", "%s: reading a request failed: %r", self.name, exc, exc_info=True)
        now = time.monotonic()
        while self._pending:  # oldest first: deadlines grow in admission order
            first = next(iter(self._pending.values()))
            if first.deadline > now:
                break
            self._drop(first)

    def _log_sometimes(self, what: str, message: str, *args, exc_info: bool = False) -> None:
        """Logs `message` unless `what` was logged less than LOG_EVERY_S ago (then counts it)."""
        now = time.monotonic()
        last = self._last_logged.get(what)
        if last is not None and now - last < LOG_EVERY_S:
            self._unlogged[what] = self._unlogged.get(what, 0) + 1
            return
        self._last_logged[what] = now
        skipped = self._unlogged.pop(what, 0)
        suffix = f" ({skipped} more since the last message)" if skipped else ""
        log.warning(message + suffix, *args, exc_info=exc_info)

    def _pause_accepting(self) -> None:
        """Leaves the listener out of the selector for ACCEPT_PAUSE_S: while accept cannot
        succeed (EMFILE), a listener with a backlog stays readable and would spin this thread."""
        if self._accept_paused_until is None:
            self._selector.unregister(self.socket)
        self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S

    def _accept(self) -> None:
        for _ in range(64):  # drain a burst, then look at the readable connections again
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: leave the rest in the backlog for now
                self._pause_accepting()
                self._log_sometimes(
                    "accept", "%s: accept failed: %s; retrying in %.1f s", self.name, exc, ACCEPT_PAUSE_S
                )
                return
            if len(self._pending) >= self.limits.max_pending:
                self._drop(next(iter(self._pending.values())))
            sock.setblocking(False)
            pending = _Pending(sock, address, time.monotonic() + self.limits.head_timeout_s)
            self._pending[sock] = pending
            self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(self.limits.max_head_bytes + 1 - len(pending.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(pending)
            return
        pending.head += data
        end = pending.head.find(b"\r\n\r\n")
        if end < 0:
            end = pending.head.find(b"\n\n")
        if end < 0:
            if len(pending.head) > self.limits.max_head_bytes:
                self._drop(pending)
            return
        self._unregister(pending)
        if not self._queue_slots.acquire(blocking=False):
            self.closed_early += 1
            pending.sock.close()
            return
        pending.sock.setblocking(True)
        pending.sock.settimeout(self.limits.io_timeout_s)
        with self._queued_lock:
            self._queued.add(pending.sock)
        try:
            self._pool.submit(self._answer, pending.sock, pending.address, bytes(pending.head))
        except RuntimeError:  # the pool is shut down: the server is closing
            with self._queued_lock:
                self._queued.discard(pending.sock)
            self._queue_slots.release()
            pending.sock.close()

    def _answer(self, sock: socket.socket, address, head: bytes) -> None:
        with self._queued_lock:
            self._queued.discard(sock)
        connection = _ReadConnection(sock, head, self.limits.io_timeout_s)
        try:
            self.handler_class(connection, address, self)
        except OSError as exc:  # the client went away or read too slowly
            log.debug("%s: %s: %s", self.name, address, exc)
        except Exception:
            log.exception("%s: handler failed for %s", self.name, address)
        finally:
            try:
                if connection.timed_out:  # reset, so the kernel drops the unsent rest too
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            sock.close()
            self._queue_slots.release()

    def _unregister(self, pending: _Pending) -> None:
        self._pending.pop(pending.sock, None)
        try:
            self._selector.unregister(pending.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, pending: _Pending, count: bool = True) -> None:
        if count:  # before the close, which the client may see at once
            self.closed_early += 1
        self._unregister(pending)
        pending.sock.close()


def start_metrics_server(
    port: int, host: str, registry: CollectorRegistry, limits: HTTPLimits = HTTPLimits()
) -> BoundedHTTPServer:
    """Serves `registry` in Prometheus' text format at any path on `host:port`, within `limits`.

    The bounded replacement for prometheus-client's `start_http_server` (same handler, same
    output). Returns the started server: `server_port` is the port, `close()` stops it.

    Raises:
        OSError: the address cannot be bound.
    """
    return BoundedHTTPServer(host, port, MetricsHandler.factory(registry), limits, name="qfleet-metrics").start()
