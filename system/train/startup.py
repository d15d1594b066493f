"""How long a `qfleet train` session took to start, phase by phase.

Each phase is stamped with the seconds from the start of the `qfleet train` process (interpreter
start-up and imports included) to the moment it was reached. The driver stamps its own phases
(checks done, Redis, Ray, shards); the actors and the learner report theirs as Unix times
(`actors.ActorStartup`; `LearnerDescription.built_at` and `LearnerProgress.first_update_at`, both
stamped by the learner), taken on the same machine in the
embedded default (on a cluster, clocks of other nodes may be off by their drift). Actors start
side by side, so their phases are the earliest actor's: the first env step of the run, not of
the slowest actor.

Once every phase is known (the actors' first insert and the learner's first update, whichever
comes last; an offline-only run starts no actors and has no actor phases), the breakdown goes to
metrics.jsonl as one `startup` record and is printed once. A session that ends before that records
what it reached after its stop, and prints it only if it got as far as an env step or an update.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

PHASES: tuple[tuple[str, str], ...] = (
    ("driver", "driver ready (interpreter, imports, config and env checks)"),
    ("redis", "embedded redis-server answers (or redis.url given)"),
    ("ray", "Ray initialised"),
    ("shards", "every replay shard serves"),
    ("learner", "the learner is built (network, replay client, checkpoint read)"),
    ("envs", "the first actor's envs are made and reset"),
    ("actors", "the first actor is up (envs, replay writer, registry, a shard serving)"),
    ("policy", "the first actor acts with its policy (built first, or in a fresh run after random steps)"),
    ("first_env_step", "the first env step returned"),
    ("first_insert", "the first batch of transitions was handed to replay"),
    ("first_update", "the learner's first update"),
)
"""Every phase of a start, in the order a sequential start reaches them, with what it means."""

PHASE_NAMES = tuple(name for name, _ in PHASES)

ACTOR_PHASES = ("envs", "actors", "policy", "first_env_step", "first_insert")
"""The phases only a run with actors reaches (an offline-only run has none)."""


def process_started_at() -> float:
    """Unix time at which this process started (from /proc on Linux, to 10 ms); elsewhere the
    time of the first call (imports before it are then not counted)."""
    global _first_call
    try:
        with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of proc(5): starttime, clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):
        if _first_call is None:
            _first_call = time.time()
        return _first_call


_first_call: float | None = None


class StartupClock:
    """The phases a session reached, as seconds since its process started.

    Args:
        started_at: Unix time the session's process started (default: `process_started_at()`).
    """

    def __init__(self, started_at: float | None = None):
        self.started_at = process_started_at() if started_at is None else started_at
        self.reached: dict[str, float] = {}
        """Phase name -> seconds since `started_at` (only phases reached)."""
        self.recorded = False
        """The breakdown was recorded (it is recorded once per session)."""

    def mark(self, phase: str, at: float | None = None) -> None:
        """Stamps `phase` at Unix time `at` (default now); a phase keeps its earliest stamp."""
        if phase not in PHASE_NAMES:
            raise ValueError(f"unknown start-up phase {phase!r}; phases: {', '.join(PHASE_NAMES)}")
        seconds = round((time.time() if at is None else at) - self.started_at, 3)
        if phase not in self.reached or seconds < self.reached[phase]:
            self.reached[phase] = seconds

    def mark_earliest(self, phase: str, times: Iterable[float | None]) -> None:
        """Stamps `phase` at the earliest of `times` (Nones skipped; nothing when all are None)."""
        known = [at for at in times if at is not None]
        if known:
            self.mark(phase, min(known))

    def mark_actors(self, startups: Iterable) -> None:
        """Stamps the actors' phases (`ACTOR_PHASES`) at the earliest any of `startups` (the
        actors' `ActorStartup`s as their reports brought them) reached each."""
        startups = list(startups)
        self.mark_earliest("envs", (startup.envs_at for startup in startups))
        self.mark_earliest("actors", (startup.ready_at for startup in startups))
        self.mark_earliest("policy", (startup.policy_at for startup in startups))
        self.mark_earliest("first_env_step", (startup.first_step_at for startup in startups))
        self.mark_earliest("first_insert", (startup.first_insert_at for startup in startups))

    def complete(self, with_actors: bool = True) -> bool:
        """Whether every phase was reached (`with_actors` False: every phase but the actors',
        for an offline-only run, which starts none)."""
        return all(name in self.reached for name in PHASE_NAMES if with_actors or name not in ACTOR_PHASES)

    def record(self) -> StartupRecord:
        """The breakdown as a metrics.jsonl record (phases not reached are None)."""
        return StartupRecord(
            started_at=round(self.started_at, 3),
            phases={name: self.reached.get(name) for name in PHASE_NAMES},
        )


@dataclass(frozen=True)
class StartupRecord:
    """A session's start-up: each phase as seconds from the start of the `qfleet train` process
    (None: not reached in that session)."""

    started_at: float
    """Unix time the driver process started."""
    phases: dict[str, float | None]
    """Phase name (PHASES order) -> seconds since `started_at`."""

    def to_json(self) -> dict:
        return {"kind": "startup", "started_at": self.started_at, "phases": dict(self.phases)}


def startup_text(phases: dict[str, float | None]) -> str:
    """One line: "started in 4.8 s to the first env step, 7.9 s to the first update: driver 1.1, ..."."""

    def at(name: str) -> str:
        value = phases.get(name)
        return "-" if value is None else f"{value:.1f}"

    head = f"started in {at('first_env_step')} s to the first env step, {at('first_update')} s to the first update"
    parts = ", ".join(f"{name.replace('_', ' ')} {at(name)}" for name in PHASE_NAMES)
    return f"{head}: {parts} (s since the command began)"
