"""`qfleet train CONFIG`: the whole system for one run, from one command.

plan (checks, the offline dataset read and validated; nothing starts if either is wrong) -> launch
(run directory, Redis, Ray, shards, offline shards, learner) -> the offline phase (a run with a
dataset: the learner on it alone) -> actors -> supervise (until total_env_steps, Ctrl-C/SIGTERM or
a failure) -> shutdown (in order, checkpoints written) -> report. An offline-only run
(train.total_env_steps 0) starts no actors: the offline phase, then shutdown (the final evaluation). The UTD is held both ways: the learner's global limiter
waits for data, the shards' limiters make actors wait for the learner.
"""

from __future__ import annotations

import logging
import sys

from system.config import ConfigError
from system.errors import TrainError
from system.local.signals import stop_on_signals
from system.train.launch import Components, launch, new_components, start_actors
from system.train.plan import Plan, plan
from system.train.records import LearnerEventRecord, RunCounters
from system.train.shutdown import shutdown
from system.train.supervise import Supervisor, record_startup

log = logging.getLogger(__name__)


def run_train(
    config_path: str | None,
    overrides: list[str],
    run_dir: str | None,
    resume: str | None,
    fresh_learner: bool = False,
    env_id: str | None = None,
) -> int:
    """Entry of `qfleet train` after argument parsing; returns the exit code."""
    checked = plan(config_path, overrides, run_dir, resume, fresh_learner, env_id)
    config, run = checked.config, checked.run
    stop = stop_on_signals(
        log, "stopping in order: actors flush, the learner checkpoints, shards checkpoint (again: at once)", True
    )
    run.write_config(config)
    counters = RunCounters(
        checked.state, config.train.eval_every_steps, config.offline.eval_every_updates, resumed=checked.resumed
    )
    if checked.fresh_learner:
        record_fresh_learner(checked, counters)
    what = f"resuming at {counters.start_env_steps:,} env steps" if resume else "fresh"
    print(
        f"qfleet train: run {checked.name!r} in {run.path} ({what}); {config.env.id}, "
        f"{config.actors.num_actors} actors x {config.env.num_envs} envs, {config.train.num_shards} shard(s), "
        f"until {config.train.total_env_steps:,} env steps" + offline_text(checked, counters),
        flush=True,
    )
    error = train_session(checked, counters, stop)
    from system.observe.report import write_report

    try:
        print(write_report(run), flush=True)
    except Exception as exc:  # the run is done and saved; a plotting problem is not fatal
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
    if error:
        print(f"qfleet train: {error}", file=sys.stderr, flush=True)
    print(end_line(checked, counters), flush=True)
    return 1 if error else 0


def end_line(checked: Plan, counters: RunCounters) -> str:
    """The last line of a session: finished, or stopped with where and how to continue."""
    config, run = checked.config, checked.run
    done = counters.env_steps >= config.train.total_env_steps
    offline_until = counters.offline_until  # the learner's: a fresh one counts on from the run's updates
    if checked.offline_only:
        done = offline_until is not None and counters.updates >= offline_until
    hint = "" if done else f"; continue it with: qfleet train --resume {run.path}"
    where = f"{counters.env_steps:,} env steps"
    if counters.phase == "offline":
        end = (
            f"ends at update {offline_until:,}" if offline_until is not None else f"{config.offline.updates:,} updates"
        )
        where = f"update {counters.updates:,} of the offline phase ({end})"
    if checked.offline_only:
        where += ", offline only"
    return f"qfleet train: {'finished' if done else 'stopped'} at {where}; run directory {run.path}{hint}"


def offline_text(checked: Plan, counters: RunCounters) -> str:
    """What the start line says of the offline dataset ("" without one)."""
    loaded, offline = checked.offline_data, checked.config.offline
    if loaded is None:
        return ""
    if checked.offline_only:
        phase = f"offline only: {offline.updates:,} updates on it alone, then a final evaluation, no actors"
    elif counters.online_from is not None or offline.updates == 0:
        phase = "mixed into online batches"
    else:
        phase = f"first {offline.updates:,} updates on it alone, then mixed into online batches"
    return f"; offline dataset {offline.dataset} ({loaded.size:,} transitions, {offline.num_shards} shard(s)): {phase}"


def record_fresh_learner(checked: Plan, counters: RunCounters) -> None:
    """A fresh learner continues the run: said in metrics.jsonl, state.json and the summary."""
    reached = checked.learner_reached
    counters.fresh_learners.append(counters.env_steps)
    record = LearnerEventRecord("fresh", counters.wall_s(), counters.env_steps, reached.updates, 0, "")
    checked.run.append_records([record.to_json()])
    checked.run.write_json("state.json", counters.state())


def train_session(checked: Plan, counters: RunCounters, stop) -> str | None:
    """Launches, supervises and shuts down one session of the run; returns what failed, if anything.

    Raises:
        ConfigError: a setting found wrong only while starting (after everything started was stopped).
    """
    components = new_components(checked)
    supervisor = Supervisor(checked, components, counters, stop)
    error = None
    try:
        launch(checked, counters, stop, components)
        if not stop.is_set() and checked.offline_data is not None and counters.online_from is None:
            supervisor.run_offline()
        if not stop.is_set() and not checked.offline_only:
            start_actors(checked, counters, components)
            supervisor.run()
    except TrainError as exc:
        error = str(exc)
    except ConfigError:
        raise
    except Exception as exc:  # anything else: stop in order all the same, then report it
        log.exception("qfleet train failed")
        error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            stopped_with = shutdown(checked, components, counters, supervisor.latest)
        finally:
            record_unfinished_startup(checked, components)
    return error or stopped_with


def record_unfinished_startup(checked: Plan, components: Components) -> None:
    """A session that ended before its start-up record (before its first update): what it
    reached. After the stop, and never in its way: a run folder that cannot be written is logged."""
    if components.startup.recorded:
        return
    try:
        checked.run.append_records([record_startup(components.startup).to_json()])
    except Exception as exc:
        log.warning("start-up record not written: %s: %s", type(exc).__name__, exc)
