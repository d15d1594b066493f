"""`ActorFleet`: keeps N env actors running as Ray actors, restarts them, scales them, stops them.

The supervisor is a loop in the driver (`poll`): each actor always has one `run(chunk_s)` call in
flight. Ray restarts a dead actor process (`max_restarts`); an actor whose `run` raised is
replaced, except when replay refused the actors' credentials: no actor would do better, so the
fleet raises `FleetError` at once. The wanted size is read from Redis every poll, so `qfleet scale --actors N` resizes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from actors.actor import ActorStartup, ActorStats, EnvActor
from actors.allotment import chunk_allotment, min_chunk_steps
from actors.config import ActorsConfig, EnvConfig
from actors.envs import describe_env
from actors.errors import ActorRegistryError, FleetError
from actors.overdue import overdue, ray_actor_state
from actors.redis_gap import RedisGap
from actors.registry import STATE_HELD_BACK, ActorRegistry
from learner import LearnerConfig
from replay import ReplayAuthenticationError, ReplayCredentials

log = logging.getLogger(__name__)


def desired_count_gap() -> RedisGap:
    """How the fleet says that it cannot read the desired actor count (and keeps its size)."""
    return RedisGap(
        log,
        away="desired actor count not read while Redis is away (the fleet keeps its size)",
        back="desired actor count read again",
    )


PENDING_WARNING_S = 60.0
"""An actor whose chunk is this long overdue (its first: since the actor was created) gets a
warning, once per stall, saying why from its report."""


@dataclass
class _Slot:
    handle: object
    ref: object | None = None
    stats: ActorStats | None = None
    failures: list[float] = field(default_factory=list)  # times of recent task failures
    submitted_at: float = field(default_factory=time.monotonic)  # when the chunk in flight began
    warned_pending: bool = False  # the chunk in flight is overdue and was warned about
    restarting: bool = False  # Ray is restarting its process (counted once per death)
    retry_at: float = 0.0  # no new `run` before this time (monotonic)
    allotment: int | None = None  # env steps the chunk in flight may take (None: no limit)


@dataclass
class FleetStats:
    """The fleet at one poll: sums over live actors plus restart counts."""

    actors: int
    env_steps: int
    episodes: int
    transitions_inserted: int
    transitions_lost: int
    env_restarts: int
    actor_restarts: int
    """Actor processes that died and were restarted (by Ray) or replaced (by the supervisor)."""
    steps_per_second: float
    recent_return: float | None
    policy_versions: dict[int, int]
    inserted_by_actor: dict[int, int] = field(default_factory=dict)
    """Transitions inserted as each actor id's processes reported them (a killed one's last chunk
    is missing here; the shards' ledgers count it: see `actor_writer_id`)."""
    startups: dict[int, ActorStartup] = field(default_factory=dict)
    """Start-up milestones of each live actor's current process, from its latest report."""
    env_steps_by_actor: dict[int, int] = field(default_factory=dict)
    """Env steps as each actor id's processes reported them (a killed one's last chunk is missing)."""
    actor_ids: frozenset[int] = frozenset()
    """Every actor id this fleet has run (live, retired, or killed before it ever reported)."""
    random_steps: int = 0
    """Env steps acted uniformly at random before the actors' policies were built (fresh runs)."""


class ActorFleet:
    """Runs `EnvActor`s on Ray (ray.init must have been called).

    Args:
        env, actors, learner: the run's config sections.
        redis_url, run: the run's Redis.
        replay_credentials: the run's replay token and certificate, handed to every actor (and to
            a restarted one again: Ray keeps constructor arguments); None: plaintext shards. Required,
            so that plaintext is always a choice made at the call site.
        chunk_s: seconds per `run` call (how often stats reach the supervisor).
        max_env_steps: env steps of all actors together after which no chunk starts (None: no
            limit); the last chunks are shortened so that the fleet stops there, not a chunk later
            (past it by less than env.num_envs when it is not a multiple of that).
        milestone_every: chunks are shortened the same way to end on multiples of this many env
            steps (the run's evaluation schedule: the driver sees the count reach each one instead
            of passing it by a chunk); None: no milestones. See `actors.allotment`.
        milestone_offset: env steps of the run before this fleet (a resumed run's milestones are
            multiples of the run's count).
        fresh_run: the run has no learned weights yet (a fresh online run): its actors may step
            with uniform random actions while they build their policies (`EnvActor`'s
            `fresh_run`, `actors.random_before_policy`); each still checks the weight store first,
            so a replaced or restarted one acts with published weights from its first step.
    """

    def __init__(
        self,
        env: EnvConfig,
        actors: ActorsConfig,
        learner: LearnerConfig,
        redis_url: str,
        run: str = "default",
        chunk_s: float = 1.0,
        max_env_steps: int | None = None,
        *,
        milestone_every: int | None = None,
        milestone_offset: int = 0,
        replay_credentials: ReplayCredentials | None,
        fresh_run: bool = False,
    ):
        import ray

        self._ray = ray
        self.env, self.config, self.learner = env, actors, learner
        self.redis_url, self.run, self.chunk_s = redis_url, run, chunk_s
        self.max_env_steps = max_env_steps
        self.milestone_every, self.milestone_offset = milestone_every, milestone_offset
        self.fresh_run = fresh_run
        self._replay_credentials = None if replay_credentials is None else replay_credentials.for_clients()
        self.registry = ActorRegistry(redis_url, run)
        self._slots: dict[int, _Slot] = {}
        self.actor_restarts = 0
        self._desired_gap = desired_count_gap()
        self._closed_stats: list[ActorStats] = []  # last stats of retired or dead actor processes
        self._retired_ids: frozenset[int] = frozenset()  # ids scaled away (some never reported)
        self._remote = ray.remote(EnvActor)

    def start(self, num_actors: int | None = None, *, env_checked: bool = False) -> None:
        """Checks the env (fails fast with a clear error) and starts the actors.

        Args:
            env_checked: the caller built the env already (`env_spaces`): not again here (a
                heavy env takes seconds, in the way of the processes asked for after the actors).

        Raises:
            UnsupportedEnvError: unknown env id or unsupported spaces, before any actor starts.
        """
        if not env_checked:
            describe_env(self.env)
        count = self.config.num_actors if num_actors is None else num_actors
        try:
            self.registry.set_desired(count)
        except ActorRegistryError as exc:  # Redis away: `qfleet status` shows the wanted count once it is back
            log.warning("desired actor count not written while Redis is away: %s", exc)
        self._resize(count)
        # Each actor's first chunk queued now: it steps as soon as it is built, not once the
        # supervisor's first `poll` comes (which may wait for the learner to start).
        for slot in self._slots.values():
            self._submit(slot)

    def _new_actor(self, actor_id: int, num_actors: int):
        options = {
            "num_cpus": self.config.num_cpus,
            "resources": dict(self.config.resources),
            "scheduling_strategy": "SPREAD",  # over every node that offers their resources
            "max_restarts": self.config.max_restarts,
            "max_task_retries": 0,
            "name": f"qfleet-{self.run}-actor-{actor_id}",
            "get_if_exists": False,
        }
        return self._remote.options(**options).remote(
            actor_id,
            num_actors,
            self.env,
            self.config,
            self.learner,
            self.redis_url,
            self.run,
            replay_credentials=self._replay_credentials,
            fresh_run=self.fresh_run,
        )

    def _resize(self, count: int) -> None:
        for actor_id in range(count):
            if actor_id not in self._slots:
                self._slots[actor_id] = _Slot(self._new_actor(actor_id, count))
                log.info("actor %d started", actor_id)
        for actor_id in sorted(self._slots):
            if actor_id >= count:
                self._retire(actor_id)

    def _retire(
        self, actor_id: int, deadline: float | None = None, since: float | None = None, stopping: bool = False
    ) -> None:
        """Lets the actor finish its chunk, flush and close, then kills it. Its patience counts
        from `since` (monotonic; default now): a fleet stopping all its actors gives each the
        same window, not one after another (`stopping`: the fleet's `stop`)."""
        slot = self._slots.pop(actor_id)
        self._retired_ids |= {actor_id}
        ray = self._ray
        # An actor that never reported may be waiting for resources (or, in a fresh run, for a
        # shard that failed to start): don't wait long for it.
        patience = 30.0 if slot.stats is not None else 5.0
        own = (time.monotonic() if since is None else since) + self.chunk_s + patience
        deadline = own if deadline is None else min(deadline, own)
        try:
            if slot.ref is not None and not ray.wait([slot.ref], timeout=max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(
                    "its chunk did not end in time (is it waiting for a replay that no longer samples?)"
                    if slot.stats is not None
                    else "it had not started stepping (still being built, waiting for a replay shard of its run, "
                    "or for resources)"
                )
            self._closed_stats.append(ray.get(slot.handle.close.remote(), timeout=60))
        except Exception as exc:  # dead, stuck or never started: nothing left to flush
            # A stop that ends a failed start expects actors that never reported: said at INFO.
            level = logging.INFO if stopping and slot.stats is None else logging.WARNING
            log.log(level, "actor %d did not close cleanly (%s); killing it", actor_id, _first_line(exc))
            if slot.stats is not None:  # its last report still counts (what it did since is lost)
                self._closed_stats.append(slot.stats)
        ray.kill(slot.handle, no_restart=True)
        log.info("actor %d retired", actor_id)

    def poll(self, timeout: float = 1.0) -> FleetStats:
        """One supervision round: follow the desired size, collect finished chunks, re-submit."""
        ray = self._ray
        desired = self._desired()
        if desired is not None and desired != len(self._slots):
            log.info("scaling actors %d -> %d", len(self._slots), desired)
            self._resize(desired)
        now = time.monotonic()
        for slot in self._slots.values():
            if slot.ref is None and now >= slot.retry_at:
                self._submit(slot)
        refs = {slot.ref: actor_id for actor_id, slot in self._slots.items() if slot.ref is not None}
        # A chunk that ended while nobody polled (the first ones, queued at start while the
        # learner was still building) is done, not overdue.
        done = set(ray.wait(list(refs), num_returns=len(refs), timeout=0)[0]) if refs else set()
        for actor_id, slot in self._slots.items():
            if slot.ref not in done:
                self._warn_if_overdue(actor_id, slot, now)
        if not refs:
            time.sleep(timeout)
            return self.stats()
        # Back as soon as one chunk is done, then take every other finished one: an actor is idle
        # from the end of its chunk until its next `run` is submitted below.
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            actor_id = refs[ref]
            slot = self._slots[actor_id]
            slot.ref = None
            try:
                slot.stats = ray.get(ref)
                self._submit(slot)
                slot.restarting = slot.warned_pending = False
            except ray.exceptions.ActorDiedError as exc:  # out of restarts, or killed for good
                self._replace(actor_id, slot, f"died for good ({_first_line(exc)})")
            except ray.exceptions.RayActorError as exc:  # unavailable: Ray is restarting the process
                if not slot.restarting:
                    self._count_restart(slot)
                    log.warning("actor %d died (%s); Ray restarts it with fresh weights", actor_id, _first_line(exc))
                slot.restarting = True
                slot.retry_at = time.monotonic() + 0.5
            except ray.exceptions.RayTaskError as exc:
                if isinstance(getattr(exc, "cause", None), ReplayAuthenticationError):
                    raise FleetError(
                        f"actor {actor_id}: the replay refuses the actors' credentials (every actor would be "
                        f"refused the same way): {exc.cause}",
                        actor_id=actor_id,
                    ) from None
                self._record_failure(actor_id, slot, exc)
                self._replace(actor_id, slot, f"failed: {_first_line(exc)}")
        return self.stats()

    def _warn_if_overdue(self, actor_id: int, slot: _Slot, now: float) -> None:
        """Says once when an actor's chunk is PENDING_WARNING_S overdue, and why (`actors.overdue`):
        held back by the UTD (INFO: the progress line shows it), or a warning naming what Ray says:
        not placed (resources the cluster lacks), still starting, restarting, dead (with the cause Ray
        gives), or up but slow. Ray is asked for at most RAY_STATE_TIMEOUT_S (no answer: "unknown")."""
        if slot.ref is None or slot.warned_pending:
            return
        due = slot.submitted_at + self.chunk_s
        if now - due <= PENDING_WARNING_S:
            return
        slot.warned_pending = True
        try:
            report = self.registry.actors().get(actor_id, {})
        except ActorRegistryError as exc:
            report = {}
            log.warning("actor %d: cannot read its report: %s", actor_id, exc)
        ray_state = None if report.get("state") == STATE_HELD_BACK else ray_actor_state(slot.handle)
        said = overdue(
            actor_id,
            PENDING_WARNING_S,
            report,
            slot.stats is not None,
            ray_state,
            self.config.num_cpus,
            self.config.resources,
            run=self.run,
        )
        log.log(logging.WARNING if said.warning else logging.INFO, "%s", said.text)

    def _desired(self) -> int | None:
        """The requested actor count; None (keep the fleet as it is) while Redis cannot be read:
        a restarting Redis costs a scaling request a few rounds, never the run. Said once per gap."""
        try:
            desired = self.registry.desired()
        except ActorRegistryError as exc:
            self._desired_gap.failed(exc)
            return None
        self._desired_gap.succeeded()
        return desired

    def held_back(self) -> int | None:
        """Live actors whose latest report says their inserts wait on replay's rate limiter (held
        back by the UTD); None when the reports cannot be read."""
        try:
            reports = self.registry.actors()
        except ActorRegistryError:
            return None
        return sum(1 for actor_id in self._slots if reports.get(actor_id, {}).get("state") == STATE_HELD_BACK)

    def _submit(self, slot: _Slot) -> None:
        """Starts the slot's next chunk: with max_env_steps or milestones, only within its share of
        what is left to the nearer of them (`chunk_allotment`)."""
        slot.allotment = self._allotment(slot)
        if slot.allotment != 0:
            slot.ref = slot.handle.run.remote(self.chunk_s, slot.allotment)
            slot.submitted_at = time.monotonic()

    def _allotment(self, slot: _Slot) -> int | None:
        """Env steps the slot's next chunk may take (`chunk_allotment`: None no limit, 0 nothing
        left); toward a milestone at least `min_chunk_steps` at the pace of its last chunk."""
        if self.max_env_steps is None and not self.milestone_every:
            return None
        promised = sum(slot.allotment or 0 for slot in self._slots.values() if slot.ref is not None)
        return chunk_allotment(
            self.stats().env_steps,
            promised,
            len(self._slots),
            self.env.num_envs,
            self.max_env_steps,
            self.milestone_every,
            self.milestone_offset,
            min_chunk_steps(self.env.num_envs, slot.stats and slot.stats.steps_per_second, self.chunk_s),
        )

    def _count_restart(self, slot: _Slot) -> None:
        self.actor_restarts += 1
        if slot.stats is not None:  # the new process counts from zero again
            self._closed_stats.append(slot.stats)
            slot.stats = None

    def _record_failure(self, actor_id: int, slot: _Slot, exc: Exception) -> None:
        """Raises FleetError when one actor keeps failing: something is broken, not unlucky."""
        now = time.monotonic()
        slot.failures = [t for t in slot.failures if now - t < 60] + [now]
        if len(slot.failures) >= 3:
            raise FleetError(
                f"actor {actor_id} failed 3 times within a minute; last error:\n{exc}", actor_id=actor_id
            ) from None

    def _replace(self, actor_id: int, slot: _Slot, why: str) -> None:
        log.error("actor %d %s; starting a fresh one", actor_id, why)
        self._ray.kill(slot.handle, no_restart=True)
        self._count_restart(slot)
        slot.handle = self._new_actor(actor_id, len(self._slots))
        slot.restarting, slot.warned_pending = False, False

    def stats(self) -> FleetStats:
        live = [slot.stats for slot in self._slots.values() if slot.stats is not None]
        every = live + self._closed_stats
        recent = live if any(s.recent_return is not None for s in live) else self._closed_stats
        returns = [(s.recent_return, s.episodes) for s in recent if s.recent_return is not None]
        weight = sum(n for _, n in returns)
        inserted_by_actor: dict[int, int] = {}
        env_steps_by_actor: dict[int, int] = {}
        for s in every:
            inserted_by_actor[s.actor_id] = inserted_by_actor.get(s.actor_id, 0) + s.transitions_inserted
            env_steps_by_actor[s.actor_id] = env_steps_by_actor.get(s.actor_id, 0) + s.env_steps
        return FleetStats(
            actors=len(self._slots),
            env_steps=sum(s.env_steps for s in every),
            episodes=sum(s.episodes for s in every),
            transitions_inserted=sum(s.transitions_inserted for s in every),
            transitions_lost=sum(s.transitions_lost for s in every),
            env_restarts=sum(s.env_restarts for s in every),
            actor_restarts=self.actor_restarts,
            steps_per_second=sum(s.steps_per_second for s in live),
            recent_return=sum(r * n for r, n in returns) / weight if weight else None,
            policy_versions={s.actor_id: s.policy_version for s in live},
            inserted_by_actor=inserted_by_actor,
            env_steps_by_actor=env_steps_by_actor,
            startups={s.actor_id: s.startup for s in live if s.startup is not None},
            actor_ids=frozenset(self._slots) | frozenset(env_steps_by_actor) | self._retired_ids,
            random_steps=sum(s.random_steps for s in every),
        )

    def pids(self) -> dict[int, int]:
        """Process id of every actor (waits for actors still starting)."""
        ray = self._ray
        return {actor_id: ray.get(slot.handle.pid.remote()) for actor_id, slot in self._slots.items()}

    def stop(self) -> FleetStats:
        """Lets running chunks finish, flushes and closes every actor, and kills them."""
        began = time.monotonic()
        deadline = began + self.chunk_s + 30.0  # one wait for all, not one per actor
        for actor_id in sorted(self._slots, reverse=True):
            self._retire(actor_id, deadline, since=began, stopping=True)
        stats = self.stats()
        self.registry.close()
        return stats


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
