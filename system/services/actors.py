"""`qfleet actors run` and `qfleet scale`: the actor fleet as its own driver, and resizing it.

`actors run` connects to Ray (a local instance unless --ray-address), starts `actors.num_actors`
env actors against the run's shards and weight store, supervises them until SIGTERM/Ctrl-C or
--max-env-steps, and prints progress. `scale` writes the wanted actor count to Redis; the running
supervisor follows within a poll.
"""

from __future__ import annotations

import logging
import sys
import time

from actors import ActorFleet, ActorRegistry, ActorRegistryError, FleetError
from replay import ReplayUnavailableError, ShardRegistry, redact_url
from system.config import ConfigError, RunConfig, check_value_support, env_spaces, with_placeholder_support
from system.local.ray_runtime import init_ray
from system.local.secrets import use_run_secrets
from system.local.signals import stop_on_signals
from system.services.credentials import service_credentials

log = logging.getLogger(__name__)


def progress_line(stats) -> str:
    versions = sorted(set(stats.policy_versions.values()))
    recent = "-" if stats.recent_return is None else f"{stats.recent_return:.1f}"
    return (
        f"{stats.actors} actors | {stats.env_steps:,} env steps ({stats.steps_per_second:,.0f}/s) | "
        f"{stats.episodes:,} episodes, recent return {recent} | weights v{','.join(map(str, versions)) or '-'} | "
        f"restarts: {stats.env_restarts} env, {stats.actor_restarts} actor | lost {stats.transitions_lost:,}"
    )


def missing_shards(redis_url: str, run: str) -> str:
    """What to tell the user when run `run` has no live replay shard at `redis_url` ("" when it
    has one): its actors would wait for one, without a limit, before their first step.

    Raises:
        ConfigError: Redis cannot be read.
    """
    registry = ShardRegistry(redis_url, run)
    try:
        live = registry.live_shards()
    except ReplayUnavailableError as exc:
        raise ConfigError(f"--redis-url: {exc}") from None
    finally:
        registry.close()
    if live:
        return ""
    return (
        f"run {run!r} has no live replay shard at {redact_url(redis_url)}: its actors wait for one before "
        "their first step (are its shards up, is --run right?)"
    )


def run_actors(
    config: RunConfig,
    redis_url: str,
    run: str,
    ray_address: str | None,
    max_env_steps: int | None,
    log_every_s: float,
    insecure: bool = False,
) -> int:
    """Entry of `qfleet actors run` after argument parsing; returns the exit code.

    The replay credentials reach the actors as constructor arguments, not through the environment
    (Ray logs a runtime_env's variables).

    Raises:
        ConfigError: a bad config, an unreachable Redis, or no replay credentials without --insecure.
    """
    env_spaces(config.env)  # an unknown env or unsupported spaces fail before anything starts
    check_value_support(config)
    config = with_placeholder_support(config)  # acting needs no probe: any support gives the same greedy action
    credentials = service_credentials("qfleet actors run", insecure)
    use_run_secrets(redis_url)  # a local `qfleet train`'s Redis password and Ray token
    fleet = ActorFleet(
        config.env,
        config.actors,
        config.learner,
        redis_url,
        run,
        max_env_steps=max_env_steps,
        replay_credentials=credentials,
    )
    try:
        fleet.registry.actors()  # Redis reachable? (fails here, not inside every actor)
    except ActorRegistryError as exc:
        raise ConfigError(f"--redis-url: {exc}") from None
    missing = missing_shards(redis_url, run)
    if missing:
        print(f"qfleet actors: warning: {missing}", file=sys.stderr, flush=True)
    stop = stop_on_signals(log, "stopping actors (flushing their transitions)")
    init_ray(ray_address)
    fleet.start(env_checked=True)  # env_spaces above
    print(f"qfleet actors: run {run!r}, {config.actors.num_actors} actors on {config.env.id}", flush=True)
    started = last_log = time.monotonic()
    code = 0
    try:
        while not stop.is_set():
            stats = fleet.poll(timeout=0.5)
            if max_env_steps is not None and stats.env_steps >= max_env_steps:
                break
            if time.monotonic() - last_log >= log_every_s:
                print(progress_line(stats), flush=True)
                last_log = time.monotonic()
    except FleetError as exc:
        print(f"qfleet actors: {exc}", file=sys.stderr)
        code = 1
    finally:
        stats = fleet.stop()
    elapsed = time.monotonic() - started
    recent = "-" if stats.recent_return is None else f"{stats.recent_return:.1f}"
    print(
        f"qfleet actors: stopped after {elapsed:.0f} s: {stats.env_steps:,} env steps "
        f"({stats.env_steps / elapsed:,.0f}/s), {stats.episodes:,} episodes (recent return {recent}), "
        f"{stats.transitions_inserted:,} transitions inserted, {stats.transitions_lost:,} lost, "
        f"restarts: {stats.env_restarts} env, {stats.actor_restarts} actor",
        flush=True,
    )
    return code


def scale(redis_url: str, run: str, count: int) -> int:
    use_run_secrets(redis_url)
    registry = ActorRegistry(redis_url, run)
    try:
        before = registry.desired()
        registry.set_desired(count)
        live = len(registry.actors())
    except ActorRegistryError as exc:
        raise ConfigError(f"--redis-url: {exc}") from None
    finally:
        registry.close()
    was = "unset" if before is None else str(before)
    print(
        f"qfleet scale: run {run!r} actors {was} -> {count} (live now: {live}); the supervisor follows within a second"
    )
    return 0
