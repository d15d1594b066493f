"""The local cluster's stop (system/bench/local_cluster.py), on stand-in nodes: every node's whole
process group goes, even when a second Ctrl-C cuts the stop short. And `LocalDeployment` (what
`qfleet bench scaling --local-cluster` starts) when a node does not come up: the error names the
node, and nothing it started is left behind: no node's processes, no Redis, not its folder, not its
secrets in this process's environment."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from conftest import wait_until
from system.bench import local_cluster
from system.bench.children import start_child
from system.bench.local_cluster import SECRET_ENV, LocalCluster, LocalDeployment
from system.errors import ClusterStartError

LEADER_GOES_MEMBER_STAYS = "(trap '' TERM; exec sleep 600) & wait"
"""A node whose leader exits on SIGTERM at once while a member of its group ignores SIGTERM."""

NOTHING_GOES = "trap '' TERM; sleep 600 & wait"
"""A node that ignores SIGTERM altogether (leader and member)."""


def live_processes(group: int | None = None, naming: str | None = None) -> list[int]:
    """Live processes (zombies are dead: they only wait for init to reap them) of process group
    `group`, or whose command line holds `naming`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            if (group is not None and int(fields[2]) == group) or (
                naming is not None and naming.encode() in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:  # it exited meanwhile
            pass
    return found


@pytest.fixture
def stand_in_cluster(tmp_path):
    """A LocalCluster whose nodes are `sh -c SCRIPT` process groups (`add(name, script)`); whatever
    a test leaves running is killed."""
    cluster = LocalCluster(tmp_path, dict(os.environ))

    def add(name: str, script: str) -> None:
        cluster.nodes[name] = start_child(["sh", "-c", script])

    cluster.add = add
    yield cluster
    for proc in cluster.nodes.values():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def started(cluster: LocalCluster) -> None:
    """Waits until each stand-in node's group has its leader and its `sleep`."""
    for proc in cluster.nodes.values():
        assert wait_until(lambda pgid=proc.pid: len(live_processes(group=pgid)) >= 2, timeout=60)


def all_gone(cluster: LocalCluster) -> bool:
    return wait_until(lambda: not any(live_processes(group=p.pid) for p in cluster.nodes.values()), timeout=60)


def test_stop_kills_a_group_member_that_outlives_its_leader(stand_in_cluster):
    stand_in_cluster.add("head", LEADER_GOES_MEMBER_STAYS)
    stand_in_cluster.add("node-a", LEADER_GOES_MEMBER_STAYS)
    started(stand_in_cluster)
    stand_in_cluster.stop()
    assert all_gone(stand_in_cluster)


def test_an_interrupt_while_stopping_still_kills_every_node(stand_in_cluster, monkeypatch):
    """A second Ctrl-C (or SIGTERM turned into KeyboardInterrupt) while the stop waits for the
    first node: the stop goes on to SIGKILL every node's group before the interrupt goes on."""
    stand_in_cluster.add("head", NOTHING_GOES)
    stand_in_cluster.add("node-a", NOTHING_GOES)
    started(stand_in_cluster)
    first = next(iter(stand_in_cluster.nodes.values()))
    wait = first.wait

    def interrupted(timeout=None):
        if timeout is not None:
            raise KeyboardInterrupt
        return wait()

    monkeypatch.setattr(first, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stand_in_cluster.stop()
    assert all_gone(stand_in_cluster)


@pytest.mark.slow  # a head and a worker node come up first: 10-30 s on a loaded 2-core machine
@pytest.mark.timeout(240)
def test_a_worker_that_cannot_start_stops_every_node_and_redis_and_puts_the_environment_back(monkeypatch):
    # A user's own values, to be put back; RAY_AUTH_TOKEN_PATH must not reach the cluster's nodes.
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/nonexistent/ray-token")
    monkeypatch.setenv("QFLEET_REDIS_PASSWORD", "the-users-own")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    # The head's `ray start --block` takes ~5 s to stop on SIGTERM: its group gets SIGKILL sooner.
    monkeypatch.setattr(local_cluster, "STOP_TIMEOUT_S", 0.5)
    saved = {name: os.environ.get(name) for name in SECRET_ENV}
    # ray_node.py refuses CPU among the custom resources: node B exits while node A is up.
    deployment = LocalDeployment(workers={"node-a": {"actors": 1}, "node-b": {"CPU": 1}})

    with pytest.raises(ClusterStartError) as raised, deployment:
        pytest.fail("the deployment started with a worker that cannot start")

    assert raised.value.node == "node-b" and "exited" in raised.value.reason
    assert "CPU" in raised.value.log_tail  # the node's own reason, though its log is gone
    cluster, redis = deployment.cluster, deployment.redis
    assert set(cluster.nodes) == {"head", "node-a", "node-b"}
    for name, proc in cluster.nodes.items():
        assert proc.returncode is not None, name
        # Nothing of the node's process group is left (SIGKILL takes effect when the process next
        # runs: on a loaded machine, a moment after the stop returns).
        assert wait_until(lambda pgid=proc.pid: not live_processes(group=pgid), timeout=60), name
    # Nor anything of the cluster that left its node's group (each has the folder in its command line).
    assert wait_until(lambda: not live_processes(naming=str(cluster.directory)), timeout=60)
    assert redis.proc is None
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", redis.port), timeout=10):
        pass
    assert {name: os.environ.get(name) for name in SECRET_ENV} == saved
    assert not cluster.directory.exists()
