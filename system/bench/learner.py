"""`qfleet bench learner`: learner updates/s fed over gRPC vs fed from an in-process buffer.

The same `Learner.run` is fed by one shard in another process (through `ShardedReplay`) and by the
same `Table` in-process, for the CASES (CartPole MLP, Atari Nature CNN), replay full, limiter off:
the learner's top speed, timed over a window inside each run (see `WARMUP_S`). `security`: the
shard plaintext ("off"), with TLS + token ("on", as `qfleet train` runs it), or both in one run,
the feeds taking turns ("both"). Beside them, always, the same-host feed (replay/same_host.py: the
shard writes samples into the learner's shared memory; TLS + token unless `security` is "off"),
compared with the gRPC runs of the same security. Each window also reports the CPU the learner's
and the shard's processes used per update (`/proc/PID/stat`): on a small machine, CPU saved is the gain.
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
    PriorityCounts,
    PriorityUpdateResult,
    RateLimiter,
    ReplayStats,
    Sample,
    ShardedReplay,
    Spec,
    Table,
    generate_credentials,
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
        self._counts = PriorityCounts()

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
        self._counts += PriorityCounts(applied, dropped)
        return PriorityUpdateResult(applied, dropped)

    def send_priorities(self, keys, priorities) -> None:
        self.update_priorities(keys, priorities)  # in-process: applied at once

    def flush_priorities(self, timeout=None) -> PriorityCounts:
        return self._counts


def start_feeds(case: Case, feeds: list[str], credentials, servers: dict, sources: dict) -> None:
    """For each feed ("grpc", "grpc_tls", "same_host", "same_host_plain"), a shard in a child
    process holding `case`'s payload and a ShardedReplay reading it that way, filled; into
    `servers` and `sources` as they start, so that the caller closes whatever started."""
    for feed in feeds:
        tls = credentials if feed in ("grpc_tls", "same_host") else None
        servers[feed] = ChildServer("qfleet", case.payload, credentials=tls)
        sources[feed] = ShardedReplay(
            addresses=[servers[feed].address],
            credentials=tls.for_clients() if tls else None,
            same_host_feed="auto" if feed.startswith("same_host") else "off",
        )
        _fill(sources[feed], case.payload)


def _fill(target, payload: Payload) -> None:
    rng = np.random.default_rng(0)
    chunk = random_batch(payload.spec, min(payload.capacity, 8192), rng)
    chunk["action"] = rng.integers(0, 2, len(chunk["action"])).astype(np.int64)
    for _ in range(max(1, payload.capacity // len(chunk["action"]))):
        target.insert(chunk)
    target.flush()


WARMUP_S = 0.5
"""Seconds of each run before its timed window: the prefetcher filling its queue, first allocations."""


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclasses.dataclass(frozen=True)
class Window:
    """One timed window of a learner run."""

    updates_per_s: float
    learner_cpu_ms: float
    """CPU of the learner's process per update (all its threads: compute, prefetcher, gRPC)."""
    shard_cpu_ms: float
    """CPU of the shard's process per update (0 in-process: the learner's own)."""


def _updates_per_second(case: Case, replay, seconds: float, shard_pid: int | None = None) -> Window:
    """Updates/s of one `Learner.run` over a window of `seconds` that starts WARMUP_S into the run
    and ends before it stops: steady state, without the prefetcher's start and close (a training
    run pays those once, not every few seconds); and the CPU each process used per update in it."""
    learner = Learner(case.config, replay, case.obs_shape, ActionSpace(num_actions=case.num_actions), log_every_s=1e9)
    learner.run(max_updates=3)  # first run: allocations, lazy initialisation
    stop = threading.Event()
    window: list[tuple[float, int, float, float]] = []

    def mark() -> None:
        # At the moment an update completes, so that the window holds whole updates (a 2 s window
        # of 5 updates/s would otherwise be off by up to one update in ten).
        before = learner.updates
        while learner.updates == before and not stop.wait(0.0005):
            pass
        shard = 0.0 if shard_pid is None else process_cpu_s(shard_pid)
        window.append((time.perf_counter(), learner.updates, time.process_time(), shard))

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
    (t0, u0, l0, s0), (t1, u1, l1, s1) = window
    updates = max(1, u1 - u0)
    return Window((u1 - u0) / (t1 - t0), 1000 * (l1 - l0) / updates, 1000 * (s1 - s0) / updates)


def run_learner_bench(
    seconds: float,
    repeats: int,
    device: str,
    output: str | None,
    only: list[str] | None = None,
    security: str = "both",
) -> int:
    logging.getLogger("learner").setLevel(logging.WARNING)
    resolved = resolve_device(device)
    machine = (
        f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, device {resolved}"
        + (f" = {torch.cuda.get_device_name(resolved)}" if resolved.type == "cuda" else "")
        + ")"
    )
    print(
        f"qfleet bench learner: {seconds}s x {repeats} repeats per figure, security {security}, on {machine}",
        flush=True,
    )
    credentials = generate_credentials()
    feeds = [name for name, on in (("grpc", security != "on"), ("grpc_tls", security != "off")) if on]
    # The same-host feed, as `qfleet train` would run it: TLS + token for the control message
    # unless the shards are plaintext.
    feeds.append("same_host" if security != "off" else "same_host_plain")
    labels = {
        "grpc": "over gRPC",
        "grpc_tls": "over gRPC with TLS + token",
        "same_host": "same-host feed (TLS + token)",
        "same_host_plain": "same-host feed (plaintext)",
    }
    rows = []
    for case in _cases(device):
        if only and case.name not in only:
            continue
        print(f"  {case.name} ...", flush=True)
        local = InProcessReplay(case.payload.spec, case.payload.capacity)
        _fill(local, case.payload)
        servers, sources = {}, {}
        try:
            start_feeds(case, feeds, credentials, servers, sources)
            # Alternate the feeds so that drift in this shared machine's speed hits each alike.
            runs: dict[str, list[float]] = {"in_process": [], **{feed: [] for feed in feeds}}
            cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
            for _ in range(repeats):
                for name in runs:
                    source = local if name == "in_process" else sources[name]
                    pid = None if name == "in_process" else servers[name].proc.pid
                    window = _updates_per_second(case, source, seconds, pid)
                    runs[name].append(window.updates_per_s)
                    cpu[name].append((window.learner_cpu_ms, window.shard_cpu_ms))
                line = ", ".join(f"{labels.get(k, 'in-process')} {v[-1]:,.1f}/s" for k, v in runs.items())
                print(f"    {line}", flush=True)
            for name in cpu:
                learner_ms = statistics.median(c[0] for c in cpu[name])
                shard_ms = statistics.median(c[1] for c in cpu[name])
                print(
                    f"    CPU per update, {labels.get(name, 'in-process')}: learner {learner_ms:.1f} ms, "
                    f"shard {shard_ms:.1f} ms (medians of the windows)",
                    flush=True,
                )
        finally:
            for source in sources.values():
                source.close()
            for server in servers.values():
                server.close()
        del local
        row = {"case": case.name, "in_process": statistics.median(runs["in_process"]), "runs": runs, "cpu_ms": cpu}
        for feed in feeds:
            row[feed] = statistics.median(runs[feed])
            # Each gRPC run against the in-process run just before it: the closest in time.
            row[f"{feed}_ratio"] = statistics.median(g / i for g, i in zip(runs[feed], runs["in_process"], strict=True))
        if "grpc" in feeds and "grpc_tls" in feeds:  # each TLS run against the plaintext run just before it
            row["tls_ratio"] = statistics.median(t / p for t, p in zip(runs["grpc_tls"], runs["grpc"], strict=True))
        same_host = feeds[-1]  # against the gRPC runs of the same security, just before each
        plain = "grpc_tls" if same_host == "same_host" else "grpc"
        row["same_host_vs_grpc"] = statistics.median(f / g for f, g in zip(runs[same_host], runs[plain], strict=True))
        rows.append(row)
    print()
    head = "".join(f" updates/s {labels[feed]} (shard + prefetcher) |" for feed in feeds)
    ratios = "".join(f" {labels[feed]} / in-process |" for feed in feeds)
    tls = " TLS / plaintext |" if "grpc" in feeds and "grpc_tls" in feeds else ""
    print(f"| case |{head} updates/s in-process |{ratios}{tls} same-host feed / gRPC of its security |")
    print("|---|" + "---:|" * (2 * len(feeds) + 2 + bool(tls)))
    for row in rows:
        cells = [f"{row[feed]:,.1f}" for feed in feeds] + [f"{row['in_process']:,.1f}"]
        cells += [f"{row[f'{feed}_ratio']:.1%}" for feed in feeds]
        cells += [f"{row['tls_ratio']:.1%}"] if tls else []
        cells += [f"{row['same_host_vs_grpc']:.1%}"]
        print(f"| {row['case']} | " + " | ".join(cells) + " |")
    print("\n(updates/s: medians of the runs; ratios: medians over adjacent pairs of runs)\n")
    print("| case | feed | learner CPU ms/update | shard CPU ms/update |\n|---|---|---:|---:|")
    for row in rows:
        for name, windows in row["cpu_ms"].items():
            learner_ms = statistics.median(c[0] for c in windows)
            shard_ms = statistics.median(c[1] for c in windows)
            print(f"| {row['case']} | {labels.get(name, 'in-process')} | {learner_ms:.1f} | {shard_ms:.1f} |")
    print()
    for row in rows:
        for feed in feeds:
            ratio = row[f"{feed}_ratio"]
            print(
                f"{'met' if ratio >= 0.9 else 'MISSED'}: {row['case']} {labels[feed]} at {ratio:.0%} of in-process "
                "(target >= 90%)"
            )
        if "tls_ratio" in row:
            ratio = row["tls_ratio"]
            print(
                f"{'met' if ratio >= 0.9 else 'MISSED'}: {row['case']} with TLS + token at {ratio:.0%} of plaintext "
                "(target >= 90%)"
            )
    if output:
        with open(output, "w") as handle:
            json.dump(
                {"machine": machine, "date": time.strftime("%Y-%m-%d"), "security": security, "rows": rows},
                handle,
                indent=2,
            )
    return 0
