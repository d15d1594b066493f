"""An embedded `redis-server`: a child process on a loopback port, without persistence.

`qfleet train` (with no `redis.url`), the benchmarks and the tests start one; it is stopped by
PID when its owner stops (and, as a child, dies with it).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time


class RedisLaunchError(RuntimeError):
    """redis-server is missing or did not start."""


def _terminate_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent goes (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:  # not Linux/glibc: the owner's stop() is then the only way it ends
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisProcess:
    """`redis-server` on 127.0.0.1:`port` (a free one by default); restartable on the same port.

    Args:
        port: the port (None: a free one).
        directory: its working directory (None: a temporary one).
    """

    def __init__(self, port: int | None = None, directory: str | None = None):
        if shutil.which("redis-server") is None:
            raise RedisLaunchError("redis-server is not installed (scripts/setup.sh installs it with apt)")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="qfleet-redis-")
        self.directory = directory or self._tmp.name
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> RedisProcess:
        import redis

        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.directory, "--protected-mode", "yes"]  # fmt: skip
        # Its own session, so a Ctrl-C meant for the owner does not stop Redis before the owner's
        # orderly shutdown; and it gets SIGTERM if the owner dies without stopping it.
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RedisLaunchError(f"redis-server did not start on 127.0.0.1:{self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.close()
