"""`qfleet actors run` as a user runs it: a local Ray instance, a real shard (`qfleet replay
serve`) and redis-server; it fills the shard, reports episodes, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

from actors import ActorRegistry
from replay import ReplayClient


def test_actors_run_fills_the_shard_and_stops_cleanly_after_max_env_steps(redis_server, qfleet_serve):
    where = ["--redis-url", redis_server.url, "--run", "smoke"]
    shard = qfleet_serve("replay", "serve", *where, "--capacity", "50000", "--heartbeat-s", "0.2")
    fleet = ["--num-actors", "1", "--num-cpus", "0.5", "--max-env-steps", "3000", "--log-every", "0.5"]
    small = ["--set", "env.num_envs=2", "--set", "learner.hidden_size=16"]
    command = [sys.executable, "-m", "system.cli", "actors", "run", *where, *fleet, *small]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qfleet actors: run 'smoke', 1 actors on CartPole-v1" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("qfleet actors: stopped after") and ", 0 lost," in summary
    with ReplayClient(shard.address) as client:
        assert client.info().inserts >= 2000  # n-step windows trail the env steps by n - 1 per env
    registry = ActorRegistry(redis_server.url, "smoke")
    assert registry.actors() == {}  # the retired actor removed its report
    _, episodes = registry.read_episodes()
    assert episodes and all(e["actor"] == 0 and e["length"] >= 1 for e in episodes)
    registry.close()
