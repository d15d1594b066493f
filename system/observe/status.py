"""`qfleet status`: the live view of a run's learner, shards and actors, read from its Redis.

qfleet status RUN_DIR                      # a `qfleet train` run: its run.json names the Redis
qfleet status --redis-url URL --run NAME   # any run

A RUN_DIR whose Redis is gone (the run finished, crashed or never started) gets "not running" and
what the run directory last recorded instead, with exit status 1.

The Redis password: a `qfleet train` run of this user on this machine saved its own in the private
secrets folder (run.json names the file; `--redis-url` finds it by address); otherwise
QFLEET_REDIS_PASSWORD or the URL's. Addresses are shown without a password.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from replay import redact_url
from system.errors import ConfigError
from system.local.secrets import use_run_secrets, without_redacted_password
from system.train.run_dir import RunDir
from system.train.startup import startup_text


class _RedisGone(Exception):
    """The run's Redis did not answer.

    Attributes:
        redis_url: the address tried (its password hidden).
        reason: what the client said.
    """

    def __init__(self, redis_url: str, reason: str):
        redis_url = redact_url(redis_url)
        super().__init__(f"{redis_url}: {reason}")
        self.redis_url = redis_url
        self.reason = reason


@dataclass(frozen=True)
class _Live:
    """What a run's components report to its Redis."""

    learner: dict | None
    shards: dict
    shard_states: dict
    actors: dict
    desired_actors: int | None


def _age(updated_at: float | int | str | None) -> str:
    if not isinstance(updated_at, int | float):
        return "-"
    return f"{max(0.0, time.time() - float(updated_at)):.0f} s ago"


def _read(redis_url: str, run: str) -> _Live:
    """Everything run `run` reports to its Redis. Raises _RedisGone."""
    import redis

    from actors import ActorRegistry, ActorRegistryError
    from learner import LearnerStatus
    from replay import ReplayUnavailableError, ShardRegistry

    shards, actors, learner = (
        ShardRegistry(redis_url, run),
        ActorRegistry(redis_url, run),
        LearnerStatus(redis_url, run),
    )
    try:
        live = shards.live_shards()
        return _Live(
            learner=learner.read(),
            shards=live,
            shard_states={i: shards.last_state(i) for i in live},
            actors=actors.actors(),
            desired_actors=actors.desired(),
        )
    except (ReplayUnavailableError, ActorRegistryError, redis.RedisError) as exc:
        raise _RedisGone(redis_url, str(exc)) from None
    finally:
        shards.close()
        actors.close()
        learner.close()


def status_text(redis_url: str, run: str) -> str:
    """The status of run `run` as text. Raises ConfigError (naming the address) when Redis is unreachable."""
    try:
        return _live_text(redis_url, run, _read(redis_url, run))
    except _RedisGone as exc:
        raise ConfigError(f"--redis-url {exc}") from None


def _live_text(redis_url: str, run: str, live: _Live) -> str:
    status, reports, desired = live.learner, live.actors, live.desired_actors
    lines = [f"run {run!r} (Redis {redact_url(redis_url)})", ""]
    lines.append("learner: none reporting" if status is None else _line("learner", _learner_line, status))
    lines += ["", f"shards: {len(live.shards)} live"]
    if live.shards:
        lines.append("  id  address                    items       inserts       samples  metrics")
        for shard_id, record in sorted(live.shards.items()):
            state = live.shard_states.get(shard_id, {})
            lines.append(_line(f"  {shard_id:<3}", _shard_line, shard_id, record, state))
    lines += ["", f"actors: {len(reports)} reporting, {desired if desired is not None else '-'} wanted"]
    if reports:
        lines.append(
            "  id  host:pid              env steps    episodes  weights  epsilon  env restarts  random  lost  return  metrics"
        )
        for actor_id, report in sorted(reports.items()):
            lines.append(_line(f"  {actor_id:<3}", _actor_line, actor_id, report))
    return "\n".join(lines)


def _line(label: str, text: Callable[..., str], *args) -> str:
    """`text(*args)`; or `label` and the raw values (the last of `args`) when one is not a number
    where one belongs (anyone who can write to Redis can put one there): a bad value spoils its
    line, not the whole view."""
    try:
        return text(*args)
    except (TypeError, ValueError):
        return f"{label} malformed report: {str(args[-1])[:300]}"


def _policy_part(status: dict) -> str:
    """The published policy's own figures, for the offline losses (iql, filtered_bc); "" otherwise."""
    if status.get("policy_loss", "") in ("", None):
        return ""
    return f", policy loss {status['policy_loss']}, imitation weight {status.get('imitation_weight', '-')}"


def _learner_line(status: dict) -> str:
    return (
        f"learner: {status.get('updates', 0):,} updates ({status.get('updates_per_second', 0):,} /s), "
        f"weights v{status.get('weights_version', 0)}, UTD {status.get('achieved_utd', 0)}/{status.get('target_utd', '-')}, "
        f"loss {status.get('loss', '-')}, q {status.get('q_mean', '-')}{_policy_part(status)}, on {status.get('device', '-')} "
        f"at {status.get('host', '-')} pid {status.get('pid', '-')}, metrics {status.get('metrics') or '-'} "
        f"({_age(status.get('updated_at'))})"
    )


def _shard_line(shard_id: int, record, state: dict) -> str:
    return (
        f"  {shard_id:<3} {record.address:<22} {state.get('size', 0):>9,} {state.get('inserts', 0):>13,} "
        f"{state.get('samples', 0):>13,}  {record.metrics_address or '-'}"
    )


def _actor_line(actor_id: int, report: dict) -> str:
    recent = report.get("recent_return")
    host_pid = f"{report.get('host', '-')}:{report.get('pid', '-')}"
    return (
        f"  {actor_id:<3} {host_pid:<20} {report.get('env_steps', 0):>10,} "
        f"{report.get('episodes', 0):>11,}  v{report.get('policy_version', 0):<7} {float(report.get('epsilon', 0)):<7.4f} "
        f"{report.get('env_restarts', 0):>13} {int(report.get('random_steps', 0)):>7,} {report.get('transitions_lost', 0):>5}  "
        f"{'-' if recent is None else f'{float(recent):.1f}':>6}  {report.get('metrics') or '-'}"
        f"{_state_note(report)}"
    )


def _state_note(report: dict) -> str:
    """A note for an actor whose inserts wait on replay's rate limiter, or that waits for a shard
    before its first step ('' for one that acts)."""
    from actors import STATE_AWAITING_REPLAY, STATE_HELD_BACK

    if report.get("state") == STATE_AWAITING_REPLAY:
        return "  waiting for a replay shard of the run (are its shards up, is --run right?)"
    if report.get("state") != STATE_HELD_BACK:
        return ""
    return f"  held back by the UTD: inserts waiting {float(report.get('insert_wait_s', 0)):.0f} s"


def faults_line(state: dict) -> str:
    """The run's faults and losses as state.json last recorded them ("" for an older run)."""
    if "faults" not in state:
        return ""
    from system.train.faults import FaultCounts

    faults = FaultCounts.from_json(state.get("faults")).describe() or "none"
    line = f"faults: {faults}; transitions lost: {int(state.get('transitions_lost', 0)):,}"
    if "transitions_inserted" in state:  # only with shard ledgers (train.checkpoint_replay)
        line += (
            f"; stored for the actors: {int(state['transitions_inserted']):,}"
            f" (stored twice: {int(state.get('transitions_stored_twice', 0)):,}"
            f", given back: {int(state.get('transitions_given_back', 0)):,})"
        )
        gaps = [f"{label} {int(state[key]):,}" for key, label in _ACCOUNTING_GAPS if int(state.get(key, 0))]
        if gaps:
            line += "; accounting gaps: " + ", ".join(gaps)
    return line


_ACCOUNTING_GAPS = (
    ("transitions_unattributed", "unattributed"),
    ("transitions_untracked", "untracked"),
    ("receipts_unresolved", "receipts unresolved"),
    ("receipts_dropped", "receipts dropped"),
)
"""state.json keys named in the faults line when non-zero (where the exact accounting falls short)."""


def startup_line(run_dir: RunDir) -> str:
    """The latest session's start-up breakdown ("start-up: started in ..."), "" before it is
    recorded (and for runs older than the record)."""
    if not run_dir.metrics_path.exists():
        return ""
    # Only the startup lines are parsed (metrics.jsonl holds a progress record every few seconds);
    # records are written compact (`RunDir.append_records`), so the kind reads as below.
    for line in reversed(run_dir.metrics_path.read_text().splitlines()):
        if '"kind":"startup"' not in line:
            continue
        try:
            return f"start-up: {startup_text(json.loads(line)['phases'])}"
        except (ValueError, KeyError, TypeError, AttributeError):  # a truncated last line (a crash): an earlier one
            continue
    return ""


def not_running_text(run_dir: RunDir, run: str, why: str) -> str:
    """What a stopped run's directory last recorded (state.json, metrics.jsonl), as text."""
    config = run_dir.load_config()
    state = run_dir.read_json("state.json") or {}
    progress = run_dir.records("progress")
    last = progress[-1] if progress else {}
    env_steps = state.get("env_steps", last.get("env_steps", 0))
    total = config.train.total_env_steps
    recorded = [p.stat().st_mtime for p in (run_dir.path / "state.json", run_dir.metrics_path) if p.exists()]
    lines = [f"run {run!r} is not running ({why})"]
    if recorded:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(max(recorded)))
        lines.append(
            f"last recorded at {when}: env steps {env_steps:,}/{total:,}, "
            f"episodes {state.get('episodes', last.get('episodes', 0)):,}, "
            f"wall time {state.get('wall_s', last.get('wall_s', 0.0)) / 60:.1f} min, "
            f"updates {last.get('updates', 0):,}, weights v{last.get('weights_version', 0)}"
        )
        if state.get("last_eval"):
            eval_steps, eval_return = state["last_eval"]
            lines.append(f"last evaluation: return {eval_return:.1f} at {eval_steps:,} env steps")
        if faults_line(state):
            lines.append(faults_line(state))
        if startup := startup_line(run_dir):
            lines.append(startup)
    lines.append(f"see `qfleet report {run_dir.path}` for its learning curve and summary")
    if env_steps < total:
        lines.append(f"continue it with `qfleet train --resume {run_dir.path}`")
    return "\n".join(lines)


def main_status(run_dir: str | None, redis_url: str | None, run: str | None) -> int:
    """`qfleet status`: 0 when the run's Redis answers, 1 when a RUN_DIR's run is not running.

    Raises:
        ConfigError: no run given, not a run directory, or an explicit --redis-url unreachable.
    """
    if run_dir is None:
        if redis_url is None:
            raise ConfigError("give a RUN_DIR, or --redis-url (and --run)")
        use_run_secrets(redis_url)
        print(status_text(redis_url, run or "default"))
        return 0
    directory = RunDir(run_dir)
    info = directory.read_json("run.json")
    if info is None:
        name = run or directory.load_config().train.run_name or directory.path.name  # ConfigError: no run here
        print(not_running_text(directory, name, f"it never started: no run.json in {directory.path}"))
        return 1
    run = run or info["run"]
    if redis_url is not None:
        use_run_secrets(redis_url, info.get("secrets_id"))
        print(status_text(redis_url, run))
        return 0
    redis_url = without_redacted_password(info["redis_url"])
    use_run_secrets(redis_url, info.get("secrets_id"))
    try:
        live = _read(redis_url, run)
    except _RedisGone as exc:
        print(not_running_text(directory, run, f"its Redis at {exc.redis_url} is gone"))
        return 1
    if live.learner is None and not live.shards and not live.actors:  # reports expire within seconds
        why = f"nothing of it reports to its Redis at {redact_url(redis_url)}; or it is only starting"
        print(not_running_text(directory, run, why))
        return 1
    print(_live_text(redis_url, run, live))
    faults = faults_line(directory.read_json("state.json") or {})
    if faults:
        print(f"{faults} (the driver's state.json)")
    if startup := startup_line(directory):
        print(startup)
    return 0
