"""The /metrics and discovery HTTP servers stay bounded whatever clients do (real sockets): slow,
half-sent requests hold no threads, are closed after the head timeout, and do not delay a fresh
request; a slow reader holds a worker for one timeout in all; running out of file descriptors
neither spins the accept thread nor floods the log; nothing kills the accept thread; closing the
server closes every connection it leaves unanswered."""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from replay import BoundedHTTPServer, HTTPLimits, start_metrics_server
from system.observe.discovery_server import DiscoveryServer

LIMITS = HTTPLimits(workers=4, max_queued=8, max_pending=256, head_timeout_s=2.0)
HALF_SENT = 1000


def metrics_server() -> tuple[BoundedHTTPServer, str]:
    registry = CollectorRegistry()
    Counter("qfleet_test_requests", "a series to find", registry=registry).inc(3)
    server = start_metrics_server(0, "127.0.0.1", registry, LIMITS)
    return server, "/metrics"


@pytest.fixture(params=["metrics", "discovery"])
def bounded_server(request):
    """(port, path, body it answers with) of a started server, closed afterwards."""
    if request.param == "metrics":
        server, path = metrics_server()
        yield server.server_port, path, "qfleet_test_requests_total 3.0"
        server.close()
    else:
        redis_server = request.getfixturevalue("redis_server")
        discovery = DiscoveryServer(redis_server.url, port=0, limits=LIMITS).start()
        yield discovery.port, "/targets", "[]"
        discovery.stop()


def get(port: int, path: str, timeout: float) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return response.read().decode()


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def test_half_sent_requests_hold_no_threads_and_are_closed_after_the_timeout(bounded_server):
    port, path, expected = bounded_server
    assert expected in get(port, path, timeout=5)  # warm: the pool's workers exist from here on
    base = threading.active_count()
    clients = []
    try:
        for _ in range(HALF_SENT):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metr")  # never finished
            clients.append(sock)
        opened = time.monotonic()
        # One thread accepts and reads heads; workers only answer complete requests.
        assert threading.active_count() <= base + LIMITS.workers, threading.active_count() - base

        started = time.monotonic()
        assert expected in get(port, path, timeout=1)
        assert time.monotonic() - started < 1.0
        assert threading.active_count() <= base + LIMITS.workers

        # Every half-sent connection is closed by the server within the head timeout (+ slack).
        selector = selectors.DefaultSelector()
        for sock in clients:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_left = set(clients)
        deadline = opened + LIMITS.head_timeout_s + 2.0
        while open_left and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                if closed_by_peer(key.fileobj):
                    selector.unregister(key.fileobj)
                    open_left.discard(key.fileobj)
        selector.close()
        assert not open_left, f"{len(open_left)} of {HALF_SENT} half-sent connections still open"
        assert expected in get(port, path, timeout=1)
    finally:
        for sock in clients:
            sock.close()


def test_a_request_head_larger_than_the_limit_is_closed_without_an_answer():
    server, _ = metrics_server()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"a" * (LIMITS.max_head_bytes + 10))
            assert closed_by_peer(sock)  # no answer, just the close
        assert server.closed_early == 1
        assert "qfleet_test_requests_total" in get(server.server_port, "/metrics", timeout=5)
    finally:
        server.close()


def test_metrics_server_refuses_a_taken_port_and_closes_idempotently():
    server, _ = metrics_server()
    with pytest.raises(OSError):
        start_metrics_server(server.server_port, "127.0.0.1", CollectorRegistry())
    server.close()
    server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.server_port), timeout=1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workers", 0, "workers=0: must be >= 1"),
        ("max_pending", 0, "max_pending=0: must be >= 1"),
        ("head_timeout_s", 0.0, "head_timeout_s=0.0: must be > 0"),
    ],
)
def test_limits_refuse_settings_that_would_serve_nothing(field, value, message):
    with pytest.raises(ValueError, match=message):
        HTTPLimits(**{field: value})


class ChunkedHandler(BaseHTTPRequestHandler):
    """/big: 12.5 MiB in 400 writes of 32 KiB; /wait: blocks until `release` is set; else "ok"."""

    entered = threading.Event()
    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        if self.path == "/big":
            chunk = b"x" * 32768
            for _ in range(400):
                self.wfile.write(chunk)
        elif self.path == "/wait":
            ChunkedHandler.entered.set()
            ChunkedHandler.release.wait(30)
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def trickle_read(sock: socket.socket, stop: threading.Event) -> None:
    """Reads 1 KiB every 10 ms (~100 KB/s): every single write progresses, the whole takes minutes."""
    while not stop.is_set():
        try:
            if not sock.recv(1024):
                return
        except OSError:
            return
        time.sleep(0.01)


def test_a_slow_reader_holds_a_worker_for_one_io_timeout_in_all():
    limits = HTTPLimits(workers=1, max_queued=4, io_timeout_s=1.0)
    server = BoundedHTTPServer("127.0.0.1", 0, ChunkedHandler, limits).start()
    stop = threading.Event()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        slow.connect(("127.0.0.1", server.server_port))
        slow.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        reader = threading.Thread(target=trickle_read, args=(slow, stop), daemon=True)
        reader.start()
        started = time.monotonic()
        # The only worker is busy with /big until its deadline; then it answers this one.
        assert get(server.server_port, "/small", timeout=limits.io_timeout_s + 4) == "ok"
        assert time.monotonic() - started < limits.io_timeout_s + 2.0
        reader.join(timeout=5)
        assert not reader.is_alive(), "the slow reader's connection was not closed"
    finally:
        stop.set()
        slow.close()
        server.close()


def test_closing_the_server_closes_the_connections_still_queued_for_a_worker():
    ChunkedHandler.entered.clear()
    ChunkedHandler.release.clear()
    server = BoundedHTTPServer("127.0.0.1", 0, ChunkedHandler, HTTPLimits(workers=1, max_queued=4)).start()
    clients = []
    try:
        for path in ("/wait", "/small", "/small"):
            sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
            sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            clients.append(sock)
            if path == "/wait":  # the only worker is taken; the next two wait in the queue
                assert ChunkedHandler.entered.wait(5)
        deadline = time.monotonic() + 5  # wait until both heads are read and wait for the worker
        while server._pool._work_queue.qsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server._pool._work_queue.qsize() == 2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            server.close()
        # Closed by the server, not by the garbage collector (CPython's refcount would close the
        # dropped sockets too, with a ResourceWarning; another interpreter might never).
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
        for sock in clients[1:]:
            sock.settimeout(5)
            assert sock.recv(1) == b"", "a queued connection was left open"  # the server closed it
    finally:
        ChunkedHandler.release.set()
        for sock in clients:
            sock.close()
        server.close()


def test_an_unexpected_error_in_the_accept_thread_drops_that_connection_and_serving_goes_on(caplog):
    server, path = metrics_server()
    original, failures = server._read, []

    def fails_once(pending):  # a fault injected into the accept thread
        if not failures:
            failures.append(pending)
            raise RuntimeError("injected")
        original(pending)

    server._read = fails_once
    try:
        with caplog.at_level(logging.WARNING, logger="replay.http_server"):
            with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as sock:
                sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                assert closed_by_peer(sock)  # dropped, not answered
            assert "qfleet_test_requests_total" in get(server.server_port, path, timeout=5)
        assert len(failures) == 1
        assert [r for r in caplog.records if "injected" in r.getMessage()], caplog.text
    finally:
        server.close()


OUT_OF_DESCRIPTORS = """
import json, logging, os, resource, sys, time, urllib.request
from prometheus_client import CollectorRegistry, Counter
from replay import HTTPLimits, start_metrics_server

warnings = []
class Count(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
log = logging.getLogger("replay.http_server")
log.addHandler(Count())
log.propagate = False
registry = CollectorRegistry()
Counter("qfleet_fd_test", "a series to find", registry=registry).inc()
server = start_metrics_server(0, "127.0.0.1", registry, HTTPLimits(head_timeout_s=60.0))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 20, hard))
print(server.server_port, flush=True)
deadline = time.monotonic() + 20
while not warnings and time.monotonic() < deadline:  # the test's connections exhaust our descriptors
    time.sleep(0.01)
first = list(warnings)
cpu = time.process_time()
time.sleep(2.0)  # the window measured
print(json.dumps({"first": first, "cpu_s": time.process_time() - cpu, "warnings": len(warnings)}), flush=True)
sys.stdin.readline()  # the test closed its connections
deadline, served = time.monotonic() + 10, ""
while not served and time.monotonic() < deadline:
    try:
        served = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/", timeout=2).read().decode()
    except OSError:
        time.sleep(0.1)
print(json.dumps({"served": served}), flush=True)
server.close()
"""


def test_running_out_of_file_descriptors_neither_spins_the_accept_thread_nor_floods_the_log():
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    clients = []
    try:
        port = int(child.stdout.readline())
        for _ in range(60):  # 20 descriptors left: most of these wait in the backlog
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        measured = json.loads(child.stdout.readline())
        assert measured["first"] and "Too many open files" in measured["first"][0], measured
        # A listener that stays readable while accept fails used to spin: ~1 CPU-second per
        # second and tens of thousands of warnings.
        assert measured["cpu_s"] < 0.5, measured
        assert measured["warnings"] == 1, measured
        for sock in clients:
            sock.close()
        child.stdin.write("closed\n")
        child.stdin.flush()
        assert "qfleet_fd_test_total 1.0" in json.loads(child.stdout.readline())["served"]  # serving again
    finally:
        for sock in clients:
            sock.close()
        child.stdin.close()
        child.wait(timeout=20)
