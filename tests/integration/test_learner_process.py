"""`qfleet learner run` as a user runs it: trains from real shards (TLS + token, the credentials
in its environment), stops on SIGTERM with a checkpoint, and a restart resumes its counters and
weight versions."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request

from actors import transition_spec
from conftest import cartpole_transitions, shard_kwargs, wait_until
from learner import WeightStore
from replay import ShardedReplay, generate_credentials

CREDENTIALS = generate_credentials()

OVERRIDES = (
    "learner.batch_size=32",
    "learner.learning_starts=100",
    "learner.publish_every=5",
    "learner.hidden_size=32",
    "learner.updates_per_env_step=0.1",
)
"""Flat `learner.` keys, as shipped configs and earlier releases write them."""


def start_learner(redis_server, checkpoint_dir, log_path):
    command = [sys.executable, "-m", "system.cli", "learner", "run", "--config", "configs/cartpole.yaml"]
    command += ["--redis-url", redis_server.url, "--run", "proc", "--checkpoint-dir", str(checkpoint_dir)]
    command += ["--metrics-port", "0", "--log-every", "0.5"]
    for override in OVERRIDES:
        command += ["--set", override]
    with open(log_path, "a") as log:  # the child keeps its own handle
        env = dict(os.environ, **CREDENTIALS.for_clients().environ())
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"metrics (\S+)", line)
    assert match, f"no start line: {line!r}\n{open(log_path).read()}"
    return proc, match.group(1), line


def test_learner_process_trains_stops_on_sigterm_and_resumes(start_server, redis_server, tmp_path):
    start_server(
        transition_spec("CartPole-v1"),
        capacity=10_000,
        credentials=CREDENTIALS,
        **shard_kwargs(redis_server, run="proc"),
    )
    writer = ShardedReplay(redis_server.url, "proc", credentials=CREDENTIALS)
    writer.wait_for_shards(1)
    writer.insert(cartpole_transitions(1000))
    writer.flush()
    store = WeightStore(redis_server.url, "proc")
    log_path = tmp_path / "learner.log"

    proc, metrics_url, line = start_learner(redis_server, tmp_path / "ckpt", log_path)
    assert "fresh" in line
    # UTD 0.1 x batch 32 = 3.2 samples per insert: about (1000 - 100) * 3.2 / 32 = 90 updates.
    assert wait_until(lambda: store.version() >= 3, timeout=60), log_path.read_text()
    scraped = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    assert 'qfleet_learner_updates_total{run="proc"}' in scraped
    assert 'qfleet_replay_target_samples_per_insert{run="proc"} 3.2' in scraped
    assert wait_until(lambda: store.version() >= 5, timeout=60), log_path.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    first_version = store.version()
    log = log_path.read_text()
    stopped = int(re.search(r"stopped at update (\d+)", log).group(1))
    assert 0 < stopped <= (1000 - 100) * 3.2 / 32 + 1024 / 32 + 1
    assert list((tmp_path / "ckpt").glob("learner-*.pt"))

    writer.insert(cartpole_transitions(500, start=1000))
    writer.flush()
    proc, _, line = start_learner(redis_server, tmp_path / "ckpt", log_path)
    assert f"resumed at update {stopped}" in line
    assert wait_until(lambda: store.version() > first_version, timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert int(re.findall(r"stopped at update (\d+)", log_path.read_text())[-1]) > stopped
    writer.close()
    store.close()
