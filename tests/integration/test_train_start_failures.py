"""How `qfleet train` says that a component did not start: the cause, in one line, as soon as Ray
knows it (a local Ray instance, real actors)."""

from __future__ import annotations

import logging

import pytest

from system.errors import TrainError
from system.train.launch import await_started


def component_class():
    """A stand-in for a shard or learner host (`describe` answers once it is built); defined in a
    function, so that Ray's workers get it by value (they cannot import this test module)."""

    class Component:
        def __init__(self, error: Exception | None = None):
            if error is not None:
                raise error

        def describe(self) -> str:
            return "serving"

    return Component


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from system.local.ray_runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def test_a_component_that_fails_to_start_is_named_with_its_cause_without_waiting_for_the_others(ray_local):
    remote = ray_local.remote(component_class()).options(num_cpus=0)
    good = remote.remote()
    never_placed = ray_local.remote(component_class()).options(num_cpus=0, resources={"absent_node": 1}).remote()
    failing = remote.remote(OSError("replay server cannot listen on 127.0.0.1:1: [Errno 98] Address already in use"))
    describes = {
        good.describe.remote(): "replay shard 0",
        never_placed.describe.remote(): "replay shard 1",
        failing.describe.remote(): "replay shard 2",
    }
    # shard 1 never answers: the error is shard 2's failure, seen without waiting out the limit
    with pytest.raises(TrainError) as raised:
        await_started(ray_local, describes, 600.0, "not placed?")
    message = str(raised.value)
    assert message.startswith("replay shard 2 did not start: ")
    assert message.endswith("OSError: replay server cannot listen on 127.0.0.1:1: [Errno 98] Address already in use")
    assert "\n" not in message
    for handle in (good, never_placed, failing):
        ray_local.kill(handle)


def test_an_error_of_several_lines_is_named_by_its_first_and_logged_in_full_without_secrets(ray_local, caplog):
    message = (
        "CUDA error: out of memory\n"
        "CUDA kernel errors might be asynchronously reported at some other API call.\n"
        "    while the learner read redis://:pw-not-to-show@127.0.0.1:1/0\n"
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."
    )
    failing = ray_local.remote(component_class()).options(num_cpus=0).remote(RuntimeError(message))
    caplog.set_level(logging.DEBUG, logger="system.train.launch")
    with pytest.raises(TrainError) as raised:
        await_started(ray_local, {failing.describe.remote(): "the learner"}, 120.0, "-")
    # the cause, not the message's last line ("Compile with ...")
    assert str(raised.value) == "the learner did not start: RuntimeError: CUDA error: out of memory"
    logged = caplog.text
    assert "Compile with `TORCH_USE_CUDA_DSA`" in logged and "redis://:***@127.0.0.1:1/0" in logged
    assert "pw-not-to-show" not in logged
    ray_local.kill(failing)


def test_components_ray_cannot_place_are_all_named_with_what_to_check_once_the_limit_passes(ray_local):
    remote = ray_local.remote(component_class())
    good = remote.options(num_cpus=0).remote()
    never_placed = [remote.options(num_cpus=0, resources={"absent_node": 1}).remote() for _ in range(3)]
    assert await_started(ray_local, {good.describe.remote(): "the learner"}, 120.0, "-") == ["serving"]
    with pytest.raises(TrainError, match=r"^the learner did not start within 1 s \(not placed\? `ray status`\)$"):
        await_started(ray_local, {never_placed[0].describe.remote(): "the learner"}, 1.0, "not placed? `ray status`")
    shards = {good.describe.remote(): "replay shard 0"}
    shards.update({handle.describe.remote(): f"replay shard {i}" for i, handle in enumerate(never_placed[1:], 1)})
    with pytest.raises(TrainError, match=r"^replay shards 1, 2 did not start within 1 s \(not placed\?\)$"):
        await_started(ray_local, shards, 1.0, "not placed?")
    for handle in (good, *never_placed):
        ray_local.kill(handle)
