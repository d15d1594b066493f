"""The loop of a run: supervise the actors, collect episodes and evaluations, record progress,
until train.total_env_steps, a stop request, or a failed component."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from system.errors import TrainError
from system.observe.discovery import DISCOVERY_EVERY_S
from system.train.evaluate import ANNOUNCE_WAIT_S
from system.train.faults import FaultLog
from system.train.launch import Components
from system.train.plan import Plan
from system.train.polls import ComponentPoll, PollFailure, failure_of
from system.train.records import (
    EpisodesRecord,
    LearnerEventRecord,
    PhaseRecord,
    ProgressRecord,
    RunCounters,
    offline_progress_line,
    progress_line,
    take_shard_accounting,
)
from system.train.startup import StartupClock, StartupRecord, startup_text

if TYPE_CHECKING:
    from actors import FleetStats
    from system.services.learner import LearnerDescription, LearnerProgress
    from system.train.hosts import ShardCounters

log = logging.getLogger(__name__)

RECORD_EVERY_S = 1.0
"""Seconds between progress records in metrics.jsonl."""

RATE_WINDOW_S = 10.0
"""Env steps/s in progress lines and records: over this many seconds."""

STATE_EVERY_S = 10.0
"""Seconds between writes of state.json while the run goes on."""

POLL_TIMEOUT_S = 0.25
"""Longest wait for an actor's chunk per round."""

LEARNER_AWAY_LIMIT_S = 300.0
"""A learner silent this long ends the run (with resume advice): it hangs, or Ray cannot place it."""

REDIS_RESTART_TIMEOUT_S = 15.0
"""How long a restart of the embedded redis-server may take (it reloads its data)."""


class Periodic:
    """`fn` every `every_s` seconds, counted from creation, for a loop that calls `tick(now)`."""

    def __init__(self, every_s: float, fn: Callable[[], object] | None = None):
        self.every_s, self.fn = every_s, fn
        self._last = time.monotonic()

    def due(self, now: float) -> bool:
        """True (and the period starts again) when `every_s` passed since the last time."""
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True

    def tick(self, now: float) -> None:
        if self.due(now) and self.fn is not None:
            self.fn()


class StepRate:
    """Env steps per second over the last RATE_WINDOW_S (actors report about once a second)."""

    def __init__(self, env_steps: int):
        self._window: deque[tuple[float, int]] = deque([(time.monotonic(), env_steps)])

    def add(self, now: float, env_steps: int) -> float:
        window = self._window
        window.append((now, env_steps))
        while len(window) > 2 and now - window[1][0] >= RATE_WINDOW_S:
            window.popleft()
        return (env_steps - window[0][1]) / max(now - window[0][0], 1e-9)


@dataclass(frozen=True)
class OfflineEnd:
    """The learner reported the end of its offline phase (its first report past it)."""

    version: int
    """Its weights version in that report: the offline phase's final publish or later."""
    at_update: int
    """Where the offline phase ended (where the online phase is recorded to begin)."""
    seen_at: float
    """time.monotonic() of that report (the wait for the offline result counts from it)."""


class Supervisor:
    """Runs the loop of one session over started `components`.

    The loop never waits on one component: shards and the learner are asked for their state with
    calls it collects when ready (`ComponentPoll`), a dead or restarting one is a fault counted in
    `faults` (Ray restarts it), a shard silent beyond train.silent_after_s is restarted, and a
    dead embedded redis-server is started again on its port with its data.

    Args:
        plan: the checked run.
        components: what `launch` started (the fleet, shards, learner, ...).
        counters: the run's counters (updated as the run goes).
        stop: set by a signal: the loop returns at its next round.
    """

    def __init__(self, plan: Plan, components: Components, counters: RunCounters, stop: threading.Event):
        self.config, self.run_dir, self.name = plan.config, plan.run, plan.name
        self.components, self.counters, self.stop = components, counters, stop
        train = plan.config.train
        self.faults = FaultLog(train.max_component_failures, train.failure_window_s, counters.faults)
        self.latest: ProgressRecord | None = None
        """The latest progress record (the final one is made from it)."""
        self._learner: ComponentPoll | None = None
        self._learner_pid = components.info.get("learner", {}).get("pid")
        self._describing: tuple[int, object] | None = None  # (restarted learner's pid, its describe() call)
        self._shards: list[ComponentPoll] = []
        self._offline_shards: list[ComponentPoll] = []
        from actors import RedisGap

        self._episodes_gap = RedisGap(log, away="episodes not read while Redis is away", back="episodes read again")

    def _start_polls(self) -> None:
        """Polls of the shards' counters (once per session: the offline phase's go on online)."""
        if self._shards or self._offline_shards:
            return
        parts = self.components
        self._shards = [ComponentPoll(f"shard {i}", shard.info.remote) for i, shard in enumerate(parts.shards)]
        self._offline_shards = [
            ComponentPoll(f"offline shard {i}", shard.info.remote) for i, shard in enumerate(parts.offline_shards)
        ]

    def run_offline(self) -> None:
        """The offline phase: the learner trains on the dataset alone, no actor runs, evaluations
        come every offline.eval_every_updates. Returns once the learner reports the online phase
        (at once for one resumed past it; it ends the phase with a checkpoint and a publish, whose
        weights are evaluated as the offline result) and that evaluation is submitted, or, in an
        offline-only run, "finished" (its final evaluation is shutdown's), or when `stop` is set.
        No round waits: the offline result's weights are asked for once a round, up to
        ANNOUNCE_WAIT_S, while the loop goes on supervising.

        Raises:
            TrainError: as `run`.
        """
        config, counters, parts = self.config, self.counters, self.components
        if config.offline.updates == 0:  # no offline phase: the data only joins the online batches
            self.run_dir.append_records([counters.start_online(0).to_json()])
            return
        if counters.phase is None:
            counters.phase = "offline"
            record = PhaseRecord("offline", counters.wall_s(), counters.env_steps, counters.updates)
            self.run_dir.write_json("state.json", counters.state())  # first: a kill in between records no phase twice
            self.run_dir.append_records([record.to_json()])
        recording = Periodic(RECORD_EVERY_S)
        printing = Periodic(config.train.log_every_s)
        targets = Periodic(DISCOVERY_EVERY_S, parts.targets.write)
        state = Periodic(STATE_EVERY_S, lambda: self.run_dir.write_json("state.json", counters.state()))
        self._start_polls()
        parts.targets.write()
        dataset_size = sum(poll.value.size for poll in self._offline_shards if poll.value is not None)
        ending: OfflineEnd | None = None  # the learner went online: its offline result is awaited
        try:
            while not self.stop.wait(POLL_TIMEOUT_S):
                now = time.monotonic()
                self._watch_redis()
                records: list = []
                if parts.evaluations is not None:
                    if ending is None:
                        self._evaluate(parts.evaluations.submit_offline_if_due)
                    records += parts.evaluations.finished()
                if recording.due(now):
                    self._poll(now)
                    learner = self._learner_progress(records, now)
                    counters.faults = self.faults.counts
                    if learner is not None:
                        if learner.offline_until is not None:
                            counters.offline_until = learner.offline_until
                        if self.config.train.total_env_steps == 0:  # offline only: no actor phases come
                            records += self._startup_offline_only(learner)
                        self.latest = self._progress(None, learner, 0.0, now)
                        parts.metrics.update(self.latest)
                        records.append(self.latest)
                        dataset_size = (
                            sum(poll.value.size for poll in self._offline_shards if poll.value) or dataset_size
                        )
                        offline_until = counters.offline_until or config.offline.updates
                        if printing.due(now):
                            print(offline_progress_line(self.latest, offline_until, dataset_size), flush=True)
                        if learner.phase != "offline" and ending is None:
                            ending = OfflineEnd(learner.version, max(learner.updates, offline_until), now)
                if ending is not None and self.config.train.total_env_steps == 0:  # offline only: no actors follow
                    print(
                        f"qfleet train: offline phase done at update {counters.updates:,}; offline only "
                        "(train.total_env_steps 0): no actors start, the final evaluation follows",
                        flush=True,
                    )
                    self.run_dir.append_records([record.to_json() for record in records])
                    self.run_dir.write_json("state.json", counters.state())
                    return
                if ending is not None and self._offline_result_submitted(ending, now):
                    online = counters.start_online(ending.at_update)
                    self.run_dir.write_json(
                        "state.json", counters.state()
                    )  # first: a kill in between records no phase twice
                    self.run_dir.append_records([record.to_json() for record in (*records, online)])
                    print(
                        f"qfleet train: offline phase done at update {ending.at_update:,}; starting the actors "
                        f"(online phase: each batch mixes {self._mix_text()})",
                        flush=True,
                    )
                    return
                self.run_dir.append_records([record.to_json() for record in records])
                targets.tick(now)
                state.tick(now)
        finally:
            counters.faults = self.faults.counts

    def _offline_result_submitted(self, ending: OfflineEnd, now: float) -> bool:
        """Whether the online phase may start: the offline phase's last weights were handed to the
        evaluator (asked once, never waited for), there is no evaluator, or ANNOUNCE_WAIT_S passed
        (warned: the offline result goes unevaluated)."""
        evaluations = self.components.evaluations
        if evaluations is None:
            return True
        try:
            if evaluations.submit_if_announced(ending.version):
                return True
        except Exception as exc:  # Redis away for a moment: asked again next round, up to the deadline
            log.debug("offline result not submitted yet: %s: %s", type(exc).__name__, exc)
        if now - ending.seen_at < ANNOUNCE_WAIT_S:
            return False
        log.warning(
            "no evaluation of the offline phase's result: its weights (v%d) were not announced within %g s; "
            "starting the actors",
            ending.version,
            ANNOUNCE_WAIT_S,
        )
        return True

    def _mix_text(self) -> str:
        from system.config import batch_mix

        mix = batch_mix(self.config.offline, self.config.replay.mix) or {}
        return " and ".join(f"{fraction:g} {name}" for name, fraction in mix.items())

    def run(self) -> None:
        """The loop; returns at train.total_env_steps or when `stop` is set.

        Raises:
            TrainError: the actors keep failing, a component failed too often or is gone for good,
                or the learner failed.
        """

        train, counters, parts = self.config.train, self.counters, self.components
        recording = Periodic(RECORD_EVERY_S)
        printing = Periodic(train.log_every_s)
        targets = Periodic(DISCOVERY_EVERY_S, parts.targets.write)
        state = Periodic(STATE_EVERY_S, lambda: self.run_dir.write_json("state.json", counters.state()))
        rate = StepRate(counters.env_steps)
        self._start_polls()
        parts.targets.write()
        try:
            self._loop(recording, printing, targets, state, rate)
        finally:  # also when a fault ends the run: the final state.json counts it
            counters.faults = self.faults.counts

    def _loop(
        self, recording: Periodic, printing: Periodic, targets: Periodic, state: Periodic, rate: StepRate
    ) -> None:
        from actors import FleetError

        train, counters, parts = self.config.train, self.counters, self.components
        while not self.stop.is_set():
            try:
                fleet = parts.fleet.poll(timeout=POLL_TIMEOUT_S)
            except FleetError as exc:
                raise TrainError(str(exc)) from None
            counters.count_env_steps(self.name, fleet)
            self.faults.set_actor_restarts(fleet.actor_restarts)
            now = time.monotonic()
            self._watch_redis()
            records = self._episodes()
            if parts.evaluations is not None:
                self._evaluate(parts.evaluations.submit_if_due)
                records += parts.evaluations.finished()
                if parts.evaluations.unavailable:  # no evaluations: chunks need not end on their schedule
                    parts.fleet.milestone_every = None
            if recording.due(now):
                self._poll(now)
                learner = self._learner_progress(records, now)
                counters.faults = self.faults.counts
                if learner is not None:
                    records += self._startup(fleet, learner)
                    if parts.evaluations is not None and parts.startup.recorded:
                        parts.evaluations.prepare()  # torch in the driver once the run started; a failure: no evals
                    self.latest = self._progress(fleet, learner, rate.add(now, counters.env_steps), now)
                    parts.metrics.update(self.latest)
                    records.append(self.latest)
                    if printing.due(now):
                        print(progress_line(self.latest, train.total_env_steps), flush=True)
            self.run_dir.append_records([record.to_json() for record in records])
            targets.tick(now)
            state.tick(now)
            if counters.env_steps >= train.total_env_steps:
                log.info("reached %s env steps", f"{counters.env_steps:,}")
                return

    def _startup(self, fleet: FleetStats, learner: LearnerProgress) -> list[StartupRecord]:
        """Stamps the phases the actors and the learner reported; once every phase is known, the
        start-up record (printed once)."""
        clock = self.components.startup
        if clock.recorded:
            return []
        clock.mark_actors(fleet.startups.values())
        clock.mark_earliest("first_update", (learner.first_update_at,))
        if not clock.complete():
            return []
        return [record_startup(clock)]

    def _startup_offline_only(self, learner: LearnerProgress) -> list[StartupRecord]:
        """An offline-only run's start-up record, at its first update (it starts no actors)."""
        clock = self.components.startup
        if clock.recorded:
            return []
        clock.mark_earliest("first_update", (learner.first_update_at,))
        if not clock.complete(with_actors=False):
            return []
        return [record_startup(clock)]

    def _poll(self, now: float) -> None:
        """Collects the shards' answers; counts and handles their faults (the learner's:
        `_learner_progress`)."""
        ray, parts = self.components.ray, self.components
        polls = [
            *((poll, parts.shards[i], f"qfleet-{self.name}-shard-{i}") for i, poll in enumerate(self._shards)),
            *(
                (poll, parts.offline_shards[i], f"qfleet-{self.name}-offline-shard-{i}")
                for i, poll in enumerate(self._offline_shards)
            ),
        ]
        for poll, handle, actor_name in polls:
            failure = poll.tick(ray, now)
            if failure is not None:
                self._failed(poll, failure, actor_name, "shard_restarts", now)
            elif poll.hung_for(now) > (limit := self._silence_limit(poll)):
                setting = "train.restart_grace_s" if poll.restarting() else "train.silent_after_s"
                self.faults.record(
                    poll.name,
                    "shard_hangs",
                    f"answered no call for {poll.silent_for(now):.0f} s ({setting}={limit:g}): restarting it",
                )
                _restart_hung(ray, handle, poll.current)
                poll.down(now)  # its restart is this fault, not another one

    def _silence_limit(self, poll: ComponentPoll) -> float:
        """How long a shard may stay silent: longer while it starts up after a restart."""
        train = self.config.train
        return max(train.restart_grace_s, train.silent_after_s) if poll.restarting() else train.silent_after_s

    def _learner_progress(self, records: list, now: float | None = None) -> LearnerProgress | None:
        """The learner's latest answer from its current process; None while it has not answered
        (Ray restarting it: the round goes on, actors act on their last weights). A restarted
        learner is logged and recorded once it has described itself.

        Raises:
            TrainError: its training thread failed, Ray restarts it no more, it failed too often,
                or it stayed silent for LEARNER_AWAY_LIMIT_S.
        """
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        now = time.monotonic() if now is None else now
        if self._learner is None:
            self._learner = ComponentPoll("learner", self.components.learner.progress.remote)
            if self._learner_pid is None:  # launch described it after this supervisor was made
                self._learner_pid = self.components.info.get("learner", {}).get("pid")
        poll = self._learner
        failure = poll.tick(self.components.ray, now)
        if failure is not None:
            self._failed(poll, failure, f"qfleet-{self.name}-learner", "learner_restarts", now)
        if poll.silent_for(now) > LEARNER_AWAY_LIMIT_S:
            raise TrainError(
                f"the learner has not answered for {poll.silent_for(now):.0f} s; continue the run with: "
                f"qfleet train --resume {self.run_dir.path}"
            )
        learner = poll.current
        if learner is None:
            return None
        if learner.error is not None:
            raise TrainError(f"the learner failed: {learner.error}")
        if self._learner_pid is not None and learner.pid != self._learner_pid:
            try:
                described = self._description_of(learner.pid)
            except (ActorUnavailableError, GetTimeoutError):
                self._describing = None  # away again: the next round asks again
                return None
            except RayActorError as exc:  # died again while describing itself
                self._describing = None
                self._failed(poll, failure_of(exc), f"qfleet-{self.name}-learner", "learner_restarts", now)
                return None
            if described is None:
                return None  # still loading its checkpoint: the round goes on
            self._learner_restarted(learner, described, records)
        self._learner_pid = learner.pid
        return learner

    def _description_of(self, pid: int) -> LearnerDescription | None:
        """The restarted learner's description once it is ready, asked once per process and
        never waited for (it may be loading a large checkpoint); None until then."""
        ray = self.components.ray
        if self._describing is None or self._describing[0] != pid:
            self._describing = (pid, self.components.learner.describe.remote())
        ref = self._describing[1]
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return None
        self._describing = None
        return ray.get(ref, timeout=0)

    def _learner_restarted(self, learner: LearnerProgress, described: LearnerDescription, records: list) -> None:
        """Records a learner that Ray restarted: "restarted" (from a checkpoint) or "fresh" (no good
        checkpoint: a new network, all of the previous one's updates lost)."""
        parts, counters = self.components, self.counters
        self.faults.record("learner", "learner_restarts", f"its process died (pid {learner.pid} now)")
        counters.learner_restarts += 1
        counters.learner_updates_lost += described.updates_lost
        event = "fresh" if described.fresh else "restarted"
        if described.fresh:
            counters.fresh_learners.append(counters.env_steps)
        log.warning(
            "the learner was restarted (pid %d): %s at update %s from %s; %s updates lost",
            learner.pid,
            "a fresh network continues" if described.fresh else "resumed",
            f"{described.resumed_at:,}",
            described.resumed_from or "no checkpoint",
            f"{described.updates_lost:,}",
        )
        records.append(
            LearnerEventRecord(
                event,
                counters.wall_s(),
                counters.env_steps,
                described.resumed_at,
                described.updates_lost,
                described.resumed_from,
            )
        )
        parts.info["learner"] = {**parts.info.get("learner", {}), "pid": learner.pid}
        self.run_dir.write_json("run.json", parts.info)

    def _failed(self, poll: ComponentPoll, failure: PollFailure, actor_name: str, kind: str, now: float) -> None:
        """A call to `poll`'s actor failed: a restart (counted once per outage) or the end."""
        if failure.gone and not _actor_exists(self.components.ray, actor_name):
            raise TrainError(
                f"the {poll.name} died and Ray restarts it no more ({failure.cause}); continue the run "
                f"from its newest checkpoints with: qfleet train --resume {self.run_dir.path}"
            )
        if not failure.gone and not failure.restarting:
            raise TrainError(f"the {poll.name} failed: {failure.cause}")
        if poll.failing:
            return
        poll.down(now)
        if poll is self._learner:  # counted once it answers from a new process (_learner_restarted)
            log.warning("the learner is away (%s); Ray restarts it", failure.cause)
            return
        self.faults.record(poll.name, kind, f"died or unreachable, Ray restarts it ({failure.cause})")

    def _watch_redis(self) -> None:
        """Restarts a dead embedded redis-server on its port (its data comes back from its AOF)."""
        from system.errors import RedisLaunchError

        parts = self.components
        redis = parts.redis
        if redis is None or (redis.proc is not None and redis.proc.poll() is None):
            return
        code = None if redis.proc is None else redis.proc.returncode
        self.faults.record(
            "redis-server", "redis_restarts", f"exited (code {code}): restarting it on port {redis.port} with its data"
        )
        redis.stop()
        try:
            redis.start(timeout=REDIS_RESTART_TIMEOUT_S)
        except RedisLaunchError as exc:
            log.warning("redis-server did not come back (the next round tries again): %s", exc)
            return
        parts.info["redis_pid"] = redis.proc.pid
        self.run_dir.write_json("run.json", parts.info)
        log.info("redis-server back on port %d", redis.port)

    def _evaluate(self, submit: Callable[[], None]) -> None:
        try:
            submit()
        except Exception as exc:  # Redis away for a moment: this evaluation is skipped, not the run
            log.warning("evaluation skipped: %s: %s", type(exc).__name__, exc)

    def _episodes(self) -> list[EpisodesRecord]:
        from actors import ActorRegistryError

        try:
            episodes = self.components.episodes.read()
        except ActorRegistryError as exc:  # Redis away: its stream keeps them, read on its return
            self._episodes_gap.failed(exc)
            return []
        self._episodes_gap.succeeded()
        if not episodes:
            return []
        self.counters.add_episodes([episode["return"] for episode in episodes])
        record = EpisodesRecord(
            wall_s=self.counters.wall_s(),
            env_steps=self.counters.env_steps,
            returns=[episode["return"] for episode in episodes],
            lengths=[episode["length"] for episode in episodes],
            actors=[episode["actor"] for episode in episodes],
            policy_versions=[episode["policy_version"] for episode in episodes],
        )
        return [record]

    def _progress(
        self, fleet: FleetStats | None, learner: LearnerProgress, env_steps_per_s: float, now: float
    ) -> ProgressRecord:
        """The progress record of now (`fleet` None: no actor runs yet, the offline phase)."""
        counters = self.counters
        counters.updates = learner.updates
        shards = [poll.value for poll in self._shards if poll.value is not None]
        if fleet is not None:
            counters.fleet_lost = fleet.transitions_lost
        if len(shards) == len(self._shards):  # each shard's count is of the whole run: all of them, or keep the last
            take_shard_accounting(counters, shards)
        silent_after = self.config.train.silent_after_s / 2
        silent = [
            poll
            for poll in (self._learner, *self._shards, *self._offline_shards)
            if poll.silent_for(now) > silent_after
        ]
        return ProgressRecord(
            wall_s=counters.wall_s(),
            time=round(time.time(), 3),
            env_steps=counters.env_steps,
            env_steps_per_s=round(env_steps_per_s, 1),
            episodes=counters.episodes,
            recent_return=counters.recent_return(),
            last_eval=list(counters.last_eval) if counters.last_eval else None,
            updates=learner.updates,
            updates_per_s=round(learner.updates_per_second, 1),
            achieved_utd=round(learner.achieved_utd, 4),
            learner_inserts=learner.inserts,
            target_utd=self.config.learner.updates_per_env_step,
            weights_version=learner.version,
            replay_size=sum(shard.size for shard in shards),
            replay_inserts=counters.replay_inserts,
            actors=fleet.actors if fleet is not None else 0,
            actor_restarts=fleet.actor_restarts if fleet is not None else 0,
            env_restarts=fleet.env_restarts if fleet is not None else 0,
            random_steps=fleet.random_steps if fleet is not None else 0,
            transitions_lost=counters.transitions_lost,
            **counters.accounting(),
            faults=self.faults.counts.to_json(),
            silent={poll.name: round(poll.silent_for(now), 1) for poll in silent},
            phase=counters.phase,
            policy_staleness=_policy_staleness(learner.version, fleet),
            sample_staleness=_rounded(learner.sample_staleness, 2),
            sample_age_s=_rounded(learner.sample_age_s, 3),
            clamped_fraction=learner.clamped_fraction,
            actors_held_back=None if fleet is None else self.components.fleet.held_back(),
        )


def _policy_staleness(version: int, fleet: FleetStats | None) -> float | None:
    """The learner's weights version minus the mean version the live actors act with (None
    while no actor reports one). The driver's `version` comes from its last poll of the learner,
    while actors take each published version within a vector step (`actors.weight_poll_steps`)
    and report it: the newest version an actor acts with is known to be published, so it bounds
    the learner's version from below and the figure is never negative."""
    if fleet is None or not fleet.policy_versions:
        return None
    versions = fleet.policy_versions.values()
    return round(max(version, *versions) - sum(versions) / len(versions), 2)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _restart_hung(ray, handle, last: ShardCounters | None) -> None:
    """Has Ray restart a hung shard: `ray.kill` asks its worker to exit, which a stopped (SIGSTOP)
    or wedged process never does, so a shard on this machine is also killed by its PID (known from
    an answer of its current process only: never a PID of an earlier one)."""
    ray.kill(handle, no_restart=False)
    if last is not None and last.host == socket.gethostname():
        try:
            os.kill(last.pid, signal.SIGKILL)
        except ProcessLookupError:  # gone already
            pass


def _actor_exists(ray, name: str) -> bool:
    """Whether Ray still knows the named actor (alive or restarting); a dead one is unnamed."""
    try:
        ray.get_actor(name)
        return True
    except ValueError:
        return False


def record_startup(clock: StartupClock) -> StartupRecord:
    """The session's start-up record (call it once per session), printed when the session got
    as far as an env step or an update: a line of dashes says nothing."""
    clock.recorded = True
    record = clock.record()
    if record.phases["first_env_step"] is not None or record.phases["first_update"] is not None:
        print(f"qfleet train: {startup_text(record.phases)}", flush=True)
    return record
