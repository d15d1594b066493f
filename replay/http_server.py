"""A small HTTP server with a bounded number of threads and connections, for /metrics and discovery.

prometheus-client's `start_http_server` and `http.server.ThreadingHTTPServer` start one thread per
connection and wait for its request without a time limit: a thousand connections that send half a
request hold a thousand threads for as long as their clients like. Here one thread accepts
connections and reads their request heads without blocking (a `selectors` loop); a connection
whose head is not complete within `head_timeout_s`, or is larger than `max_head_bytes`, is closed,
and when `max_pending` connections are still sending their heads the oldest is closed to admit a
new one. Only a complete request reaches the fixed pool of `workers` threads, through a queue of at
most `max_queued` requests (more are closed at once); a worker's socket writes time out after
`io_timeout_s`. So the thread count is 1 + `workers` whatever clients do, and a fresh request is
answered while slow ones wait.

Only the request head is read: the servers here answer GET (a request body is not delivered to
the handler). One request per connection (HTTP/1.0, as `http.server` handlers speak by default).
"""

from __future__ import annotations

import io
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

log = logging.getLogger(__name__)


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
        io_timeout_s: each socket write of a response must progress within this many seconds.
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
    """The accepted socket as `StreamRequestHandler` uses it, its request head already read."""

    def __init__(self, sock: socket.socket, head: bytes):
        self._sock, self._head = sock, head

    def makefile(self, mode: str, *args, **kwargs):
        if "r" in mode:
            return io.BytesIO(self._head)
        return self._sock.makefile(mode, *args, **kwargs)

    def sendall(self, data) -> None:
        self._sock.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

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

    # `http.server`'s names, for callers written against it.
    def shutdown(self) -> None:
        self.close()

    def server_close(self) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            timeout = 0.2
            if self._pending:
                first = next(iter(self._pending.values()))
                timeout = min(timeout, max(0.0, first.deadline - time.monotonic()))
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self.socket:
                    self._accept()
                else:
                    pending = self._pending.get(key.fileobj)
                    if pending is not None:
                        self._read(pending)
            now = time.monotonic()
            while self._pending:  # oldest first: deadlines grow in admission order
                first = next(iter(self._pending.values()))
                if first.deadline > now:
                    break
                self._drop(first)

    def _accept(self) -> None:
        for _ in range(64):  # drain a burst, then look at the readable connections again
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: leave the rest in the backlog for now
                log.warning("%s: accept failed: %s", self.name, exc)
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
        try:
            self._pool.submit(self._answer, pending.sock, pending.address, bytes(pending.head))
        except RuntimeError:  # the pool is shut down: the server is closing
            self._queue_slots.release()
            pending.sock.close()

    def _answer(self, sock: socket.socket, address, head: bytes) -> None:
        try:
            self.handler_class(_ReadConnection(sock, head), address, self)
        except OSError as exc:  # the client went away or stopped reading
            log.debug("%s: %s: %s", self.name, address, exc)
        except Exception:
            log.exception("%s: handler failed for %s", self.name, address)
        finally:
            try:
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
