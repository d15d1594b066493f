"""`qfleet bench actors`: env steps/s through qfleet's actor vs a plain gymnasium loop.

In one run: the plain loop (same envs and network, nothing else) alternating with `EnvActor`
in-process and as a Ray actor (ratios: medians over adjacent pairs, so drifting load hits both),
then fleets of 1 and 2 Ray actors. One torch thread per process; the shard at Ray's worker niceness.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from actors import ActorFleet, ActorsConfig, EnvActor, EnvConfig, describe_env, make_env
from learner import LearnerConfig, Policy
from replay import ReplayCredentials, generate_credentials
from system.config import RayConfig
from system.local.ray_runtime import init_ray
from system.local.redis_server import RedisProcess
from system.local.secrets import REDIS_PASSWORD_ENV

RUN = "bench-actors"


def plain_loop(env: EnvConfig, learner: LearnerConfig, epsilon: float, seconds: float, seed: int = 0) -> float:
    """Env steps/s of the plain loop."""
    spaces = describe_env(env)
    policy = Policy(learner, spaces.obs_shape, spaces.action_space, seed=seed)
    rng = np.random.default_rng(seed)
    envs = [make_env(env) for _ in range(env.num_envs)]
    obs = np.stack([np.asarray(e.reset(seed=seed + i)[0]) for i, e in enumerate(envs)])
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        actions = policy.act(obs, epsilon, rng)
        next_obs = []
        for e, action in zip(envs, actions, strict=True):
            o, _, terminated, truncated, _ = e.step(action)
            if terminated or truncated:
                o, _ = e.reset()
            next_obs.append(o)
        obs = np.stack(next_obs)
        steps += len(envs)
    rate = steps / (time.perf_counter() - start)
    for e in envs:
        e.close()
    return rate


class _Shard:
    """`qfleet replay serve` in a child process, registered in the benchmark's Redis, serving TLS
    with `credentials` (handed over in its environment, as a user's shell would)."""

    def __init__(self, env: EnvConfig, redis_url: str, credentials: ReplayCredentials, niceness: int = 0):
        capacity = min(1_000_000, (1 << 30) // describe_env(env).spec.item_nbytes())  # at most ~1 GiB
        options = ["--env-id", env.id, "--redis-url", redis_url, "--run", RUN, "--capacity", str(capacity)]
        options += ["--selector", "uniform", "--metrics-port", "0", "--set", f"env.frame_stack={env.frame_stack}"]
        args = [sys.executable, "-m", "system.cli", "replay", "serve", *options]
        if niceness:  # from the start, so that every thread of the shard has it
            args = ["nice", "-n", str(niceness), *args]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **credentials.environ()},
        )
        line = self.proc.stdout.readline()
        if not re.search(r"serving at", line):
            self.close()
            raise RuntimeError(f"the benchmark's replay shard did not start: {line!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _ray_worker_niceness() -> int:
    """The niceness Ray started its worker processes with (`ray.worker_niceness`, as `qfleet train`
    starts a local Ray).

    The shard runs at it, as `qfleet train`'s shards (Ray actors) do: a shard at another niceness
    than the Ray actor beside it would take CPU from it (or give it away) as no deployment does.
    """
    import ray

    return ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())


def _fleet_rate(fleet: ActorFleet, count: int, seconds: float) -> float:
    """Aggregate env steps/s of `count` actors over a window of `seconds` after warm-up."""
    fleet.registry.set_desired(count)
    while True:  # warm-up: every actor has finished a chunk
        stats = fleet.poll(timeout=0.5)
        if stats.actors == count and len(stats.policy_versions) == count:
            break
    settle = time.monotonic()  # a new Ray worker's first seconds are slow (imports, Ray's worker pool)
    while time.monotonic() - settle < 5.0:
        fleet.poll(timeout=0.5)
    stats = fleet.poll(timeout=0.5)
    steps0, t0 = stats.env_steps, time.monotonic()
    while time.monotonic() - t0 < seconds:
        stats = fleet.poll(timeout=0.5)
    return (stats.env_steps - steps0) / (time.monotonic() - t0)


def _paired(plain_segment, actor_segment, repeats: int, label: str) -> tuple[list[float], list[float]]:
    """Alternates plain-loop and actor segments; returns both lists of env steps/s."""
    plain, actor = [], []
    for _ in range(repeats):
        plain.append(plain_segment())
        actor.append(actor_segment())
        print(f"  plain {plain[-1]:,.0f}/s, {label} {actor[-1]:,.0f}/s", file=sys.stderr, flush=True)
    return plain, actor


def run_actors_bench(seconds: float, repeats: int, env_id: str, num_envs: int, output: str | None) -> int:
    for package in ("replay", "learner", "actors"):  # the library's progress lines would cut the table
        logging.getLogger(package).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    env = EnvConfig(id=env_id, num_envs=num_envs)
    learner = LearnerConfig()
    actors = ActorsConfig(num_actors=1, metrics_port=None, num_cpus=1.0)
    epsilon = actors.epsilon
    results: dict[str, float] = {}

    def plain_segment() -> float:
        return plain_loop(env, learner, epsilon, seconds)

    # Redis first, its password in the environment before Ray starts: Ray's workers inherit it.
    redis = RedisProcess().start()
    os.environ[REDIS_PASSWORD_ENV] = redis.password
    init_ray(num_cpus=2, worker_niceness=RayConfig().worker_niceness)  # as `qfleet train` starts Ray
    import ray

    niceness = _ray_worker_niceness()
    credentials = generate_credentials()  # as qfleet train runs: TLS + token
    clients = credentials.for_clients()
    with redis:
        shard = _Shard(env, redis.url, credentials, niceness)
        try:
            # 1. The actor in this process, against the plain loop in this process.
            actor = EnvActor(0, 1, env, actors, learner, redis.url, RUN, replay_credentials=clients)
            actor.run(seconds=0.5)  # warm-up (first inserts, allocations)
            plain, inline = _paired(plain_segment, lambda: actor.run(seconds).steps_per_second, repeats, "actor")
            actor.close()
            results["plain_loop"] = statistics.median(plain)
            results["actor_in_process"] = statistics.median(inline)
            # Each actor segment against the plain segment just before it: the pairs closest in time.
            results["in_process_vs_plain"] = statistics.median(a / p for a, p in zip(inline, plain, strict=True))

            # 2. The same actor as a Ray actor (its own worker process), alternating with the plain loop.
            remote = (
                ray.remote(EnvActor)
                .options(num_cpus=actors.num_cpus)
                .remote(0, 1, env, actors, learner, redis.url, RUN, replay_credentials=clients)
            )
            ray.get(remote.run.remote(0.5))
            time.sleep(3.0)  # Ray's worker pool settles after a new worker starts
            plain, hosted = _paired(
                plain_segment, lambda: ray.get(remote.run.remote(seconds)).steps_per_second, repeats, "Ray actor"
            )
            ray.get(remote.close.remote())
            ray.kill(remote)
            results["ray_actor"] = statistics.median(hosted)
            results["ray_actor_vs_plain"] = statistics.median(a / p for a, p in zip(hosted, plain, strict=True))

            # 3. Scaling: aggregate env steps/s of a fleet of 1 and then 2 actors.
            fleet = ActorFleet(env, actors, learner, redis.url, RUN, chunk_s=0.5, replay_credentials=clients)
            fleet.start(1)
            window = max(seconds * repeats, 3.0)  # several chunks, so chunk edges don't dominate
            try:
                for count in (1, 2):
                    results[f"fleet_{count}_actors"] = _fleet_rate(fleet, count, window)
                    print(f"  fleet of {count}: {results[f'fleet_{count}_actors']:,.0f}/s", file=sys.stderr)
            finally:
                fleet.stop()
        finally:
            shard.close()

    print(
        f"\n{env_id}, {num_envs} envs per actor, {learner.architecture.torso} network, epsilon {epsilon}; "
        f"{repeats} pairs of {seconds:g} s segments (medians); shard and Ray workers at niceness {niceness}\n"
    )
    print("| runner | env steps/s | vs plain loop (median of pairs) |")
    print("|---|---:|---:|")
    print(f"| plain gymnasium loop, same network | {results['plain_loop']:,.0f} | 100% |")
    print(
        f"| qfleet EnvActor, in-process | {results['actor_in_process']:,.0f} | {results['in_process_vs_plain']:.1%} |"
    )
    print(f"| qfleet EnvActor as a Ray actor | {results['ray_actor']:,.0f} | {results['ray_actor_vs_plain']:.1%} |")
    scaling = results["fleet_2_actors"] / results["fleet_1_actors"]
    print(
        f"\nFleet on Ray (aggregate over {window:g} s): 1 actor {results['fleet_1_actors']:,.0f}/s, "
        f"2 actors {results['fleet_2_actors']:,.0f}/s ({scaling:.2f}x). Target for one actor: >= 85% of the plain loop."
    )
    if output:
        with open(output, "w") as f:
            json.dump({"env": env_id, "num_envs": num_envs, "niceness": niceness, "results": results}, f, indent=2)
    return 0
