"""The /metrics and discovery HTTP servers stay bounded whatever clients do (real sockets): slow,
half-sent requests hold no threads, are closed after the head timeout, and do not delay a fresh
request."""

from __future__ import annotations

import selectors
import socket
import threading
import time
import urllib.request

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
