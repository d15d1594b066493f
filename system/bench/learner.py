"""`qfleet bench learner`: learner updates/s fed over gRPC vs fed from an in-process buffer.

The same `Learner.run` is fed by one shard in another process (through `ShardedReplay`) and by the
same `Table` in-process, for the CASES (CartPole MLP, Atari Nature CNN), replay full, limiter off:
the learner's top speed, timed over a window inside each run (see `WARMUP_S`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import statistics
import threading
import time

import numpy as np
import torch

from learner import ActionSpace, Learner, LearnerConfig, PrefetchConfig, resolve_device
from replay import (
    PriorityUpdateResult,
    RateLimiter,
    ReplayStats,
    Sample,
    ShardedReplay,
    Spec,
    Table,
    importance_weights,
    make_selector,
)
from system.bench.replay import ChildServer, Payload, bench_spec, random_batch


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    payload: Payload
    obs_shape: tuple[int, ...]
    num_actions: int
    config: LearnerConfig


CASES = ("cartpole-mlp b256", "atari-cnn b32", "atari-cnn b256")


def _cases(device: str) -> list[Case]:
    cartpole = Payload("cartpole", bench_spec((4,), "float32"), 100_000, 2048, 256, 4)
    atari = Payload("atari", bench_spec((84, 84, 4), "uint8"), 4096, 32, 32, 1)
    base = LearnerConfig(device=device, learning_starts=1, publish_every=10**9, checkpoint_every=10**9)
    return [
        Case(
            "cartpole-mlp b256",
            cartpole,
            (4,),
            2,
            # 48-byte items: a request's fixed cost needs many batches to spread over.
            dataclasses.replace(base, batch_size=256, prefetch=PrefetchConfig(batches_per_request=16)),
        ),
        Case(
            "atari-cnn b32",
            atari,
            (84, 84, 4),
            6,
            # 1.8 MB batches: 4 per request (the config default) spreads a round trip's fixed cost
            # (a few ms of CPU on both ends) over 4 updates; 1 per request lost ~10 points here.
            dataclasses.replace(base, batch_size=32, prefetch=PrefetchConfig(batches_per_request=4)),
        ),
        Case(
            "atari-cnn b256",
            atari,
            (84, 84, 4),
            6,
            dataclasses.replace(base, batch_size=256, prefetch=PrefetchConfig(batches_per_request=1)),
        ),
    ]


class InProcessReplay:
    """A `Table` in the learner's own process, behind `ReplaySource`."""

    def __init__(self, spec: Spec, capacity: int, beta: float = 0.4):
        self.table = Table(spec, capacity, make_selector("prioritized", capacity, 0.6), RateLimiter())
        self.beta = beta
        self._inserts = self._samples = 0

    def insert(self, batch) -> None:
        self.table.insert(batch)
        self._inserts += len(batch["action"])

    def flush(self) -> None:
        """Nothing is in flight in-process."""

    def stats(self) -> ReplayStats:
        achieved = self._samples / self._inserts if self._inserts else 0.0
        return ReplayStats(
            run="",
            inserts=self._inserts,
            samples=self._samples,
            achieved_samples_per_insert=achieved,
            target_samples_per_insert=0.0,
            live_shards=1,
            failovers=0,
        )

    def sample_batches(self, batch_size: int, num_batches: int, *, beta=None, timeout=None) -> list[Sample]:
        items = self.table.sample(batch_size, num_batches)
        self._samples += batch_size * num_batches
        weights = importance_weights(
            items.probabilities, items.table_size, self.beta if beta is None else beta, batch_size
        )
        out = []
        for i in range(num_batches):
            part = slice(i * batch_size, (i + 1) * batch_size)
            out.append(
                Sample(
                    data={k: v[part] for k, v in items.data.items()},
                    keys=items.keys[part],
                    probabilities=items.probabilities[part],
                    weights=weights[part],
                    table_size=items.table_size,
                    priority_mass=items.priority_mass,
                )
            )
        return out

    def update_priorities(self, keys, priorities) -> PriorityUpdateResult:
        applied, dropped = self.table.update_priorities(keys, priorities)
        return PriorityUpdateResult(applied, dropped)


def _fill(target, payload: Payload) -> None:
    rng = np.random.default_rng(0)
    chunk = random_batch(payload.spec, min(payload.capacity, 8192), rng)
    chunk["action"] = rng.integers(0, 2, len(chunk["action"])).astype(np.int64)
    for _ in range(max(1, payload.capacity // len(chunk["action"]))):
        target.insert(chunk)
    target.flush()


WARMUP_S = 0.5
"""Seconds of each run before its timed window: the prefetcher filling its queue, first allocations."""


def _updates_per_second(case: Case, replay, seconds: float) -> float:
    """Updates/s of one `Learner.run` over a window of `seconds` that starts WARMUP_S into the run
    and ends before it stops: steady state, without the prefetcher's start and close (a training
    run pays those once, not every few seconds)."""
    learner = Learner(case.config, replay, case.obs_shape, ActionSpace(num_actions=case.num_actions), log_every_s=1e9)
    learner.run(max_updates=3)  # first run: allocations, lazy initialisation
    stop = threading.Event()
    window: list[tuple[float, int]] = []

    def mark() -> None:
        # At the moment an update completes, so that the window holds whole updates (a 2 s window
        # of 5 updates/s would otherwise be off by up to one update in ten).
        before = learner.updates
        while learner.updates == before and not stop.wait(0.0005):
            pass
        window.append((time.perf_counter(), learner.updates))

    def timer() -> None:
        for wait in (WARMUP_S, seconds):
            if stop.wait(wait):
                return
            mark()
        stop.set()

    clock = threading.Thread(target=timer, name="bench-window", daemon=True)
    clock.start()
    try:
        learner.run(stop=stop)
    finally:
        stop.set()
        clock.join()
    if len(window) < 2:
        raise RuntimeError(f"{case.name}: the learner stopped before the timed window ended")
    (t0, u0), (t1, u1) = window
    return (u1 - u0) / (t1 - t0)


def run_learner_bench(
    seconds: float, repeats: int, device: str, output: str | None, only: list[str] | None = None
) -> int:
    logging.getLogger("learner").setLevel(logging.WARNING)
    resolved = resolve_device(device)
    machine = (
        f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, device {resolved}"
        + (f" = {torch.cuda.get_device_name(resolved)}" if resolved.type == "cuda" else "")
        + ")"
    )
    print(f"qfleet bench learner: {seconds}s x {repeats} repeats per figure on {machine}", flush=True)
    rows = []
    for case in _cases(device):
        if only and case.name not in only:
            continue
        print(f"  {case.name} ...", flush=True)
        local = InProcessReplay(case.payload.spec, case.payload.capacity)
        _fill(local, case.payload)
        server = ChildServer("qfleet", case.payload)
        try:
            sharded = ShardedReplay(addresses=[server.address])
            _fill(sharded, case.payload)
            # Alternate the two feeds so that drift in this shared machine's speed hits both.
            in_process, over_grpc = [], []
            for _ in range(repeats):
                in_process.append(_updates_per_second(case, local, seconds))
                over_grpc.append(_updates_per_second(case, sharded, seconds))
                print(f"    in-process {in_process[-1]:,.1f}/s, over gRPC {over_grpc[-1]:,.1f}/s", flush=True)
            sharded.close()
        finally:
            server.close()
        del local
        rows.append(
            {
                "case": case.name,
                "grpc": statistics.median(over_grpc),
                "in_process": statistics.median(in_process),
                # Each gRPC run against the in-process run just before it: the closest in time.
                "ratio": statistics.median(g / i for g, i in zip(over_grpc, in_process, strict=True)),
                "grpc_runs": over_grpc,
                "in_process_runs": in_process,
            }
        )
    print()
    print("| case | updates/s over gRPC (shard + prefetcher) | updates/s in-process | gRPC / in-process |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['grpc']:,.1f} | {row['in_process']:,.1f} | {row['ratio']:.1%} |")
    print("\n(updates/s: medians of the runs; ratio: median over adjacent pairs of runs)\n")
    for row in rows:
        ratio = row["ratio"]
        print(
            f"{'met' if ratio >= 0.9 else 'MISSED'}: {row['case']} over gRPC at {ratio:.0%} of in-process (target >= 90%)"
        )
    if output:
        with open(output, "w") as handle:
            json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d"), "rows": rows}, handle, indent=2)
    return 0
