"""`qfleet status`: the live view of a run's shards, learner and actors, read from its Redis.

qfleet status RUN_DIR                      # a `qfleet train` run: its run.json names the Redis
qfleet status --redis-url URL --run NAME   # any run
"""

from __future__ import annotations

import time

from system.config.dataclass_args import ConfigError


def _age(updated_at: float | int | str | None) -> str:
    if not isinstance(updated_at, int | float):
        return "-"
    return f"{max(0.0, time.time() - float(updated_at)):.0f} s ago"


def status_text(redis_url: str, run: str) -> str:
    """The status of run `run` as text. Raises ConfigError when Redis is unreachable."""
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
        states = {i: shards.last_state(i) for i in live}
        reports, desired = actors.actors(), actors.desired()
        status = learner.read()
    except (ReplayUnavailableError, ActorRegistryError, redis.RedisError) as exc:
        raise ConfigError(f"--redis-url {redis_url}: {exc}") from None
    finally:
        shards.close()
        actors.close()
        learner.close()
    lines = [f"run {run!r} (Redis {redis_url})", ""]
    if status is None:
        lines.append("learner: none reporting")
    else:
        lines.append(
            f"learner: {status.get('updates', 0):,} updates ({status.get('updates_per_second', 0):,} /s), "
            f"weights v{status.get('weights_version', 0)}, UTD {status.get('achieved_utd', 0)}/{status.get('target_utd', '-')}, "
            f"loss {status.get('loss', '-')}, q {status.get('q_mean', '-')}, on {status.get('device', '-')} "
            f"at {status.get('host', '-')} pid {status.get('pid', '-')}, metrics {status.get('metrics') or '-'} "
            f"({_age(status.get('updated_at'))})"
        )
    lines += ["", f"shards: {len(live)} live"]
    if live:
        lines.append("  id  address                    items       inserts       samples  metrics")
        for shard_id, record in sorted(live.items()):
            state = states.get(shard_id, {})
            lines.append(
                f"  {shard_id:<3} {record.address:<22} {state.get('size', 0):>9,} {state.get('inserts', 0):>13,} "
                f"{state.get('samples', 0):>13,}  {record.metrics_address or '-'}"
            )
    lines += ["", f"actors: {len(reports)} reporting, {desired if desired is not None else '-'} wanted"]
    if reports:
        lines.append(
            "  id  host:pid              env steps    episodes  weights  epsilon  env restarts  lost  return  metrics"
        )
        for actor_id, r in sorted(reports.items()):
            recent = r.get("recent_return")
            lines.append(
                f"  {actor_id:<3} {str(r.get('host', '-')) + ':' + str(r.get('pid', '-')):<20} {r.get('env_steps', 0):>10,} "
                f"{r.get('episodes', 0):>11,}  v{r.get('policy_version', 0):<7} {float(r.get('epsilon', 0)):<7.4f} "
                f"{r.get('env_restarts', 0):>13} {r.get('transitions_lost', 0):>5}  "
                f"{'-' if recent is None else f'{float(recent):.1f}':>6}  {r.get('metrics') or '-'}"
            )
    return "\n".join(lines)


def main_status(run_dir: str | None, redis_url: str | None, run: str | None) -> int:
    if run_dir is not None:
        from system.train.run_dir import RunDir

        info = RunDir(run_dir).read_json("run.json")
        if info is None:
            raise ConfigError(f"{run_dir}: no run.json (not a qfleet train run directory, or it never started)")
        redis_url, run = redis_url or info["redis_url"], run or info["run"]
    if redis_url is None:
        raise ConfigError("give a RUN_DIR, or --redis-url (and --run)")
    print(status_text(redis_url, run or "default"))
    return 0
