"""`qfleet bench sac-updates`: the SAC learner's update step on CPU, per ensemble size, beside SB3's.

qfleet's side: `SACAgent.update` + `after_update` in this process (no Ray, no replay server), fed
uniform batches drawn from numpy arrays of random Pendulum-shaped transitions (3 obs floats, 1
action), at SB3's default SAC sizes for Pendulum (batch 256, 2x256 MLPs, soft targets tau 0.005) and
the recipe's LayerNorm critic ensemble, for each ensemble size (the target the minimum of 2).
SB3's side: `SAC.train(gradient_steps=K)` on a filled buffer in `--peer-python`'s interpreter
(system/bench/sb3_sac_peer.py), its runs interleaved with qfleet's. Both on one torch thread.

Rates are updates per second of the process's CPU time (robust on a shared machine: a descheduled
process spends no CPU time) and per wall-clock second; ratios are of the CPU-time rates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from learner import ActionSpace, ArchitectureConfig, LearnerConfig, SACConfig, TargetConfig, make_agent
from system.bench.peer import PeerProcess, peer_python

PEER_SCRIPT = Path(__file__).with_name("sb3_sac_peer.py")
OBS_DIM, ACTION_DIM = 3, 1  # Pendulum-v1


def learner_config(ensemble_size: int, batch_size: int, hidden_size: int, num_layers: int) -> LearnerConfig:
    """The measured learner: SB3's sizes and target updates, the recipe's critic ensemble."""
    return LearnerConfig(
        loss="sac",
        device="cpu",
        batch_size=batch_size,
        architecture=ArchitectureConfig(hidden_size=hidden_size, num_layers=num_layers),
        target=TargetConfig(update="soft", tau=0.005),
        sac=SACConfig(ensemble_size=ensemble_size, ensemble_subset=2),
    )


class QfleetSide:
    """One SAC agent and a filled uniform buffer; `measure` runs updates for some CPU seconds."""

    def __init__(self, config: LearnerConfig, capacity: int):
        space = ActionSpace(low=(-2.0,), high=(2.0,))
        self.agent = make_agent(config, (OBS_DIM,), space, torch.device("cpu"))
        rng = np.random.default_rng(0)
        self.buffer = {
            "obs": rng.normal(size=(capacity, OBS_DIM)).astype(np.float32),
            "next_obs": rng.normal(size=(capacity, OBS_DIM)).astype(np.float32),
            "action": rng.uniform(-2, 2, size=(capacity, ACTION_DIM)).astype(np.float32),
            "reward": rng.normal(size=capacity).astype(np.float32),
            "discount": np.full(capacity, 0.99, np.float32),
        }
        self.rng, self.batch_size, self.updates = rng, config.batch_size, 0
        self.weights = torch.ones(config.batch_size)
        self.measure(0.0)  # warm-up: first-call allocations

    def _update(self) -> None:
        index = self.rng.integers(0, len(self.buffer["reward"]), self.batch_size)
        batch = {key: torch.from_numpy(column[index]) for key, column in self.buffer.items()}
        self.agent.update(batch, self.weights)
        self.updates += 1
        self.agent.after_update(self.updates)

    def measure(self, seconds: float) -> dict:
        updates, cpu_start, wall_start = 0, time.process_time(), time.perf_counter()
        while updates == 0 or time.process_time() - cpu_start < seconds:
            self._update()
            updates += 1
        return {
            "updates": updates,
            "cpu_s": time.process_time() - cpu_start,
            "wall_s": time.perf_counter() - wall_start,
        }


class SB3Side(PeerProcess):
    """SB3's side in `python`: sb3_sac_peer.py --on-request, asked for one run at a time."""

    def __init__(self, python: str, batch_size: int, hidden_size: int, num_layers: int, capacity: int):
        sizes = ("--batch-size", str(batch_size), "--hidden-size", str(hidden_size))
        more = ("--num-layers", str(num_layers), "--capacity", str(capacity))
        super().__init__("the SB3 side", [python, str(PEER_SCRIPT), "--on-request", *sizes, *more])
        self.version = self.ready["version"]


def sb3_python(given: str | None) -> tuple[str | None, str]:
    """The interpreter for SB3's side (`given`, else this one if `stable_baselines3` imports), or why none."""
    missing = "SB3 not installed: skipped (pip install --no-deps -r requirements-bench-sb3.txt in another venv, --peer-python)"
    return peer_python(given, "stable_baselines3", missing)  # optional: never a dependency of qfleet


def summarise(runs: list[dict]) -> dict:
    """Median rates over runs (per CPU second and per wall second)."""
    return {
        "updates_per_cpu_s": statistics.median(r["updates"] / r["cpu_s"] for r in runs),
        "updates_per_wall_s": statistics.median(r["updates"] / r["wall_s"] for r in runs),
        "runs": runs,
    }


def format_table(results: dict[str, dict], reference: str | None) -> str:
    """Markdown: one row per system, updates/s (CPU and wall) and the ratio to `reference`'s CPU rate."""
    lines = ["| learner | updates / CPU s | updates / wall s | vs SB3 (CPU) |", "|---|---:|---:|---:|"]
    for name, row in results.items():
        ratio = f"{row['updates_per_cpu_s'] / results[reference]['updates_per_cpu_s']:.2f}x" if reference else ""
        lines.append(f"| {name} | {row['updates_per_cpu_s']:.1f} | {row['updates_per_wall_s']:.1f} | {ratio} |")
    return "\n".join(lines)


def run_sac_updates_bench(
    ensembles: list[int],
    seconds: float,
    repeats: int,
    batch_size: int,
    hidden_size: int,
    num_layers: int,
    peer_python: str | None,
    output: str | None,
    capacity: int = 100_000,
) -> int:
    """Runs the benchmark, prints the table; returns 0."""
    torch.set_num_threads(1)
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()})"
    print(
        f"qfleet bench sac-updates: batch {batch_size}, {num_layers}x{hidden_size} MLPs, ensembles {ensembles}, "
        f"{seconds} CPU s x {repeats} repeats per figure, 1 torch thread, on {machine}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    python, note = sb3_python(peer_python)
    peer = None
    if python is not None:
        try:
            peer = SB3Side(python, batch_size, hidden_size, num_layers, capacity)
            note = f"SB3 {peer.version} SAC (2 critics, no LayerNorm) in {python}, runs interleaved with qfleet's"
        except (OSError, RuntimeError) as exc:
            note = f"SB3 side failed to start: {exc}"
    sides = {
        f"qfleet SAC, {size} LayerNorm critics": QfleetSide(
            learner_config(size, batch_size, hidden_size, num_layers), capacity
        )
        for size in ensembles
    }
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    sb3_name = "SB3 SAC.train"
    if peer is not None:
        runs[sb3_name] = []
    try:
        for repeat in range(repeats):
            for name, side in sides.items():
                runs[name].append(side.measure(seconds))
            if peer is not None:
                runs[sb3_name].append(peer.measure(seconds))
            print(f"  repeat {repeat + 1}/{repeats} done", flush=True)
    finally:
        if peer is not None:
            peer.close()
    results = {name: summarise(r) for name, r in runs.items()}
    print()
    print(format_table(results, sb3_name if peer is not None else None))
    print(f"\n{note}; load average after: {os.getloadavg()[0]:.1f}")
    if output:
        with open(output, "w") as handle:
            json.dump(
                {
                    "machine": machine,
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "settings": {
                        "batch_size": batch_size,
                        "hidden_size": hidden_size,
                        "num_layers": num_layers,
                        "seconds": seconds,
                        "repeats": repeats,
                        "learners": {name: dataclasses.asdict(side.agent.config) for name, side in sides.items()},
                    },
                    "results": results,
                    "note": note,
                },
                handle,
                indent=2,
            )
    return 0
