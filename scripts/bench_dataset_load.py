"""Writes a 1M-step CartPole-shaped dataset, then times load_transitions + fill_shards into 2 shards."""

import pathlib
import tempfile
import time

import gymnasium as gym
import numpy as np

from actors import spec_for_spaces
from learner import ActionSpace
from replay import ReplayClient, ReplayConfig, ReplayServer
from system.datasets import DatasetSource, DatasetWriter, Episode, fill_shards, load_transitions, offline_shard_config

root = pathlib.Path(tempfile.mkdtemp())
obs_space = gym.spaces.Box(-10, 10, (4,), np.float32)
act = gym.spaces.Discrete(2)
rng = np.random.default_rng(0)
w = DatasetWriter(root / "bench/million-v0/data", "bench/million-v0", obs_space, act)
total, t0 = 0, time.perf_counter()
while total < 1_000_000:
    T = int(rng.integers(100, 400))
    ends = np.zeros(T, bool)
    ends[-1] = True
    w.add(
        Episode(
            rng.standard_normal((T + 1, 4)).astype(np.float32),
            rng.integers(0, 2, T),
            np.ones(T),
            ends,
            np.zeros(T, bool),
        )
    )
    total += T
w.close()
print(f"wrote {w.episodes} episodes, {w.steps} steps in {time.perf_counter() - t0:.1f} s")
spec = spec_for_spaces("CartPole-v1", obs_space, act)
source = DatasetSource("bench/million-v0", datasets_dir=str(root), num_shards=2)
t0 = time.perf_counter()
loaded = load_transitions(source, spec, ActionSpace(num_actions=2), n_step=3, gamma=0.99)
t1 = time.perf_counter()
servers = [
    ReplayServer(spec, offline_shard_config(ReplayConfig(), source, loaded.size, i, 100)).start() for i in range(2)
]
clients = [ReplayClient(f"127.0.0.1:{s.port}") for s in servers]
t2 = time.perf_counter()
counts = fill_shards(loaded, clients)
t3 = time.perf_counter()
print(
    f"{loaded.size:,} transitions: read+validate {loaded.read_s:.2f} s, n-step {loaded.nstep_s:.2f} s, insert into 2 shards {t3 - t2:.2f} s; total load {t1 - t0 + t3 - t2:.2f} s; sizes {[c.info().size for c in clients]}"
)
for c in clients:
    c.close()
for s in servers:
    s.stop(grace=0.2, checkpoint=False)
