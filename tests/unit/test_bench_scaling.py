"""`qfleet bench scaling`'s arithmetic and options: env steps/s per node from the actors' reports,
and the layouts `--local-cluster` measures."""

from __future__ import annotations

import pytest

from system.bench.cluster_topology import ACTOR_NODE, WORKERS
from system.bench.local_cluster import LocalDeployment
from system.bench.scaling import LOCAL_LAYOUTS, per_node_rates
from system.cli import main


def report(node: str, env_steps: int, updated_at: float) -> dict:
    """An actor's report as the registry returns it (values as Redis holds them: strings)."""
    return {"node": node, "env_steps": str(env_steps), "updated_at": f"{updated_at:.3f}"}


def test_per_node_rates_sum_each_actors_steps_over_its_own_report_times():
    first = {0: report("ray-aaa", 1_000, 100.0), 1: report("ray-aaa", 500, 101.0), 2: report("ray-bbb", 0, 100.5)}
    last = {0: report("ray-aaa", 4_000, 110.0), 1: report("ray-aaa", 2_500, 111.0), 2: report("ray-bbb", 800, 104.5)}
    # node A: 3,000 steps in 10 s + 2,000 in 10 s; node B: 800 in 4 s.
    assert per_node_rates(first, last, {"ray-aaa": "node-a"}) == {"node-a": 500.0, "ray-bbb": 200.0}


def test_per_node_rates_count_a_stalled_actor_as_zero_and_leave_out_a_new_one():
    first = {0: report("ray-aaa", 1_000, 100.0)}
    last = {0: report("ray-aaa", 1_000, 100.0), 1: report("ray-bbb", 900, 108.0)}
    assert per_node_rates(first, last, {}) == {"ray-aaa": 0.0, "ray-bbb": 0.0}


def test_the_local_layouts_spread_over_the_worker_nodes_or_pin_to_node_b():
    workers = LocalDeployment().workers
    assert set(workers) == set(WORKERS)
    for name, resources in workers.items():
        assert resources.items() >= WORKERS[name].items()  # the topology's own, plus one of its own
    pinned = [name for name, resources in workers.items() if "actors_node_b" in resources]
    assert pinned == [ACTOR_NODE] and "actors_node_b" in LOCAL_LAYOUTS["one-node"]
    assert LOCAL_LAYOUTS["spread"] == "{actors: 1}"


@pytest.mark.parametrize("setting", ["ray.address=127.0.0.1:6379", "redis.url=redis://127.0.0.1:6390/0"])
def test_local_cluster_refuses_an_address_of_another_cluster_before_starting_anything(setting, capsys):
    assert main(["bench", "scaling", "--local-cluster", "--set", setting]) == 2
    assert "--local-cluster starts its own Ray and Redis" in capsys.readouterr().err
