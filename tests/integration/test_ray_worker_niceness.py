"""A local Ray started by `init_ray` runs its workers (learner, actors, shards) at the niceness it
is given, so `qfleet train`'s learner does not sit behind every ordinary process on the machine."""

from __future__ import annotations

import os

import pytest

from system.config.sections import RayConfig


def test_local_ray_workers_run_at_the_given_niceness():
    import ray

    from system.local.ray_runtime import init_ray

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    expected = RayConfig().worker_niceness
    assert expected == 0  # qfleet's default, not Ray's 15
    init_ray(num_cpus=1, worker_niceness=expected)
    try:

        @ray.remote(num_cpus=0)
        def niceness() -> int:
            return os.nice(0)

        assert ray.get(niceness.remote(), timeout=120) == expected
    finally:
        ray.shutdown()


def test_worker_niceness_outside_0_to_19_is_refused():
    with pytest.raises(ValueError, match="worker_niceness"):
        RayConfig(worker_niceness=-1)
    with pytest.raises(ValueError, match="worker_niceness"):
        RayConfig(worker_niceness=20)
