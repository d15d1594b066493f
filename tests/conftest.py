"""Shared fixtures: CartPole-like specs and batches, in-process servers, `qfleet` subprocesses."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from replay import ReplayClient, ReplayCredentials, ReplayServer, Spec, choose_shard
from system.local.redis_server import RedisProcess


def _session_secrets() -> str:
    """The test session runs as `qfleet train` does, with its secrets in its environment before
    anything imports Ray (none of the imports above does): Ray token auth with a per-session token
    (unless the environment chose one), one Redis password for every `redis_server` of the session
    (Ray workers inherit it at `ray.init`, so module-wide Ray instances serve every test), and a
    private runtime folder, so the run secrets of `qfleet train` children stay out of the user's."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "disabled" and not (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    runtime = tempfile.mkdtemp(prefix="qfleet-test-runtime-")
    atexit.register(shutil.rmtree, runtime, ignore_errors=True)
    os.environ["XDG_RUNTIME_DIR"] = runtime
    password = secrets.token_urlsafe(32)
    os.environ["QFLEET_REDIS_PASSWORD"] = password
    return password


REDIS_PASSWORD = _session_secrets()
"""The password of every `redis_server` of this session (also in QFLEET_REDIS_PASSWORD)."""


def _one_torch_thread() -> None:
    """The tests' own torch work runs on one thread, as actors and `qfleet record` do: the small
    networks gain nothing from more, and on a 2-core machine that also runs Ray workers, torch's
    default of one thread per core oversubscribes it (chain-MDP tests then took minutes)."""
    import torch

    torch.set_num_threads(1)


_one_torch_thread()

CARTPOLE_SPEC = Spec(
    {
        "obs": ((4,), "float32"),
        "action": ((), "int64"),
        "reward": ((), "float32"),
        "next_obs": ((4,), "float32"),
        "discount": ((), "float32"),
    }
)


def make_batch(n: int, start: int = 0, priority: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """n CartPole-shaped items whose `action` column numbers them start, start+1, ..."""
    ids = np.arange(start, start + n)
    batch = {
        "obs": np.stack([ids, ids + 1, ids + 2, ids + 3], axis=1).astype(np.float32),
        "action": ids.astype(np.int64),
        "reward": (ids % 7).astype(np.float32),
        "next_obs": np.stack([ids + 1, ids + 2, ids + 3, ids + 4], axis=1).astype(np.float32),
        "discount": np.full(n, 0.99, dtype=np.float32),
    }
    if priority is not None:
        batch["priority"] = np.asarray(priority, dtype=np.float64)
    return batch


@pytest.fixture
def spec() -> Spec:
    return CARTPOLE_SPEC


@pytest.fixture
def start_server():
    """Starts in-process servers on free ports; stops every one at teardown."""
    servers: list[ReplayServer] = []

    def start(spec: Spec = CARTPOLE_SPEC, **kwargs) -> ReplayServer:
        server = ReplayServer(spec, **{"port": 0, **kwargs}).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=0.2, checkpoint=False)


@pytest.fixture
def connect():
    """Opens `ReplayClient(address, **kwargs)`s; closes every one at teardown."""
    clients: list[ReplayClient] = []

    def open_client(address: str, **kwargs) -> ReplayClient:
        client = ReplayClient(address, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


class QfleetProcess:
    """A `qfleet replay serve` child process, as a user runs it."""

    LINE = re.compile(r"serving at (\S+):(\d+); metrics (\S+)")

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "system.cli", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.address, self.metrics_url = self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"qfleet exited ({self.proc.wait()}) before serving:\n{self.log()}")
            match = self.LINE.search(line)
            if match:
                return f"{match.group(1)}:{match.group(2)}", match.group(3)
        raise RuntimeError(f"qfleet did not start serving within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def signal(self, signum: int) -> int:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()


@pytest.fixture
def qfleet_serve(tmp_path):
    """Starts `qfleet replay serve ARGS...` subprocesses; kills leftovers (by PID) at teardown.

    With `credentials` the shard gets them in its environment (TLS + token, as users run it);
    without, it serves plaintext on loopback (`--insecure`), for the tests about other things.
    """
    procs: list[QfleetProcess] = []

    def start(*args: str, credentials: ReplayCredentials | None = None) -> QfleetProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QFLEET_REPLAY_")}
        if credentials is None:
            args = (*args, "--insecure")
        else:
            env |= credentials.environ()
        proc = QfleetProcess(list(args), tmp_path / f"serve-{len(procs)}.log", env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


SIGTERM = signal.SIGTERM


class RedisServer(RedisProcess):
    """A real `redis-server` on a loopback port (the one `qfleet train` embeds), started at once,
    with the session's password (clients find it in QFLEET_REDIS_PASSWORD)."""

    def __init__(self, directory: Path):
        super().__init__(directory=str(directory), password=REDIS_PASSWORD)
        self.start()


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for one test, stopped (by PID) afterwards."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


DISCOVERY_THREAD = "sharded-replay-discovery"
"""The name of a ShardedReplay's registry watcher thread (replay/membership.py)."""

LEAK_WAIT_S = 10.0
"""How long a test's teardown waits for its watchers to end (close() joins one for up to 5 s)."""


def _discovery_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == DISCOVERY_THREAD and t.is_alive()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Records on the test item whether its set-up or body failed (`item.qfleet_failed`), for
    teardown checks that would only add noise to a failure already reported."""
    outcome = yield
    report = outcome.get_result()
    if report.when in ("setup", "call") and report.failed:
        item.qfleet_failed = True


@pytest.fixture(autouse=True)
def no_leaked_sharded_replay(request):
    """Fails the test that leaves a ShardedReplay's discovery watcher running in this process
    after its own fixtures have been torn down: a client not closed keeps polling a registry that
    is gone, and every later test's log fills with "shard registry ... unreachable". Watchers that
    were already running when the test began (a module-wide fixture's) are not its concern, nor
    are those of a test that already failed (it may have stopped before its own close).

    Autouse and function-scoped, so this teardown runs after the test's other function fixtures'
    (which close what they opened); a closing watcher gets a moment to end (close() joins it for
    up to 5 s)."""
    before = _discovery_threads()
    yield
    if getattr(request.node, "qfleet_failed", False):
        return
    if not wait_until(lambda: not (_discovery_threads() - before), timeout=LEAK_WAIT_S, step=0.05):
        leaked = len(_discovery_threads() - before)
        pytest.fail(f"{leaked} ShardedReplay discovery watcher(s) left running: close the ShardedReplay", pytrace=False)


def wait_until(predicate, timeout=10.0, step=0.05):
    """Polls `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def shard_kwargs(redis_server, run="test", **extra):
    return {"redis_url": redis_server.url, "run": run, "heartbeat_s": 0.2, "registry_ttl_s": 1.0, **extra}


def writer_for(shard_id: int, shard_ids: list[int], prefix="w") -> str:
    """A writer id whose rendezvous choice among `shard_ids` is `shard_id`."""
    for i in range(1000):
        writer = f"{prefix}{i}"
        if choose_shard(writer, shard_ids) == shard_id:
            return writer
    raise AssertionError("no writer id found")


def cartpole_transitions(n: int, start: int = 0, version: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(start)
    return {
        "obs": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": np.ones(n, np.float32),
        "next_obs": rng.normal(size=(n, 4)).astype(np.float32),
        "discount": np.full(n, 0.99**3, np.float32),
        "actor_id": np.zeros(n, np.int32),
        "policy_version": np.full(n, version, np.int64),
    }
