"""`qfleet bench update-cost`: CPU per update, like for like. qfleet's learner update (`Learner.step`:
the agent's update with its loss, clipping, TD errors and priorities, then the loop's bookkeeping
and metrics) beside the single-process loop's update (`dqn_baseline.throughput`'s), on the same
batch and network, one torch thread, in this process, no replay server: what `qfleet bench e2e`'s
updates/s ratio would be if nothing but the update step differed. The agent's update runs with its
fused Adam and with torch's default (for-loop) kernel, the loop's with both kernels too.

    qfleet bench update-cost --env cartpole|breakout [--device cpu|cuda[:N]] [--rounds 7] [--updates 300] [--output FILE]

Each case runs `--updates` updates per round, the cases interleaved over `--rounds` rounds;
figures are the median and the minimum over the rounds of, on the CPU, thread CPU time per update
(`time.thread_time`: what other processes on a busy machine take does not count) and, on a CUDA
device, wall time per update between two device synchronisations (the host's launches and waits
and the device's kernels together: what bounds a GPU learner's updates/s). On CUDA the batch is on
the device already, so the host-to-device copy a run's prefetcher makes is left out too; there
"qfleet agent.update" and "qfleet Learner.step" replay the update as a CUDA graph
(`learner.cuda_graph`, the default), "qfleet agent.update (default Adam)" runs op by op (so its
ratio mixes the Adam kernel with the graph), and one more case, "qfleet Learner.step (op by op)",
is the same step without the graph.

What it leaves out, so its figures are a floor of a run's CPU per update, not a forecast: the
weight publish every `publish_every` updates and the priority stream to the shards (here a stub
takes the priorities); the conversion of the observations (here float32 already, where a run's
may be uint8 or bool and pay a `.float()`); the sampling and the prefetcher. Medians move with
the machine's load (on a busy 2-CPU machine the Breakout medians were up to a third above their
minimum): compare cases of one run, not figures of two.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from learner import ActionSpace, Learner, adam
from replay import Sample, TorchBatch
from system.bench.dqn_baseline import double_dqn_update
from system.bench.e2e import ENVS, Budget, qfleet_command
from system.bench.learning import ROOT
from system.bench.results import provenance, write_results
from system.errors import ConfigError

OBS_SHAPES = {"cartpole": ((4,), 2), "breakout": ((10, 10, 4), 6)}
"""Observation shape and actions of each env of `qfleet bench e2e`."""


class _NoReplay:
    """Takes the learner's priorities and answers its insert count, at no cost."""

    def update_priorities(self, keys, priorities) -> None:
        pass

    def stats(self) -> dict:
        return {"inserts": 1}


def _batch(obs_shape: tuple[int, ...], num_actions: int, batch_size: int) -> Sample:
    rng = np.random.default_rng(0)
    data = {
        "obs": rng.random((batch_size, *obs_shape), dtype=np.float32),
        "next_obs": rng.random((batch_size, *obs_shape), dtype=np.float32),
        "action": rng.integers(0, num_actions, batch_size).astype(np.int64),
        "reward": rng.random(batch_size, dtype=np.float32),
        "discount": np.full(batch_size, 0.99, np.float32),
        "policy_version": np.zeros(batch_size, np.int64),
    }
    ones = np.ones(batch_size, np.float32)
    keys = np.arange(batch_size, dtype=np.uint64)
    return Sample(data=data, keys=keys, probabilities=ones / batch_size, weights=ones, table_size=1, priority_mass=1.0)


def loop_update(
    sample: Sample, num_actions: int, budget: Budget, fused: bool, device: torch.device
) -> Callable[[], None]:
    """The single-process loop's update (its code, its network) on `device`, with torch's default
    Adam kernel (CleanRL's) or the fused one qfleet's learner uses."""
    obs_dim = int(np.prod(sample.data["obs"].shape[1:]))

    def network() -> nn.Module:
        layers: list[nn.Module] = []
        for i in range(budget.num_layers):
            layers += [nn.Linear(obs_dim if i == 0 else budget.hidden_size, budget.hidden_size), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(budget.hidden_size, num_actions))

    q, target = network().to(device), network().to(device)
    target.load_state_dict(q.state_dict())
    optimizer = adam(q.parameters(), 2.5e-4) if fused else torch.optim.Adam(q.parameters(), lr=2.5e-4)
    o = torch.from_numpy(sample.data["obs"].reshape(len(sample.keys), -1)).to(device)
    n = torch.from_numpy(sample.data["next_obs"].reshape(len(sample.keys), -1)).to(device)
    a, r = torch.from_numpy(sample.data["action"]).to(device), torch.from_numpy(sample.data["reward"]).to(device)
    d = torch.zeros(len(sample.keys), device=device)

    def update() -> None:
        double_dqn_update(q, target, optimizer, o, n, a, r, d)

    return update


def qfleet_learner(env: str, budget: Budget, device: str = "cpu", cuda_graph: bool = True) -> Learner:
    """The learner `qfleet bench e2e` runs for `env` (its config and settings) on `device`, with no
    replay; `cuda_graph` False: its updates op by op on a CUDA device too."""
    from system.config import load_config

    case = ENVS[env]
    command = qfleet_command(case, 4.0, budget, ROOT)
    overrides = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    config = dataclasses.replace(
        load_config(str(ROOT / case.config), overrides).learner, device=device, cuda_graph=cuda_graph
    )
    obs_shape, num_actions = OBS_SHAPES[env]
    learner = Learner(config, None, obs_shape, ActionSpace(num_actions=num_actions), log_every_s=1e9)
    learner.replay = _NoReplay()  # takes the priorities (computed as in a run) and counts inserts
    return learner


def measure(
    cases: dict[str, Callable[[], object]], rounds: int, updates: int, device: torch.device | None = None
) -> dict[str, dict[str, float]]:
    """Microseconds per call of each case, interleaved over `rounds`: thread CPU time, or on a CUDA
    `device` wall time between two synchronisations of it."""
    cuda = device is not None and device.type == "cuda"
    clock = time.perf_counter if cuda else time.thread_time

    def settled() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        return clock()

    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            for _ in range(max(1, updates // 10)):  # warm caches and allocator
                case()
            started = settled()
            for _ in range(updates):
                case()
            times[name].append((settled() - started) / updates * 1e6)
    return {
        name: {"median_us": round(statistics.median(t), 1), "min_us": round(min(t), 1)} for name, t in times.items()
    }


PROFILED_EVENTS = {
    "kernel launches": ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"),
    "graph launches (each replays a captured update's kernels)": ("cudaGraphLaunch",),
    "stream synchronisations": ("cudaStreamSynchronize", "cudaDeviceSynchronize"),
    "memory copies": ("cudaMemcpyAsync",),
    "host reads of a tensor (.item(), float())": ("aten::_local_scalar_dense",),
}
"""What `profile_steps` counts per step, by the profiler's event names."""


def profile_steps(step: Callable[[], object], steps: int, device: torch.device, top: int = 15) -> dict:
    """Where `steps` calls of `step` go, by torch.profiler: host time per step, on CUDA the device's
    kernel time per step and the launches, synchronisations, copies and host reads per step (a GPU
    learner bound by its host shows kernel time far under the step's wall time), and the `top` ops
    by host time as the profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - started
    events = profiler.key_averages()
    result: dict = {"steps": steps, "wall_us_per_step_profiled": round(wall / steps * 1e6, 1)}
    if cuda:
        kernels = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        result["device_kernel_us_per_step"] = round(kernels / steps, 1)
    for label, names in PROFILED_EVENTS.items():
        result[f"{label} per step"] = round(sum(e.count for e in events if e.key in names) / steps, 2)
    result["top_ops_by_host_time"] = events.table(
        sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40
    )
    return result


def run(env: str, rounds: int, updates: int, device: str = "cpu", profile: int = 0) -> dict:
    """Every case on `env`'s batch on `device` (cpu, cuda, cuda:N); each one's median also as a
    ratio to the loop's (default Adam); with `profile` > 0, then that many `Learner.step` calls
    under torch.profiler (`profile_steps`).

    Raises:
        ConfigError: `device` is not one torch knows, or a CUDA device this machine lacks.
    """
    torch.set_num_threads(1)
    target = bench_device(device)
    budget = Budget()
    obs_shape, num_actions = OBS_SHAPES[env]
    sample = _batch(obs_shape, num_actions, budget.batch_size)
    batch = TorchBatch(
        data={name: torch.from_numpy(column.copy()).to(target) for name, column in sample.data.items()},
        weights=torch.from_numpy(sample.weights.copy()).to(target),
        keys=sample.keys,
        probabilities=sample.probabilities,
        sample=sample,
    )
    learner = qfleet_learner(env, budget, str(target))
    loop_adam = qfleet_learner(env, budget, str(target), cuda_graph=False)
    agent = loop_adam.agent  # the same agent with torch's default Adam kernel (what it had before)
    agent.optimizer = torch.optim.Adam(agent.parameters, lr=loop_adam.config.optimizer.lr)
    op_by_op: dict[str, Callable[[], object]] = {}
    if getattr(learner.agent, "graphed", None) is not None:  # on CUDA: the same step without its CUDA graph
        eager = qfleet_learner(env, budget, str(target), cuda_graph=False)
        op_by_op["qfleet Learner.step (op by op)"] = lambda: eager.step(batch)
    cases = {
        "loop update (default Adam)": loop_update(sample, num_actions, budget, fused=False, device=target),
        "loop update (fused Adam)": loop_update(sample, num_actions, budget, fused=True, device=target),
        "qfleet agent.update (default Adam)": lambda: agent.update(batch.data, batch.weights),
        "qfleet agent.update": lambda: learner.agent.update(batch.data, batch.weights),
        "qfleet Learner.step": lambda: learner.step(batch),
        **op_by_op,
    }
    figures = measure(cases, rounds, updates, target)
    base = figures["loop update (default Adam)"]["median_us"]
    for values in figures.values():
        values["vs_loop_default_adam"] = round(values["median_us"] / base, 3)
    profiled = {"profile": profile_steps(cases["qfleet Learner.step"], profile, target)} if profile > 0 else {}
    return profiled | {
        "env": env,
        "batch_size": budget.batch_size,
        "rounds": rounds,
        "updates_per_round": updates,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(target) + (f" = {torch.cuda.get_device_name(target)}" if target.type == "cuda" else ""),
        "clock": "wall time between device synchronisations" if target.type == "cuda" else "thread CPU time",
        "cases": figures,
    }


def bench_device(name: str) -> torch.device:
    """The torch device `name` names, checked before anything is built on it.

    Raises:
        ConfigError: not cpu, cuda or cuda:N, or a CUDA device this machine lacks.
    """
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name}: {exc}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: must be cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s)")
    return device


def table(result: dict) -> str:
    """The Markdown table of one `run`'s cases."""
    lines = ["| case | median us/update | min us/update | vs loop (default Adam) |", "|---|---:|---:|---:|"]
    for name, figures in result["cases"].items():
        lines.append(
            f"| {name} | {figures['median_us']:,.1f} | {figures['min_us']:,.1f} | {figures['vs_loop_default_adam']:.3f} |"
        )
    return "\n".join(lines)


def run_update_cost_bench(
    env: str, rounds: int, updates: int, output: str | None, device: str = "cpu", profile: int = 0
) -> int:
    """Measures `env`'s cases on `device` (and profiles `profile` learner steps), prints the JSON
    and the tables; writes `output` with the command, date, commit (and whether the checkout had
    changes) and machine."""
    result = run(env, rounds, updates, device, profile)
    machine = f"{platform.node()} ({platform.machine()}, Python {platform.python_version()})"
    document = provenance(sys.argv, machine) | result
    print(json.dumps({k: v for k, v in document.items() if k != "profile"}, indent=1))
    print()
    print(table(result))
    if "profile" in result:
        figures = result["profile"]
        print(f"\nqfleet Learner.step under torch.profiler, {figures['steps']} steps:")
        for name, value in figures.items():
            if name not in ("steps", "top_ops_by_host_time"):
                print(f"  {name}: {value}")
        print(figures["top_ops_by_host_time"])
    if output:
        write_results(output, document)
    return 0
