"""What the fleet says of an actor whose chunk is overdue: the real cause, from its report and Ray."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from actors import STATE_ACTING, STATE_AWAITING_REPLAY, STATE_HELD_BACK
from actors.overdue import (
    AWAITING_REPLAY,
    DEAD,
    HELD_BACK,
    NOT_PLACED,
    RESTARTING,
    SLOW,
    STARTING,
    UNKNOWN,
    RayActorState,
    overdue,
    ray_actor_state,
)
from system.train.records import ProgressRecord, progress_line

HELD = {"state": STATE_HELD_BACK, "insert_wait_s": 75}
ACTING = {"state": STATE_ACTING, "insert_wait_s": 0}
AWAITING = {"state": STATE_AWAITING_REPLAY, "insert_wait_s": 0}


@pytest.mark.parametrize(
    ("report", "reported_before", "ray_state", "cause", "says"),
    [
        # issue #23: actors held back by a slow learner were said to wait for resources
        (HELD, False, RayActorState("ALIVE", True), HELD_BACK, "held back by the UTD"),
        (HELD, True, None, HELD_BACK, "have waited 75 s on replay's rate limiter"),
        ({}, False, RayActorState("PENDING_CREATION", False), NOT_PLACED, "resources the cluster lacks"),
        ({}, False, RayActorState("DEPENDENCIES_UNREADY", False), NOT_PLACED, "resources={'gpu_node': 1.0}"),
        ({}, False, RayActorState("PENDING_CREATION", True), STARTING, "placed but still starting"),
        # issue #22: an actor built and waiting for a shard (a wrong --run, shards being replaced) is not "starting"
        (
            AWAITING,
            False,
            RayActorState("PENDING_CREATION", True),
            AWAITING_REPLAY,
            "a replay shard of run 'cartpole' after 60 s",
        ),
        (AWAITING, True, RayActorState("PENDING_CREATION", True), AWAITING_REPLAY, "is --run right?"),
        # Ray says RESTARTING until a restarted actor's constructor returns: through its whole wait
        (
            AWAITING,
            True,
            RayActorState("RESTARTING", False),
            AWAITING_REPLAY,
            "Ray restarted it; it waits for a replay shard of run 'cartpole' (are its shards up?)",
        ),
        (AWAITING, True, RayActorState("DEAD", True, "The actor died unexpectedly"), DEAD, "died: The actor died"),
        ({}, True, RayActorState("RESTARTING", False), RESTARTING, "Ray is restarting its process"),
        (ACTING, True, RayActorState("ALIVE", True), SLOW, "is up but has not finished a chunk"),
        ({}, False, RayActorState("ALIVE", True), SLOW, "a slow env?"),
        ({}, False, None, UNKNOWN, "Ray does not say why: is it waiting for resources"),
        # an actor that had reported and then died is not "up but slow"
        (ACTING, True, RayActorState("DEAD", True, "The actor died unexpectedly"), DEAD, "died: The actor died"),
        ({}, True, RayActorState("DEAD", True), DEAD, "Ray says its process died (it gives no cause)"),
    ],
)
def test_an_overdue_actor_is_described_by_its_real_cause(report, reported_before, ray_state, cause, says):
    said = overdue(3, 60.0, report, reported_before, ray_state, 1.0, {"gpu_node": 1.0}, run="cartpole")
    assert said.cause == cause and says in said.text and said.text.startswith("actor 3 ")
    assert said.warning == (cause != HELD_BACK)  # held back by the UTD is the design working: no warning


def progress(**fields) -> ProgressRecord:
    values = dict(
        wall_s=200.0,
        time=0.0,
        env_steps=0,
        env_steps_per_s=0.0,
        episodes=0,
        recent_return=None,
        last_eval=None,
        updates=1500,
        updates_per_s=6.0,
        achieved_utd=1.0,
        learner_inserts=0,
        target_utd=1.0,
        weights_version=3,
        replay_size=1000,
        replay_inserts=1000,
        actors=2,
        actor_restarts=0,
        env_restarts=0,
        transitions_lost=0,
    )
    return ProgressRecord(**{**values, **fields})


def test_the_progress_line_shows_actors_held_back_by_the_utd_and_the_record_keeps_the_count():
    held = progress(actors_held_back=2)
    assert "held back by the UTD: 2/2 actors wait for the learner (updates 6/s at UTD 1)" in progress_line(held, 20_000)
    assert held.to_json()["actors_held_back"] == 2
    assert "held back" not in progress_line(progress(actors_held_back=0), 20_000)
    assert "actors_held_back" not in progress(actors_held_back=None).to_json()


HANDLE = SimpleNamespace(_actor_id=SimpleNamespace(hex=lambda: "ab12"))


def test_a_stalled_ray_control_store_is_no_answer_instead_of_a_frozen_fleet():
    stalled, asked = threading.Event(), []

    def lookup(actor_id):  # Ray's synchronous call, its control store not answering
        asked.append(actor_id)
        stalled.wait()
        return {"State": "ALIVE"}

    try:
        assert ray_actor_state(HANDLE, timeout_s=0.2, lookup=lookup) is None
        assert asked == ["ab12"]
    finally:
        stalled.set()


def test_ray_state_is_read_with_its_death_cause():
    from ray.core.generated import common_pb2

    cause = common_pb2.ActorDeathCause()  # what Ray's actor table holds
    cause.actor_died_error_context.error_message = "The actor died because its worker was killed\nmore"
    info = {"State": "DEAD", "Pid": 12, "DeathCause": cause}
    state = ray_actor_state(HANDLE, timeout_s=30, lookup=lambda actor_id: info)
    assert state == RayActorState("DEAD", True, "The actor died because its worker was killed")
    assert ray_actor_state(HANDLE, timeout_s=30, lookup=lambda actor_id: {"State": "ALIVE"}) == RayActorState(
        "ALIVE", False
    )
    assert ray_actor_state(HANDLE, timeout_s=30, lookup=lambda actor_id: {}) is None  # no state: no answer
