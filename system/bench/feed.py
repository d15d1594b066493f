"""`qfleet bench learner --feed-only`: what each way of feeding the learner costs per batch.

The same batches as `qfleet bench learner` (CartPole b256 x16 per request, Atari b32 x4, Atari
b256 x1) are drawn and moved to torch tensors on the CPU, without a learner update in between:
from the table in-process, from a shard in another process over gRPC (plaintext and/or TLS +
token), and through the same-host feed (replay/same_host.py). Each window reports batches/s and
the CPU seconds the learner's process and the shard's process spent per batch (`time.process_time`
and /proc/PID/stat): on a machine with few cores, the CPU a feed takes is what the learner's own
compute lacks, and CPU per batch moves far less than rates when other jobs share the machine.
"""

from __future__ import annotations

import json
import statistics
import time

from replay import generate_credentials, to_torch
from system.bench.learner import Case, InProcessReplay, _cases, _fill, process_cpu_s, start_feeds

LABELS = {
    "in_process": "in-process",
    "grpc": "gRPC",
    "grpc_tls": "gRPC + TLS",
    "same_host": "same-host feed + TLS",
    "same_host_plain": "same-host feed",
}


def _window(case: Case, source, seconds: float, shard_pid: int | None) -> tuple[float, float, float]:
    """(batches/s, learner CPU ms per batch, shard CPU ms per batch) over about `seconds`."""
    size, per_request = case.config.batch_size, case.config.prefetch.batches_per_request
    for sample in source.sample_batches(size, per_request):  # warm: the first call sizes the feed's slots
        to_torch(sample, "cpu")
    batches = 0
    shard0 = 0.0 if shard_pid is None else process_cpu_s(shard_pid)
    cpu0, started = time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        for sample in source.sample_batches(size, per_request):
            to_torch(sample, "cpu")
            batches += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    shard = 0.0 if shard_pid is None else process_cpu_s(shard_pid) - shard0
    return batches / elapsed, 1000 * cpu / batches, 1000 * shard / batches


def run_feed_bench(seconds: float, repeats: int, output: str | None, only: list[str] | None, security: str) -> int:
    """Prints, per case and feed, medians of batches/s and CPU ms per batch (learner, shard, both)."""
    credentials = generate_credentials()
    feeds = [name for name, on in (("grpc", security != "on"), ("grpc_tls", security != "off")) if on]
    feeds.append("same_host" if security != "off" else "same_host_plain")
    print(f"qfleet bench learner --feed-only: {seconds}s x {repeats} windows per feed, security {security}", flush=True)
    rows = []
    for case in _cases("cpu"):
        if only and case.name not in only:
            continue
        print(f"  {case.name} ...", flush=True)
        local = InProcessReplay(case.payload.spec, case.payload.capacity)
        _fill(local, case.payload)
        servers, sources = {}, {}
        try:
            start_feeds(case, feeds, credentials, servers, sources)
            windows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ("in_process", *feeds)}
            for _ in range(repeats):  # the feeds take turns: drift in the machine's speed hits each alike
                for name in windows:
                    source = local if name == "in_process" else sources[name]
                    pid = None if name == "in_process" else servers[name].proc.pid
                    windows[name].append(_window(case, source, seconds, pid))
            counts = {name: vars_of(sources[name].same_host_feed_counts()) for name in feeds}
        finally:
            for source in sources.values():
                source.close()
            for server in servers.values():
                server.close()
        for name, values in windows.items():
            rate, learner_ms, shard_ms = (statistics.median(v[i] for v in values) for i in range(3))
            total = statistics.median(v[1] + v[2] for v in values)
            rows.append(
                {
                    "case": case.name,
                    "feed": name,
                    "batches_per_s": rate,
                    "learner_cpu_ms": learner_ms,
                    "shard_cpu_ms": shard_ms,
                    "total_cpu_ms": total,
                    "windows": values,
                    "feed_counts": counts.get(name, {}),
                }
            )
            print(
                f"    {LABELS[name]}: {rate:,.1f} batches/s; CPU per batch: learner {learner_ms:.2f} ms, "
                f"shard {shard_ms:.2f} ms, both {total:.2f} ms",
                flush=True,
            )
    print("\n| case | feed | batches/s | learner CPU ms/batch | shard CPU ms/batch | both, ms/batch |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['case']} | {LABELS[row['feed']]} | {row['batches_per_s']:,.1f} | {row['learner_cpu_ms']:.2f} | "
            f"{row['shard_cpu_ms']:.2f} | {row['total_cpu_ms']:.2f} |"
        )
    print("\n(medians over the windows; 'both' is the median of each window's sum)")
    if output:
        with open(output, "w") as handle:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, handle, indent=2)
    return 0


def vars_of(counts) -> dict[str, int]:
    """A `FeedCounts` as a dict (empty when the feed was off)."""
    if not counts:
        return {}
    total: dict[str, int] = {}
    for shard_counts in counts.values():
        for key in ("in_region", "inline", "refused", "regions"):
            total[key] = total.get(key, 0) + getattr(shard_counts, key)
    return total
