"""`qfleet bench scaling`'s arithmetic and options: env steps/s per node from the actors' reports,
and the layouts `--local-cluster` measures."""

from __future__ import annotations

import pytest

from system.bench import scaling
from system.bench.cluster_topology import ACTOR_NODE, WORKERS
from system.bench.local_cluster import LocalDeployment
from system.bench.scaling import LOCAL_LAYOUTS, per_node_rates
from system.cli import main
from system.errors import ClusterStartError, RedisLaunchError


def report(node: str, env_steps: int, updated_at: float, pid: int = 100) -> dict:
    """An actor's report as the registry returns it (values as Redis holds them: strings)."""
    return {"node": node, "pid": str(pid), "env_steps": str(env_steps), "updated_at": f"{updated_at:.3f}"}


def test_per_node_rates_sum_each_actors_steps_over_its_own_report_times():
    first = {0: report("ray-aaa", 1_000, 100.0), 1: report("ray-aaa", 500, 101.0), 2: report("ray-bbb", 0, 100.5)}
    last = {0: report("ray-aaa", 4_000, 110.0), 1: report("ray-aaa", 2_500, 111.0), 2: report("ray-bbb", 800, 104.5)}
    # node A: 3,000 steps in 10 s + 2,000 in 10 s; node B: 800 in 4 s.
    assert per_node_rates(first, last, {"ray-aaa": "node-a"}) == {"node-a": 500.0, "ray-bbb": 200.0}


def test_per_node_rates_count_a_stalled_actor_as_zero_and_leave_out_a_new_one():
    first = {0: report("ray-aaa", 1_000, 100.0)}
    last = {0: report("ray-aaa", 1_000, 100.0), 1: report("ray-bbb", 900, 108.0)}
    assert per_node_rates(first, last, {}) == {"ray-aaa": 0.0, "ray-bbb": 0.0}


@pytest.mark.parametrize(
    ("node", "pid"),
    [("ray-bbb", 200), ("ray-aaa", 200), ("ray-bbb", 100)],
    ids=["new process on the other node", "new process on its node", "other node"],
)
def test_per_node_rates_leave_out_an_actor_that_ray_restarted_in_the_window(node, pid):
    """Ray restarts an actor's process under the same actor id: the new process counts env steps
    from 0 again, perhaps on the other node. Its steps since the restart are not those of the old
    process's report, so the actor counts on neither node; the other actors still do."""
    first = {0: report("ray-aaa", 9_000, 100.0, pid=100), 1: report("ray-aaa", 1_000, 100.0, pid=101)}
    last = {0: report(node, 1_000, 110.0, pid=pid), 1: report("ray-aaa", 3_000, 110.0, pid=101)}
    names = {"ray-aaa": "node-a", "ray-bbb": "node-b"}
    expected = {"node-a": 200.0, "node-b": 0.0} if node == "ray-bbb" else {"node-a": 200.0}
    assert per_node_rates(first, last, names) == expected


def test_the_local_layouts_spread_over_the_worker_nodes_or_pin_to_node_b():
    workers = LocalDeployment().workers
    assert set(workers) == set(WORKERS)
    for name, resources in workers.items():
        assert resources.items() >= WORKERS[name].items()  # the topology's own, plus one of its own
    pinned = [name for name, resources in workers.items() if "actors_node_b" in resources]
    assert pinned == [ACTOR_NODE] and "actors_node_b" in LOCAL_LAYOUTS["one-node"]
    assert LOCAL_LAYOUTS["spread"] == "{actors: 1}"


@pytest.mark.parametrize("setting", ["ray.address=127.0.0.1:6379", "redis.url=redis://127.0.0.1:6390/0"])
def test_local_cluster_refuses_an_address_of_another_cluster_before_starting_anything(setting, capsys, monkeypatch):
    monkeypatch.setattr(LocalDeployment, "__enter__", lambda self: pytest.fail("the local cluster was started"))
    monkeypatch.setattr(scaling, "run_layout", lambda *a, **k: pytest.fail("a run was started"))
    assert main(["bench", "scaling", "--local-cluster", "--set", setting]) == 2
    assert "--local-cluster starts its own Ray and Redis" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            ClusterStartError("node-b", "exited 1 before it was up", "ValueError: Use the 'num_cpus' argument"),
            "num_cpus",
        ),
        (RedisLaunchError("redis-server exited with code 1", 6390, "Address already in use"), "Address already in use"),
    ],
    ids=["a Ray node", "Redis"],
)
def test_local_cluster_that_does_not_start_is_an_error_message_and_exit_1(error, said, capsys, monkeypatch):
    """What did not start, and why, as one message: no traceback, no run started."""

    def fail(self):
        raise error

    monkeypatch.setattr(scaling, "interrupt_on_sigterm", lambda: None)  # leave pytest's SIGTERM alone
    monkeypatch.setattr(LocalDeployment, "__enter__", fail)
    monkeypatch.setattr(scaling, "run_layout", lambda *a, **k: pytest.fail("a run was started"))
    assert main(["bench", "scaling", "--local-cluster", "--actors", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qfleet: ") and said in err and "Traceback" not in err
