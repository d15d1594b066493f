"""Stable-Baselines3's SAC update step at the shape of `qfleet bench sac-updates`, standalone.

SB3 is no dependency of qfleet (nor of its benchmarks): this script imports nothing of qfleet, so
it runs in any environment that has `stable-baselines3` (a separate venv: requirements-bench-sb3.txt),
and `qfleet bench sac-updates --peer-python PATH` runs it with `--on-request`, one measurement
between each of its own.

    /path/to/venv/bin/python system/bench/sb3_sac_peer.py --batch-size 256 --hidden-size 256 --seconds 3

Measured: `SAC("MlpPolicy", "Pendulum-v1")` with SB3's defaults (2 critics, soft target updates with
tau 0.005 every step, automatic entropy temperature) but `batch_size` and `net_arch` as given, on one
torch thread and the CPU, its replay buffer filled with `capacity` random Pendulum-shaped
transitions; `SAC.train(gradient_steps=CHUNK)` is called until `seconds` of this process's CPU time
have passed. Each sample draws a uniform batch from the buffer, as SB3 trains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

CHUNK = 25
"""Gradient steps per `SAC.train` call (its per-call cost, a few logger records, is spread over them)."""


class SB3Bench:
    """An SB3 SAC with a full replay buffer, trained in chunks."""

    def __init__(self, batch_size: int, hidden_size: int, num_layers: int, capacity: int):
        import numpy as np
        import stable_baselines3
        import torch
        from stable_baselines3 import SAC
        from stable_baselines3.common.logger import configure

        torch.set_num_threads(1)
        self.version = stable_baselines3.__version__
        self.model = SAC(
            "MlpPolicy",
            "Pendulum-v1",
            batch_size=batch_size,
            buffer_size=capacity,
            policy_kwargs={"net_arch": [hidden_size] * num_layers},
            device="cpu",
            seed=0,
        )
        self.model.set_logger(configure(None, []))
        buffer, rng = self.model.replay_buffer, np.random.default_rng(0)
        buffer.observations[:] = rng.normal(size=buffer.observations.shape).astype(buffer.observations.dtype)
        buffer.next_observations[:] = rng.normal(size=buffer.next_observations.shape).astype(buffer.observations.dtype)
        buffer.actions[:] = rng.uniform(-1, 1, size=buffer.actions.shape).astype(buffer.actions.dtype)
        buffer.rewards[:] = rng.normal(size=buffer.rewards.shape).astype(buffer.rewards.dtype)
        buffer.dones[:] = 0.0
        buffer.full, buffer.pos = True, 0
        self.model.train(gradient_steps=CHUNK, batch_size=batch_size)  # warm-up: first-call allocations
        self.batch_size = batch_size

    def measure(self, seconds: float) -> dict:
        """Updates over at least `seconds` of CPU time: updates per CPU second and per wall second."""
        updates, cpu_start, wall_start = 0, time.process_time(), time.perf_counter()
        while time.process_time() - cpu_start < seconds:
            self.model.train(gradient_steps=CHUNK, batch_size=self.batch_size)
            updates += CHUNK
        cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
        return {"updates": updates, "cpu_s": cpu, "wall_s": wall}


def measure_on_request(batch_size: int, hidden_size: int, num_layers: int, capacity: int) -> None:
    """`--on-request`: sets up, prints {"ready": ...}, then answers each stdin line SECONDS with one
    measurement as JSON, so a caller interleaves these runs with its own; ends at EOF."""
    bench = SB3Bench(batch_size, hidden_size, num_layers, capacity)
    print(json.dumps({"ready": True, "version": bench.version}), flush=True)
    for line in sys.stdin:
        print(json.dumps(bench.measure(float(line))), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--on-request", action="store_true", help="measure once per stdin line (SECONDS)")
    args = parser.parse_args()
    if args.on_request:
        measure_on_request(args.batch_size, args.hidden_size, args.num_layers, args.capacity)
    else:
        result = SB3Bench(args.batch_size, args.hidden_size, args.num_layers, args.capacity).measure(args.seconds)
        print(json.dumps(result | {"updates_per_cpu_s": result["updates"] / result["cpu_s"]}))
