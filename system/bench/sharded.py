"""`qfleet bench sharded`: a sharded replay's aggregate throughput and the prefetcher's gain.

Insert and sample throughput with 1, 2 and 4 shard processes (one writer process routed to each
shard); then batches/s a consumer gets from synchronous `sample` calls vs a `Prefetcher`, with a
fixed matmul per batch standing in for a learner step, and with no work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from replay import Prefetcher, ShardedReplay, choose_shard
from system.bench.replay import PAYLOADS, ChildServer, random_batch

# 200k items per shard: filled quickly, and sampled from a realistically deep tree.
PAYLOAD = dataclasses.replace(PAYLOADS["cartpole"], capacity=200_000)


def _writer_id(shard_id: int, shard_ids: list[int]) -> str:
    for i in range(10_000):
        writer = f"bench-writer-{i}"
        if choose_shard(writer, shard_ids) == shard_id:
            return writer
    raise RuntimeError("no writer id maps to that shard")


def write_for(addresses: list[str], shard_id: int, seconds: float) -> None:
    """Writer-process entry: insert into `shard_id` for `seconds`; prints items/s as JSON."""
    sharded = ShardedReplay(addresses=addresses, writer_id=_writer_id(shard_id, list(range(len(addresses)))))
    batch = random_batch(PAYLOAD.spec, PAYLOAD.insert_batch, np.random.default_rng(shard_id))
    items = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        sharded.insert(batch)
        items += PAYLOAD.insert_batch
    sharded.flush()
    elapsed = time.perf_counter() - started
    sharded.close()
    print(json.dumps({"items": items, "seconds": elapsed}), flush=True)


def _aggregate_insert_rate(addresses: list[str], seconds: float) -> float:
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "system.bench.replay", "--write", ",".join(addresses), str(i), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(len(addresses))
    ]
    rates = []
    for writer in writers:
        out, _ = writer.communicate(timeout=seconds + 120)
        result = json.loads(out.strip().splitlines()[-1])
        rates.append(result["items"] / result["seconds"])
    return sum(rates)


def _sample_rate(sharded: ShardedReplay, seconds: float) -> float:
    items = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        sharded.sample_batches(PAYLOAD.sample_batch, PAYLOAD.batches_per_request)
        items += PAYLOAD.sample_batch * PAYLOAD.batches_per_request
    return items / (time.perf_counter() - started)


def _consumer(work: bool):
    left = np.random.default_rng(0).random((256, 512), dtype=np.float32)
    right = np.random.default_rng(1).random((512, 512), dtype=np.float32)

    def consume(_batch) -> None:
        if work:
            for _ in range(4):
                left @ right

    return consume


def _delivery_rate(next_batch, consume, seconds: float) -> float:
    batches = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        consume(next_batch())
        batches += 1
    return batches / (time.perf_counter() - started)


def _work_only_rate(consume, seconds: float) -> float:
    return _delivery_rate(lambda: None, consume, seconds)


def run_sharded_bench(seconds: float, repeats: int, shard_counts: list[int], output: str | None) -> int:
    """Runs the benchmark, prints Markdown tables; returns 0."""
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()})"
    print(f"qfleet bench sharded: {seconds}s x {repeats} repeats per figure on {machine}", flush=True)
    scaling = []
    prefetch: dict[str, float] = {}
    for count in shard_counts:
        print(f"  {count} shard(s) ...", flush=True)
        servers = [ChildServer("qfleet", PAYLOAD, shard_id=i) for i in range(count)]
        try:
            addresses = [s.address for s in servers]
            insert = statistics.median(_aggregate_insert_rate(addresses, seconds) for _ in range(repeats))
            sharded = ShardedReplay(addresses=addresses, seed=0)
            sample = statistics.median(_sample_rate(sharded, seconds) for _ in range(repeats))
            if count == 2:
                print("  prefetcher vs synchronous sampling (2 shards) ...", flush=True)
                for work in (False, True):
                    consume = _consumer(work)
                    label = "with work" if work else "no work"
                    prefetch[f"sync, {label}"] = statistics.median(
                        _delivery_rate(lambda s=sharded: s.sample(PAYLOAD.sample_batch), consume, seconds)
                        for _ in range(repeats)
                    )
                    for per_request in (1, 4):
                        runs = []
                        for _ in range(repeats):
                            with Prefetcher(
                                sharded, PAYLOAD.sample_batch, depth=8, threads=2, batches_per_request=per_request
                            ) as prefetcher:
                                time.sleep(0.2)
                                runs.append(_delivery_rate(prefetcher.get, consume, seconds))
                        prefetch[f"prefetch ({per_request} batch/request), {label}"] = statistics.median(runs)
                prefetch["work alone"] = statistics.median(
                    _work_only_rate(_consumer(True), seconds) for _ in range(repeats)
                )
            sharded.close()
        finally:
            for server in servers:
                server.close()
        scaling.append({"shards": count, "insert": insert, "sample": sample})

    print()
    print("| shards | writers | aggregate insert items/s | sample items/s (16 x 256 per round) |")
    print("|---:|---:|---:|---:|")
    for row in scaling:
        print(f"| {row['shards']} | {row['shards']} | {row['insert']:,.0f} | {row['sample']:,.0f} |")
    if prefetch:
        print()
        print("| consumer (2 shards, batches of 256) | batches/s |")
        print("|---|---:|")
        for label, rate in prefetch.items():
            print(f"| {label} | {rate:,.1f} |")
    if output:
        with open(output, "w") as handle:
            json.dump(
                {"machine": machine, "date": time.strftime("%Y-%m-%d"), "scaling": scaling, "prefetch": prefetch},
                handle,
                indent=2,
            )
    return 0
