"""The loop of a run: supervise the actors, collect episodes and evaluations, record progress,
until train.total_env_steps, a stop request, or a failed component."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from system.errors import TrainError
from system.observe.discovery import DISCOVERY_EVERY_S
from system.train.launch import Components
from system.train.plan import Plan
from system.train.records import EpisodesRecord, LearnerEventRecord, ProgressRecord, RunCounters, progress_line

if TYPE_CHECKING:
    from actors import FleetStats
    from system.services.learner import LearnerProgress

log = logging.getLogger(__name__)

RECORD_EVERY_S = 1.0
"""Seconds between progress records in metrics.jsonl."""

RATE_WINDOW_S = 10.0
"""Env steps/s in progress lines and records: over this many seconds."""

STATE_EVERY_S = 10.0
"""Seconds between writes of state.json while the run goes on."""

POLL_TIMEOUT_S = 0.25
"""Longest wait for an actor's chunk per round."""

LEARNER_AWAY_POLL_S = 2.0
"""Longest wait for the learner's answer while it is away (Ray restarting it, or hung)."""

LEARNER_AWAY_LIMIT_S = 300.0
"""A learner away this long ends the run (with resume advice): it hangs, or Ray cannot place it."""


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


class Supervisor:
    """Runs the loop of one session over started `components`.

    Args:
        plan: the checked run.
        components: what `launch` started (the fleet, shards, learner, ...).
        counters: the run's counters (updated as the run goes).
        stop: set by a signal: the loop returns at its next round.
    """

    def __init__(self, plan: Plan, components: Components, counters: RunCounters, stop: threading.Event):
        self.config, self.run_dir = plan.config, plan.run
        self.components, self.counters, self.stop = components, counters, stop
        self.latest: ProgressRecord | None = None
        """The latest progress record (the final one is made from it)."""
        self._learner_pid = components.info.get("learner", {}).get("pid")
        self._learner_away_since: float | None = None  # monotonic time it stopped answering

    def run(self) -> None:
        """The loop; returns at train.total_env_steps or when `stop` is set.

        Raises:
            TrainError: the actors keep failing, or the learner died.
        """
        from actors import FleetError

        train, counters, parts = self.config.train, self.counters, self.components
        recording = Periodic(RECORD_EVERY_S)
        printing = Periodic(train.log_every_s)
        targets = Periodic(DISCOVERY_EVERY_S, parts.targets.write)
        state = Periodic(STATE_EVERY_S, lambda: self.run_dir.write_json("state.json", counters.state()))
        rate = StepRate(counters.env_steps)
        parts.targets.write()
        while not self.stop.is_set():
            try:
                fleet = parts.fleet.poll(timeout=POLL_TIMEOUT_S)
            except FleetError as exc:
                raise TrainError(str(exc)) from None
            counters.env_steps = counters.start_env_steps + fleet.env_steps
            records = self._episodes()
            if parts.evaluations is not None:
                parts.evaluations.submit_if_due()
                records += parts.evaluations.finished()
            now = time.monotonic()
            if recording.due(now):
                learner = self._learner_progress(records)
                if learner is not None:
                    self.latest = self._progress(fleet, learner, rate.add(now, counters.env_steps))
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

    def _learner_progress(self, records: list) -> LearnerProgress | None:
        """The learner's progress; None while Ray restarts its process (the round goes on without
        it; actors act on their last weights meanwhile, and it is asked with a short timeout). A
        restarted learner is logged and recorded.

        Raises:
            TrainError: the learner's training thread failed, Ray gave up restarting it, or it
                stayed away (unreachable or hung) for LEARNER_AWAY_LIMIT_S.
        """
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

        parts = self.components
        away_since = self._learner_away_since
        timeout = 60 if away_since is None else LEARNER_AWAY_POLL_S
        try:
            learner = parts.ray.get(parts.learner.progress.remote(), timeout=timeout)
            if learner.error is None and self._learner_pid is not None and learner.pid != self._learner_pid:
                self._learner_restarted(learner, records)
        except (ActorUnavailableError, GetTimeoutError) as exc:
            now = time.monotonic()
            if away_since is None:
                log.warning("the learner is away (%s); it resumes from its newest checkpoint", type(exc).__name__)
                self._learner_away_since = now
            elif now - away_since > LEARNER_AWAY_LIMIT_S:
                raise TrainError(
                    f"the learner has not answered for {now - away_since:.0f} s ({type(exc).__name__}); "
                    f"continue the run with: qfleet train --resume {self.run_dir.path}"
                ) from None
            return None
        except ActorDiedError as exc:
            raise TrainError(
                f"the learner died and Ray restarts it no more ({str(exc).splitlines()[0][:200]}); "
                f"continue the run from its newest checkpoint with: qfleet train --resume {self.run_dir.path}"
            ) from None
        if learner.error is not None:
            raise TrainError(f"the learner failed: {learner.error}")
        self._learner_pid, self._learner_away_since = learner.pid, None
        return learner

    def _learner_restarted(self, learner: LearnerProgress, records: list) -> None:
        """Records a learner that Ray restarted: "restarted" (from a checkpoint) or "fresh" (no good
        checkpoint: a new network, all of the previous one's updates lost). Raises what Ray raises
        when the learner is away again (nothing is counted then; the next round asks again)."""
        parts, counters = self.components, self.counters
        described = parts.ray.get(parts.learner.describe.remote(), timeout=LEARNER_AWAY_POLL_S)
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

    def _episodes(self) -> list[EpisodesRecord]:
        episodes = self.components.episodes.read()
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

    def _progress(self, fleet: FleetStats, learner: LearnerProgress, env_steps_per_s: float) -> ProgressRecord:
        parts, counters = self.components, self.counters
        shards = parts.ray.get([shard.info.remote() for shard in parts.shards], timeout=60)
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
            target_utd=self.config.learner.updates_per_env_step,
            weights_version=learner.version,
            replay_size=sum(shard.size for shard in shards),
            replay_inserts=sum(shard.inserts for shard in shards),
            actors=fleet.actors,
            actor_restarts=fleet.actor_restarts,
            env_restarts=fleet.env_restarts,
            transitions_lost=fleet.transitions_lost,
        )
