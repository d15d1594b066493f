"""Stopping a run in order: actors (they flush while the learner still samples) -> learner
(publish + checkpoint) -> final evaluation -> shards (checkpoint; offline shards just stop) ->
Ray -> Redis -> the run's secrets file."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from system.local.secrets import remove_run_secrets
from system.train.launch import Components
from system.train.plan import Plan
from system.train.records import ProgressRecord, RunCounters, take_shard_accounting

if TYPE_CHECKING:
    from actors import FleetStats

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 900
"""Longest wait for the learner or a shard to stop (each writes a checkpoint first)."""

SHARD_COUNTS_TIMEOUT_S = 30
"""Longest wait for the shards' counts before the final record."""


class _Failures:
    """The first thing that failed while stopping (every one is logged)."""

    def __init__(self):
        self.first: str | None = None

    def add(self, what: str, exc: Exception | str) -> None:
        log.error("%s: %s", what, exc)
        self.first = self.first or f"{what}: {exc}"


def shutdown(plan: Plan, parts: Components, counters: RunCounters, latest: ProgressRecord | None) -> str | None:
    """Stops whatever of `parts` started, in order; writes the final record and state.json.

    Args:
        latest: the latest progress record (the final one carries its values on).

    Returns:
        What went wrong while stopping (the first thing), or None.
    """
    failures = _Failures()
    try:
        fleet = _stop_actors(parts, counters, failures)
        _take_shard_counts(parts, counters)
        if fleet is not None and not parts.startup.recorded:
            # a short session's actors may have reported their first steps only with their last
            # chunk, which the stop collected: the unfinished start-up record still gets them
            parts.startup.mark_actors(fleet.startups.values())
        if fleet is not None:  # a killed process's last env steps, from what the shards stored for it
            counters.count_env_steps(plan.name, fleet)
            if counters.env_steps_unreported:
                log.info(
                    "%s env steps that killed actor processes never reported are counted from the transitions "
                    "the shards stored for them (%s env steps in all)",
                    f"{counters.env_steps_unreported:,}",
                    f"{counters.env_steps:,}",
                )
        _stop_learner(plan, parts, counters, latest, failures)
        _final_evaluation(plan, parts, failures)
        _stop_shards(plan, parts, counters, fleet, failures)
        if parts.evaluations is not None:
            parts.evaluations.close()
        if parts.episodes is not None:
            parts.episodes.close()
        plan.run.write_json("state.json", counters.state())
        if parts.targets is not None:
            parts.targets.clear()
        if parts.metrics_server is not None:
            parts.metrics_server.close()
    finally:
        # Even when a second Ctrl-C or an error cuts the orderly stop short: Ray, Redis and the
        # run's secrets file go.
        try:
            _stop_ray(plan, parts)
        finally:
            try:
                if parts.redis is not None:
                    parts.redis.close()
            finally:
                if parts.secrets_id is not None:
                    remove_run_secrets(parts.secrets_id)
    # Only after an orderly stop: one cut short leaves the watchdog armed to end what remains.
    if parts.watchdog is not None:
        parts.watchdog.close()
    return failures.first


def _final_evaluation(plan: Plan, parts: Components, failures: _Failures) -> None:
    """The final evaluation; one that fails is logged and the stop goes on to the shards."""
    if parts.evaluations is None:
        return
    try:
        plan.run.append_records([record.to_json() for record in parts.evaluations.final()])
    except Exception as exc:  # an evaluation is not worth the shards' checkpoints
        log.warning("no final evaluation: %s: %s", type(exc).__name__, exc)


def _stop_shards(
    plan: Plan, parts: Components, counters: RunCounters, fleet: FleetStats | None, failures: _Failures
) -> None:
    """Stops the shards (each writes its final checkpoint); takes their final loss counts and
    reconciles their ledgers with what the actors were told."""
    stopped_shards = []
    for shard in parts.shards:
        try:
            stopped = parts.ray.get(shard.stop.remote(), timeout=STOP_TIMEOUT_S)
        except Exception as exc:
            failures.add("a shard did not stop cleanly", exc)
            continue
        stopped_shards.append(stopped)
        log.info(
            "shard stopped with %s items after %s inserts; %s transitions lost to its crashes",
            f"{stopped.size:,}",
            f"{stopped.inserts:,}",
            f"{stopped.lost_transitions:,}",
        )
    if parts.shards and len(stopped_shards) == len(parts.shards):  # none started: keep the earlier sessions' count
        take_shard_accounting(counters, stopped_shards)
        present = sum(shard.inserts for shard in stopped_shards)
        if counters.accounting_tracked:
            log.info(
                "transitions stored for the actors: %s = %s in shards + %s lost by shards - %s stored twice"
                " - %s given back to the actors - %s unattributed",
                f"{counters.transitions_inserted:,}",
                f"{present:,}",
                f"{counters.shards_lost:,}",
                f"{counters.transitions_stored_twice:,}",
                f"{counters.transitions_given_back:,}",
                f"{counters.transitions_unattributed:,}",
            )
        else:
            log.info(
                "transitions stored for the actors: not counted (train.checkpoint_replay is off: the shards keep "
                "no insert ledger); %s in shards",
                f"{present:,}",
            )
        if fleet is not None:
            _log_per_actor(plan, stopped_shards, fleet)
    for shard in parts.offline_shards:  # nothing to checkpoint: the dataset loads them at every start
        try:
            parts.ray.get(shard.stop.remote(), timeout=STOP_TIMEOUT_S)
        except Exception as exc:
            failures.add("an offline shard did not stop cleanly", exc)


def _log_per_actor(plan: Plan, shards: list, fleet: FleetStats) -> None:
    """Each actor's transitions as the shards count them (over the run) beside what this session's
    processes reported (a process that was killed never reported its last chunk; one killed
    before its first report is listed with 0)."""
    from actors import actor_writer_id
    from replay import reconcile, writer_tag

    by_writer = reconcile(shard.accounting for shard in shards).by_writer
    for actor_id in sorted(fleet.actor_ids):
        stored = by_writer.get(writer_tag(actor_writer_id(plan.name, actor_id)), 0)
        log.info(
            "actor %d: %s transitions stored by the shards over the run, %s reported by this session's processes",
            actor_id,
            f"{stored:,}",
            f"{fleet.inserted_by_actor.get(actor_id, 0):,}",
        )


def _take_shard_counts(parts: Components, counters: RunCounters) -> None:
    """The shards' counts once the actors flushed their last inserts, for the final record
    (the shards' own stop gives them again); kept as they were if a shard does not answer."""
    if not parts.shards:
        return
    try:
        shards = parts.ray.get([shard.info.remote() for shard in parts.shards], timeout=SHARD_COUNTS_TIMEOUT_S)
    except Exception as exc:  # a shard restarting or hung: the last poll's counts stay
        log.warning("shard counts not taken before the final record: %s", exc)
        return
    take_shard_accounting(counters, shards)


def _stop_actors(parts: Components, counters: RunCounters, failures: _Failures) -> FleetStats | None:
    if parts.fleet is None:
        return None
    try:
        stats = parts.fleet.stop()
    except Exception as exc:
        failures.add("actors did not stop cleanly", exc)
        return None
    counters.fleet_lost = stats.transitions_lost
    inserted, lost = f"{stats.transitions_inserted:,}", f"{stats.transitions_lost:,}"
    log.info("actors stopped: %s transitions inserted, %s lost", inserted, lost)
    return stats


def _stop_learner(
    plan: Plan, parts: Components, counters: RunCounters, latest: ProgressRecord | None, failures: _Failures
) -> None:
    if parts.learner is None:
        return
    if "learner" not in parts.info and not plan.resumed:
        # A fresh learner asked for beside shards that then failed (or a Ctrl-C): it never served,
        # so there is nothing to checkpoint or record; killed, not waited for while it builds.
        parts.ray.kill(parts.learner)
        log.info("learner stopped before it served")
        return
    try:
        result = _learner_stopped(parts)
    except Exception as exc:
        failures.add("the learner did not stop cleanly", exc)
        return
    # The last record carries the final counters; a run that ended before its first progress
    # record (a short run, stopped early) still gets one, from the counters alone.
    base = latest if latest is not None else _first_record(plan, counters)
    final = dataclasses.replace(
        base,
        wall_s=counters.wall_s(),
        time=round(time.time(), 3),
        env_steps=counters.env_steps,
        updates=result.updates,
        updates_per_s=base.updates_per_s if latest is not None else round(result.updates_per_second, 1),
        achieved_utd=round(result.achieved_utd, 4),
        learner_inserts=result.inserts,
        replay_inserts=counters.replay_inserts,  # after the actors' last inserts (_take_shard_counts)
        weights_version=result.version,
        transitions_lost=counters.transitions_lost,
        clamped_fraction=base.clamped_fraction if result.clamped_fraction is None else result.clamped_fraction,
        **counters.accounting(),
        final=True,
    )
    plan.run.append_records([final.to_json()])
    counters.updates = result.updates  # where its stop checkpoint is: what the run's last line says
    checkpoint = result.checkpoint or "-"
    log.info(
        "learner stopped at update %s (weights v%d); checkpoint %s", f"{result.updates:,}", result.version, checkpoint
    )
    if result.error:
        failures.first = failures.first or f"the learner failed: {result.error}"


def _first_record(plan: Plan, counters: RunCounters) -> ProgressRecord:
    """A progress record from the driver's counters alone (the learner's fields are the stop's)."""
    return ProgressRecord(
        wall_s=counters.wall_s(),
        time=round(time.time(), 3),
        env_steps=counters.env_steps,
        env_steps_per_s=0.0,
        episodes=counters.episodes,
        recent_return=counters.recent_return(),
        last_eval=list(counters.last_eval) if counters.last_eval else None,
        updates=0,
        updates_per_s=0.0,
        achieved_utd=0.0,
        learner_inserts=0,
        target_utd=plan.config.learner.updates_per_env_step,
        weights_version=0,
        replay_size=0,
        replay_inserts=counters.replay_inserts,
        actors=0,
        actor_restarts=0,
        env_restarts=0,
        random_steps=0,
        transitions_lost=counters.transitions_lost,
        faults=counters.faults.to_json(),
        phase=counters.phase,
    )


def _learner_stopped(parts: Components):
    """The learner's `stop()`; a learner Ray is restarting is waited for (it resumes, then stops
    with a checkpoint)."""
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + STOP_TIMEOUT_S
    while True:
        try:
            return parts.ray.get(parts.learner.stop.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _stop_ray(plan: Plan, parts: Components) -> None:
    ray = parts.ray
    if ray is None:
        return
    if plan.config.ray.address is not None:  # on a cluster, what this run started goes with it
        for handle in [*parts.shards, *parts.offline_shards, parts.learner]:
            if handle is not None:
                ray.kill(handle)
    ray.shutdown()
