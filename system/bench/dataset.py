"""`qfleet bench dataset`: loading an offline dataset into shards, timed stage by stage.

Writes a CartPole-shaped dataset (4 float32 observations, 2 actions) of `steps` steps to a temporary
folder with `DatasetWriter`, then times `load_transitions` (read and validate; n-step) and
`fill_shards` into in-process offline shards on loopback. Two shapes of episodes: `even` (100 to
400 steps each) and `uneven` (one episode of half the steps, the rest 100 to 400), the case that
tells whether the n-step pass depends on the episodes' lengths.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import tempfile
import time

import gymnasium as gym
import numpy as np

from actors import spec_for_spaces
from learner import ActionSpace
from replay import ReplayClient, ReplayConfig, ReplayServer
from system.datasets import DatasetSource, DatasetWriter, Episode, fill_shards, load_transitions, offline_shard_config

SHAPES = ("even", "uneven")
OBS_SPACE = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
ACTION_SPACE = gym.spaces.Discrete(2)


def episode_lengths(shape: str, steps: int, rng: np.random.Generator) -> list[int]:
    """Episode lengths summing to `steps` (`uneven`: the first holds half of them)."""
    lengths = [steps // 2] if shape == "uneven" else []
    while sum(lengths) < steps:
        lengths.append(min(int(rng.integers(100, 401)), steps - sum(lengths)))
    return lengths


def write_dataset(root: pathlib.Path, dataset_id: str, lengths: list[int], rng: np.random.Generator) -> float:
    """Writes the dataset; returns the seconds it took."""
    started = time.perf_counter()
    writer = DatasetWriter(root / dataset_id / "data", dataset_id, OBS_SPACE, ACTION_SPACE)
    for length in lengths:
        ends = np.zeros(length, bool)
        ends[-1] = True
        observations = rng.standard_normal((length + 1, 4)).astype(np.float32)
        writer.add(Episode(observations, rng.integers(0, 2, length), np.ones(length), ends, np.zeros(length, bool)))
    writer.close()
    return time.perf_counter() - started


def load_once(root: pathlib.Path, dataset_id: str, num_shards: int, n_step: int) -> dict[str, float]:
    """One load: read+validate, n-step, and fill fresh shards; seconds of each."""
    spec = spec_for_spaces("CartPole-v1", OBS_SPACE, ACTION_SPACE)
    source = DatasetSource(dataset_id, datasets_dir=str(root), num_shards=num_shards)
    loaded = load_transitions(source, spec, ActionSpace(num_actions=2), n_step=n_step, gamma=0.99)
    configs = [offline_shard_config(ReplayConfig(), source, loaded.size, i, 100) for i in range(num_shards)]
    servers = [ReplayServer(spec, config).start() for config in configs]
    clients = [ReplayClient(f"127.0.0.1:{server.port}") for server in servers]
    try:
        started = time.perf_counter()
        counts = fill_shards(loaded, clients)
        insert_s = time.perf_counter() - started
        if sum(counts) != loaded.size or sum(client.info().size for client in clients) != loaded.size:
            raise RuntimeError("the shards do not hold every transition")
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.stop(grace=0.2, checkpoint=False)
    return {"read_s": loaded.read_s, "nstep_s": loaded.nstep_s, "insert_s": insert_s, "transitions": loaded.size}


def run_dataset_bench(
    steps: int, shapes: list[str], num_shards: int, n_step: int, repeats: int, output: str | None
) -> int:
    """Runs the benchmark, prints a Markdown table; returns 0."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(
        f"qfleet bench dataset: {steps:,} steps, n = {n_step}, {num_shards} shard(s), {repeats} repeat(s) "
        f"(median) on {machine}",
        flush=True,
    )
    root = pathlib.Path(tempfile.mkdtemp(prefix="qfleet-bench-dataset-"))
    rows = []
    try:
        for shape in shapes:
            rng = np.random.default_rng(0)
            lengths = episode_lengths(shape, steps, rng)
            dataset_id = f"bench/{shape}-v0"
            print(f"  {shape}: writing {len(lengths):,} episodes ...", flush=True)
            write_s = write_dataset(root, dataset_id, lengths, rng)
            runs = [load_once(root, dataset_id, num_shards, n_step) for _ in range(repeats)]
            row = {
                "shape": shape,
                "steps": steps,
                "episodes": len(lengths),
                "longest": max(lengths),
                "write_s": write_s,
                **{key: statistics.median(run[key] for run in runs) for key in ("read_s", "nstep_s", "insert_s")},
            }
            row["load_s"] = row["read_s"] + row["nstep_s"] + row["insert_s"]
            rows.append(row)
            shutil.rmtree(root / dataset_id.split("/")[0], ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print("| episodes | steps | longest | write s | read+validate s | n-step s | insert s | load s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['shape']} ({row['episodes']:,}) | {row['steps']:,} | {row['longest']:,} | {row['write_s']:.1f} | "
            f"{row['read_s']:.2f} | {row['nstep_s']:.2f} | {row['insert_s']:.2f} | {row['load_s']:.2f} |"
        )
    print(f"\npeak resident memory of the process: {peak_mb:,.0f} MB")
    if output:
        pathlib.Path(output).write_text(
            json.dumps({"machine": machine, "rows": rows, "peak_rss_mb": peak_mb}, indent=2)
        )
    return 0
