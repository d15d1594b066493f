"""An embedded `redis-server`: a child process on a loopback port, with a password, and (for
`qfleet train`) an append-only file in its private directory, so that a restart on the same port
comes back with its data.

`qfleet train` (with no `redis.url`), the benchmarks and the tests start one; it is stopped by
PID when its owner stops (and, as a child, dies with it). Its settings, the password among them,
reach it on its standard input (`redis-server -`), never on its command line, which any local user
can read in /proc/PID/cmdline.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from typing import IO

from system.errors import RedisLaunchError
from system.local.signals import dying_with_parent

START_TIMEOUT_S = 60.0
"""How long a start waits for redis-server to answer PING (a loaded machine can take seconds)."""

PORT_ATTEMPTS = 3
"""Starts on a fresh free port when a port we chose was taken before redis-server bound it."""

LOG_TAIL_LINES = 5
"""Lines of redis-server's own output quoted in a RedisLaunchError."""

NEW_PASSWORD = "new"
"""`RedisProcess(password=NEW_PASSWORD)` (the default): a fresh random password for this server."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _quoted(value: str) -> str:
    """`value` as one argument of a redis.conf line (double-quoted, escapes for \\ and ")."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisProcess:
    """`redis-server` on 127.0.0.1:`port` (a free one by default), with a password (`requirepass`);
    restartable on the same port with the same password.

    `url` carries no password: clients get it from `password` (the driver of `qfleet train` puts it
    in QFLEET_REDIS_PASSWORD, which `replay.connect_redis` reads).

    Args:
        port: the port (None: a free one, chosen again if another process takes it first).
        directory: its working directory (None: a temporary one).
        password: the password clients must give (NEW_PASSWORD, the default: a fresh random one,
            `secrets.token_urlsafe(32)`; None: no password, any local process may use it).
        persistent: keep the data in an append-only file in `directory` (fsync every second), so
            that `start` after the server died restores it (at most about a second of writes lost);
            False: nothing on disk.
    """

    def __init__(
        self,
        port: int | None = None,
        directory: str | None = None,
        password: str | None = NEW_PASSWORD,
        *,
        persistent: bool = False,
    ):
        if shutil.which("redis-server") is None:
            raise RedisLaunchError("redis-server is not installed (scripts/setup.sh installs it with apt)")
        if password == "":
            raise ValueError("password: give a non-empty password, or None for none")
        self.password = secrets.token_urlsafe(32) if password == NEW_PASSWORD else password
        self._port_chosen_here = port is None
        self.port = port or free_port()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="qfleet-redis-")
        self.directory = directory or self._tmp.name
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = START_TIMEOUT_S) -> RedisProcess:
        """Starts it and waits until it answers PING.

        Raises:
            RedisLaunchError: it exited or did not answer within `timeout`; the message quotes
                the last lines redis-server printed.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_once(timeout)
                break
            except RedisLaunchError as exc:
                port_taken = "Address already in use" in exc.log_tail
                if not (port_taken and self._port_chosen_here and attempt < PORT_ATTEMPTS):
                    raise
                self.port = free_port()
        self._port_chosen_here = False  # a restart comes back on the same port: clients know it
        return self

    def _config(self) -> str:
        """redis.conf text: loopback only, an append-only file or no persistence, protected mode,
        the password."""
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            'save ""',
            "appendonly yes" if self.persistent else "appendonly no",
            "appendfsync everysec",
            f"dir {_quoted(self.directory)}",
            "protected-mode yes",
        ]
        if self.password is not None:
            lines.append(f"requirepass {_quoted(self.password)}")
        return "\n".join(lines) + "\n"

    def _start_once(self, timeout: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Its output goes to an unnamed file, read back only to say why a start failed.
        self._log = tempfile.TemporaryFile(prefix="qfleet-redis-log-")
        # Its own session, so a Ctrl-C meant for the owner does not stop Redis before the owner's
        # orderly shutdown; and it gets SIGTERM if the owner dies without stopping it. `-`: the
        # config comes on stdin (read to its end before redis-server starts serving).
        command, popen = dying_with_parent(["redis-server", "-"])
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
        try:
            self.proc.stdin.write(self._config().encode())
            self.proc.stdin.close()
        except BrokenPipeError:  # it exited at once; the loop below says why
            pass
        # No retries inside a ping (redis-py's default retries a timeout with backoff): the loop
        # below retries, and a port held by a process that never answers fails in a second, not 15.
        client = redis.Redis(
            port=self.port,
            password=self.password,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    if client.info("server").get("process_id") == self.proc.pid:
                        return
                    self._fail_another_redis()
                except (redis.AuthenticationError, redis.ResponseError):
                    self._fail_another_redis()  # ours takes our password: this one is another's
                except (redis.ConnectionError, redis.TimeoutError):
                    code = self.proc.poll()
                    if code is not None:
                        self._fail(f"redis-server exited with code {code} while starting on 127.0.0.1:{self.port}")
                    if time.monotonic() > deadline:
                        self._fail(f"redis-server did not answer on 127.0.0.1:{self.port} within {timeout:g} s")
                    time.sleep(0.05)
        finally:
            client.close()

    def _fail_another_redis(self) -> None:
        """Another Redis holds the port: ours exits ("Address already in use")."""
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._fail(f"127.0.0.1:{self.port} is answered by another process's Redis")

    def _fail(self, message: str) -> None:
        tail = self._log_tail()
        self.stop()
        raise RedisLaunchError(message, self.port, tail) from None

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        tail = " | ".join(line.strip() for line in lines[-LOG_TAIL_LINES:])
        # redis-server quotes a config line it rejects: never the password.
        return tail.replace(self.password, "***") if self.password else tail

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.close()
