"""Why an actor's chunk is overdue: the fleet's message, chosen from what the actor and Ray say.

An actor whose `run` has not returned long after its chunk was due is one of:

- held back: its report says its inserts wait on replay's rate limiter. That is the UTD at work (the
  learner samples slower than the actors insert), not a fault: said once at INFO, and shown by
  the progress line ("held back by the UTD"), not as a warning.
- not placed: Ray has not created it (PENDING_CREATION without a worker process): the cluster
  lacks the CPUs or custom resources it asks for.
- awaiting replay: its report says it is built and waits for a shard of its run to serve (the
  run's shards are not up, or the actor was given the wrong run); also when Ray restarted it (Ray
  says RESTARTING until the constructor, and so its wait, returns).
- starting: Ray placed it and its constructor still runs (building envs: an emulator boots).
- restarting: Ray is restarting its dead process (and the new one has not reported yet).
- dead: Ray says its process died (and is not restarting it): the cause Ray gives.
- slow: it is up (it reported, or Ray says ALIVE) and a chunk takes long (a slow env).
- unknown: no report and no answer from Ray (or Ray took longer than RAY_STATE_TIMEOUT_S to
  answer): the message asks rather than claims.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from actors.registry import STATE_AWAITING_REPLAY, STATE_HELD_BACK

HELD_BACK = "held_back"
AWAITING_REPLAY = "awaiting_replay"
NOT_PLACED = "not_placed"
STARTING = "starting"
RESTARTING = "restarting"
SLOW = "slow"
DEAD = "dead"
UNKNOWN = "unknown"

RAY_STATE_TIMEOUT_S = 2.0
"""How long the fleet waits for Ray's answer about an overdue actor: the lookup is a synchronous
call to Ray's control store with no timeout of its own, and the fleet's poll (evaluations,
progress, shutdown) must not hang on a stalled one."""


@dataclass(frozen=True)
class RayActorState:
    """What Ray's control store says of an actor (`ray_actor_state`)."""

    state: str
    """Ray's actor state: DEPENDENCIES_UNREADY, PENDING_CREATION, ALIVE, RESTARTING or DEAD."""
    placed: bool
    """A worker process was given to it (it has a pid or port): its constructor runs or ran."""
    death_cause: str = ""
    """Why it died, as Ray says (DEAD only; "" when Ray gives no message)."""


def ray_actor_state(
    handle, timeout_s: float = RAY_STATE_TIMEOUT_S, lookup: Callable[[str], dict] | None = None
) -> RayActorState | None:
    """Ray's state of the actor behind `handle`; None when Ray cannot tell within `timeout_s` (Ray's
    own table, read through a private call that needs no dashboard: any failure of it is no
    answer). The call runs in a daemon thread: a stalled control store leaves that thread waiting,
    not the caller. `lookup`: the actor id -> Ray's actor info (default: Ray's)."""
    answer: list[RayActorState | None] = [None]

    def ask() -> None:
        try:
            info = (lookup or _ray_actor_info)(handle._actor_id.hex())
            address = info.get("Address") or {}
            placed = bool(info.get("Pid")) or bool(address.get("Port"))
            answer[0] = RayActorState(str(info["State"]), placed, _death_cause(info.get("DeathCause")))
        except Exception:
            answer[0] = None

    thread = threading.Thread(target=ask, name="ray-actor-state", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return None if thread.is_alive() else answer[0]


def _ray_actor_info(actor_id: str) -> dict:
    from ray._private import state

    return state.actors(actor_id)


def _death_cause(cause) -> str:
    """The first line of the error message in Ray's ActorDeathCause (a protobuf), else the kind of
    cause it names; "" when there is none."""
    try:
        kind = cause.WhichOneof("context")
        if kind is None:
            return ""
        message = str(getattr(getattr(cause, kind), "error_message", "") or "").strip()
        return message.splitlines()[0] if message else kind.removesuffix("_context").replace("_", " ")
    except Exception:
        return ""


@dataclass(frozen=True)
class Overdue:
    """An overdue chunk's cause and what the fleet says of it."""

    cause: str
    text: str

    @property
    def warning(self) -> bool:
        """A fault or a missing resource: a warning; held back by the UTD is the design working."""
        return self.cause != HELD_BACK


def overdue(
    actor_id: int,
    overdue_s: float,
    report: dict,
    reported_before: bool,
    ray_state: RayActorState | None,
    num_cpus: float,
    resources: dict[str, float],
    *,
    run: str,
) -> Overdue:
    """The cause of actor `actor_id`'s chunk being `overdue_s` seconds late, and the message.

    Args:
        report: its latest registry report ({} when none is live).
        reported_before: a chunk of it returned before (the fleet holds its stats).
        ray_state: `ray_actor_state` of it (None: Ray did not say).
        num_cpus, resources: what it asks Ray for (named when it is not placed).
        run: the run it belongs to (named when it waits for a shard of it).
    """
    late = f"actor {actor_id} has not finished a chunk within {overdue_s:.0f} s"
    if report.get("state") == STATE_HELD_BACK:
        return Overdue(
            HELD_BACK,
            f"{late}: held back by the UTD (the learner samples slower than the actors insert; its inserts "
            f"have waited {report.get('insert_wait_s', '-')} s on replay's rate limiter)",
        )
    state = None if ray_state is None else ray_state.state
    if state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY") and not ray_state.placed:
        return Overdue(
            NOT_PLACED,
            f"actor {actor_id} is not placed after {overdue_s:.0f} s: Ray is waiting for resources the cluster "
            f"lacks (num_cpus={num_cpus:g}, resources={dict(resources)}; `ray status` shows what is free)",
        )
    awaiting = report.get("state") == STATE_AWAITING_REPLAY
    if awaiting and state == "RESTARTING":
        # Ray keeps a restarted actor RESTARTING until its constructor returns, i.e. through the wait
        return Overdue(
            AWAITING_REPLAY,
            f"{late}: Ray restarted it; it waits for a replay shard of run {run!r} (are its shards up?)",
        )
    if awaiting and state != "DEAD":
        return Overdue(
            AWAITING_REPLAY,
            f"actor {actor_id} still waits for a replay shard of run {run!r} after {overdue_s:.0f} s (its "
            "chunk is overdue): are its shards up, is --run right?",
        )
    if state == "PENDING_CREATION":
        return Overdue(
            STARTING,
            f"actor {actor_id} is placed but still starting after {overdue_s:.0f} s (building its envs; "
            "a slow env or emulator start?)",
        )
    if state == "RESTARTING":
        return Overdue(RESTARTING, f"{late}: Ray is restarting its process")
    if state == "DEAD":
        cause = f": {ray_state.death_cause}" if ray_state.death_cause else " (it gives no cause)"
        return Overdue(DEAD, f"{late}: Ray says its process died{cause}")
    if report or reported_before or state == "ALIVE":
        return Overdue(
            SLOW,
            f"actor {actor_id} is up but has not finished a chunk within {overdue_s:.0f} s (a slow env? "
            "`qfleet status` shows its last report)",
        )
    return Overdue(
        UNKNOWN,
        f"actor {actor_id} has not reported within {overdue_s:.0f} s and Ray does not say why: is it waiting "
        f"for resources the cluster lacks (num_cpus={num_cpus:g}, resources={dict(resources)}; `ray status` "
        "shows what is free)?",
    )
