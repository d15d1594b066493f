"""The multi-node Ray cluster of README's "Deploy on a Ray cluster" on this one machine: a head
(`ray start --head`, no CPUs for tasks) and worker nodes as separate raylets (system/bench/ray_node.py)
with the custom resources of system/bench/cluster_topology.py, and, for a run, an external
password-protected redis-server started apart from the cluster as a deployment starts it.

tests/smoke/test_cluster.py starts it to test a run on a cluster (with the test session's Ray token
and Redis password); `qfleet bench scaling --local-cluster` starts it (`LocalDeployment`, with fresh
secrets) to measure how a run scales over its nodes. Everything listens on 127.0.0.1. Each node is a
process group of its own (SIGKILL to it is a node lost hard) that gets SIGTERM when the thread that
started it ends, and is stopped by PID: SIGTERM, then SIGKILL to every node's group, even when a
second Ctrl-C cuts the stop short.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from system.bench.children import start_child
from system.bench.cluster_topology import HEAD_CPUS, WORKERS, train_overrides
from system.errors import ClusterStartError
from system.local import RedisProcess, free_port


def _ray_command() -> str:
    """Ray's `ray` command: beside this interpreter (its venv's), else the first on PATH."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray") or str(beside)


RAY = _ray_command()
NODE_SCRIPT = str(Path(__file__).with_name("ray_node.py"))

NODE_CPUS = 1
"""CPUs each worker node offers (this machine has 2 cores); the head offers HEAD_CPUS."""

NODE_STORE_MB = 1024
"""Each worker node's object store: room for a policy larger than a Redis string (512 MiB)."""

START_TIMEOUT_S = 120.0
"""How long a node may take to come up (a loaded 2-core machine takes 10-20 s)."""

STOP_TIMEOUT_S = 5.0
"""How long a node's process group has after SIGTERM before SIGKILL (`ray start --block` may sit on it)."""

SECRET_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "QFLEET_REDIS_PASSWORD")
"""The environment variables `LocalDeployment` sets for its lifetime (and then puts back)."""

TMP_ROOT = "/tmp"
"""Where `LocalDeployment` makes its folder: a short path whatever $TMPDIR is (Ray's socket paths
in it must stay under 108 bytes)."""

LOG_TAIL_CHARS = 2000
"""How much of a node's log a ClusterStartError quotes."""


class LocalCluster:
    """A head and worker nodes on 127.0.0.1, each a process group of its own; stopped by PID.

    Args:
        directory: a short folder of its own (Ray's socket paths must stay under 108 bytes): the
            nodes' logs, Ray's temp folder and each worker's socket folder.
        env: the nodes' environment (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN: the cluster's token).
    """

    def __init__(self, directory: Path, env: dict[str, str]):
        self.directory = directory
        self.env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray on loopback
        self.port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}
        """Worker name -> its Ray node id."""

    @property
    def address(self) -> str:
        """The head's GCS address, as `ray.address` takes it."""
        return f"127.0.0.1:{self.port}"

    def start_head(self, num_cpus: int = HEAD_CPUS) -> None:
        """`ray start --head --block` on 127.0.0.1 without the dashboard; returns once it is up."""
        command = [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.directory / 'ray'}",
            "--disable-usage-stats",
        ]
        self._launch("head", command)
        self._wait("head", "Ray runtime started")

    def add_workers(
        self, workers: dict[str, dict[str, float]], num_cpus: int = NODE_CPUS, store_mb: int = NODE_STORE_MB
    ) -> None:
        """Starts the worker nodes together (each with its own socket folder), each with its custom
        resources, and waits for all."""
        for name, resources in workers.items():
            (self.directory / name).mkdir()
            command = [
                sys.executable,
                NODE_SCRIPT,
                f"--address={self.address}",
                f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources)}",
                f"--object-store-mb={store_mb}",
                f"--sockets={self.directory / name}",
            ]
            self._launch(name, command)
        for name in workers:
            line = self._wait(name, "ready ")
            self.node_ids[name] = line.split("ready ", 1)[1].split()[0]

    def _launch(self, name: str, command: list[str]) -> None:
        with open(self.directory / f"{name}.log", "w") as log:
            self.nodes[name] = start_child(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _wait(self, name: str, ready: str, timeout: float = START_TIMEOUT_S) -> str:
        """The first line of node `name`'s log that holds `ready`, once it is there."""
        log = self.directory / f"{name}.log"
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in log.read_text(errors="replace").splitlines() if ready in line]
            if found:
                return found[0]
            if self.nodes[name].poll() is not None:
                raise ClusterStartError(name, f"exited {self.nodes[name].returncode} before it was up", _tail(log))
            if time.monotonic() > deadline:
                raise ClusterStartError(name, f"was not up after {timeout:.0f} s", _tail(log))
            time.sleep(0.1)

    def pids(self) -> set[int]:
        """The nodes' process ids (each leads its node's process group)."""
        return {proc.pid for proc in self.nodes.values()}

    def stop(self) -> None:
        """SIGTERM to every node's process group (workers first); after up to STOP_TIMEOUT_S for
        each leader to exit, SIGKILL to every group, whatever happened meanwhile: a group member that
        outlived its leader goes too, and an interrupt (a second Ctrl-C, SIGTERM) while it waits
        still kills every node before it goes on."""
        try:
            for name in reversed(list(self.nodes)):
                if self.nodes[name].poll() is None:
                    _signal_group(self.nodes[name], signal.SIGTERM)
            for proc in self.nodes.values():
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            for proc in self.nodes.values():
                _signal_group(proc, signal.SIGKILL)
            for proc in self.nodes.values():
                proc.wait()


def _tail(log: Path) -> str:
    """The end of a node's log (LOG_TAIL_CHARS), or "" when it has none."""
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:  # gone already
        pass


class LocalDeployment:
    """A context manager: the topology's cluster (`LocalCluster` with WORKERS, each worker also
    offering `actors_<name>`, as many as its `actors` slots, so that a run can pin its actors to
    one node) and an external redis-server with a password, started with fresh secrets and stopped
    on exit, however it is left: an error, Ctrl-C, or SIGTERM where the caller turns SIGTERM into
    KeyboardInterrupt (`qfleet bench scaling` does: system.bench.children.interrupt_on_sigterm;
    Python's default for SIGTERM ends the process without any cleanup). Its folder (nodes' logs,
    Ray's temp folder) is removed on exit; a node that did not start raises ClusterStartError,
    which quotes the end of that node's log.

    While it runs, this process's environment holds the cluster's Ray token (RAY_AUTH_MODE=token,
    RAY_AUTH_TOKEN) and the Redis password (QFLEET_REDIS_PASSWORD), so the `qfleet train` and
    `qfleet scale` it starts (children inherit them) and this process's Redis clients find them;
    none is ever on a command line. The previous values are put back on exit.
    """

    def __init__(self, workers: dict[str, dict[str, float]] = WORKERS):
        self.workers = {
            name: {**resources, node_resource(name): resources.get("actors", 0)} for name, resources in workers.items()
        }
        self.cluster: LocalCluster | None = None
        self.redis: RedisProcess | None = None
        self._directory: Path | None = None
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> LocalDeployment:
        self._saved_env = {name: os.environ.get(name) for name in SECRET_ENV}
        self._directory = Path(tempfile.mkdtemp(prefix="qfc-", dir=TMP_ROOT))
        try:
            self.redis = RedisProcess(directory=str(self._directory))
            self.redis.start()
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
            os.environ.update(
                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), QFLEET_REDIS_PASSWORD=self.redis.password
            )
            self.cluster = LocalCluster(self._directory, dict(os.environ))
            self.cluster.start_head()
            self.cluster.add_workers(self.workers)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        """Stops the nodes, then Redis, then puts the environment back and removes the folder:
        each step runs even when one before it failed or was interrupted."""
        try:
            try:
                if self.cluster is not None:
                    self.cluster.stop()
            finally:
                if self.redis is not None:
                    self.redis.stop()
        finally:
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)

    def train_settings(self) -> list[str]:
        """`qfleet train --set` settings for a run on it: its Ray and Redis addresses, then the
        topology's placement (TRAIN_SETTINGS)."""
        assert self.cluster is not None and self.redis is not None, "use it in a `with` block"
        return [f"ray.address={self.cluster.address}", f"redis.url={self.redis.url}", *train_overrides()]

    def node_names(self) -> dict[str, str]:
        """Each worker node as the actors' reports name it ("ray-" and its Ray node id's first 12
        hex digits) -> its name in the topology."""
        assert self.cluster is not None, "use it in a `with` block"
        return {f"ray-{node_id[:12]}": name for name, node_id in self.cluster.node_ids.items()}


def node_resource(name: str) -> str:
    """The custom resource only worker `name` offers in a `LocalDeployment` (`actors_node_b`):
    `actors.resources={actors: 1, actors_node_b: 1}` puts every actor on that node."""
    return "actors_" + name.replace("-", "_")
