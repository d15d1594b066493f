"""`qfleet actors run` as a user runs it: a local Ray instance, a real shard (`qfleet replay
serve`, TLS + token) and redis-server; it fills the shard, reports episodes, and leaves nothing
behind. The replay credentials reach both commands through the environment, as in a user's shell."""

from __future__ import annotations

import os
import subprocess
import sys

from actors import ActorRegistry
from replay import ReplayClient, generate_credentials


def test_actors_run_fills_the_shard_and_stops_cleanly_after_max_env_steps(redis_server, qfleet_serve):
    where = ["--redis-url", redis_server.url, "--run", "smoke"]
    credentials = generate_credentials()
    shard = qfleet_serve(
        "replay", "serve", *where, "--capacity", "50000", "--heartbeat-s", "0.2", credentials=credentials
    )
    fleet = ["--num-actors", "1", "--num-cpus", "0.5", "--max-env-steps", "3000", "--log-every", "0.5"]
    small = ["--set", "env.num_envs=2", "--set", "learner.hidden_size=16"]
    command = [sys.executable, "-m", "system.cli", "actors", "run", *where, *fleet, *small]
    env = dict(os.environ, **credentials.for_clients().environ())
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qfleet actors: run 'smoke', 1 actors on CartPole-v1" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("qfleet actors: stopped after") and ", 0 lost," in summary
    assert credentials.token not in result.stdout + result.stderr
    with ReplayClient(shard.address, credentials=credentials) as client:
        assert client.info().inserts >= 2000  # n-step windows trail the env steps by n - 1 per env
    registry = ActorRegistry(redis_server.url, "smoke")
    assert registry.actors() == {}  # the retired actor removed its report
    _, episodes = registry.read_episodes()
    assert episodes and all(e["actor"] == 0 and e["length"] >= 1 for e in episodes)
    registry.close()
