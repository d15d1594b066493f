"""`qfleet bench weights`: publish-to-all-subscribers latency and bytes through Redis, for weights
carried by Ray's object store beside weights carried by Redis, in one run.

On one machine, a single Ray node and an embedded redis-server: N subscribers (Ray actors,
num_cpus=0, each a `WeightSubscriber` as an env actor runs it, polling the version every 50 ms)
follow a run's weights; the driver publishes a policy of S MB `repeats` times, after one
unmeasured warm-up publish (which starts the object store's weights host, once per learner). A
publish's latency runs from the start of `WeightStore.publish` to the moment the last subscriber
has read every byte of the new version; a subscriber's thread wakes the bench's wait when it has
(no polling). Every subscriber does the same full read on both paths: it copies each byte of the
payload once, chunk by chunk, into one reused 8 MiB buffer (system/bench/weights_stream.py),
standing in for the load into a network's parameters (the copy every actor makes), so the latency
covers the payload's bytes on both paths. What that includes, per path:

- object_store: the learner encodes the payload (safetensors) and hashes its header; its
  background thread copies it into Ray's object store (one `ray.put`), offers the ref to the
  weights host and announces the manifest in Redis. Each subscriber notices the version (a GET
  every 50 ms), reads the manifest (one HMGET), asks the host for the ref, `ray.get`s it (Ray maps
  the node's shared copy, read-only, no copy), checks its size and header digest, decodes it (the
  tensors are views of that shared copy), then copies its bytes into the reused buffer.
- redis: the learner encodes the payload, hashes its header and writes it, in chunks, into a hash
  of its own, then announces the manifest naming it. Each subscriber notices the version, reads
  the manifest, fetches the chunks one by one (one HGET each) and copies each into the reused
  buffer, then checks the payload's size and header digest. A real reader (`RedisTransport`)
  copies into one payload-sized buffer, decodes views of it and then loads them into its network
  (a second copy); the bench's subscribers stream instead (`StreamingRedisReader`: the download's
  copy is the stand-in for the load, without the final tensor views, about 1 ms), because 32
  readers holding 300 MB each at once do not fit this VM beside 32 torch workers. That is slightly
  less work than a real reader: the Redis path's figures are a lower bound, and its ratio to the
  object store's an underestimate.

After recording the time a subscriber drops the weights (an env actor drops them once loaded).
Chunks are 8 MiB here (`BENCH_CHUNK_BYTES`, the Redis path only, production's default is 64 MiB;
the object store puts one object per version): Redis copies each reply into the reading client's
output buffer, so smaller chunks keep 32 readers' buffers small without changing the bytes moved.
The publish call's own duration is how
long the learner is held up. The bytes through Redis are the server's `total_net_input_bytes +
total_net_output_bytes` over that time; divided by the payload's size they count the payload's
copies through Redis. Cases alternate transports, so drifting load hits both. With 20 publishes
per case the p99 is in effect the slowest of them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time

import numpy as np
import torch

from learner import SharedWeights, WeightsConfig, WeightStore
from replay import connect_redis
from system.bench.weights_stream import StreamingRedisReader, copy_through
from system.local.ray_runtime import init_ray
from system.local.redis_server import RedisProcess
from system.local.secrets import REDIS_PASSWORD_ENV

WAIT_S = 600.0
"""Longest wait for every subscriber to receive one publish."""

BENCH_CHUNK_BYTES = 8 * 2**20
"""The Redis path's chunk size here (see the module's docstring)."""


class WeightsFollower:
    """A Ray actor following a run's weights as an env actor does (a `WeightSubscriber`), that
    says when it received a version: the bench's subscribers, and the integration tests'."""

    def __init__(self):
        self.subscriber = None
        self.version, self.tensors, self.bench = 0, {}, False
        self.scratch = np.empty(BENCH_CHUNK_BYTES, dtype=np.uint8)

    def follow(
        self, redis_url: str, run: str, config: WeightsConfig, poll_s: float = 0.05, bench: bool = False
    ) -> None:
        """Follows `run`'s weights from now on (one pool of followers serves every case). `bench`:
        reads every publish as the bench measures it (the module's docstring: every byte copied
        once into a reused chunk-sized buffer, Redis-carried weights streamed by
        `StreamingRedisReader`) and drops it once received; else holds the newest weights for `held`."""
        from actors import WeightSubscriber

        self.close()
        if bench and config.transport == "redis":
            store = StreamingRedisReader(redis_url, run)
        else:
            store = WeightStore(redis_url, run, config)
        self.subscriber = WeightSubscriber(store, poll_s=poll_s, retry_s=0.1)
        self.version, self.tensors, self.bench = 0, {}, bench

    def received(self, version: int, timeout: float) -> float:
        """time.time() at which `version` (or a newer one) was decoded here: woken by the
        subscriber's thread, no polling."""
        deadline = time.monotonic() + timeout
        while self.version < version:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"weights v{version} not received within {timeout:.0f} s")
            self._keep(self.subscriber.take(timeout=left))
        return time.time()

    def held(self) -> tuple[int, dict[str, float]]:
        """(version, per-tensor sums) of the newest weights received (sums: no torch crosses processes)."""
        self._keep(self.subscriber.take())
        return self.version, {name: float(tensor.double().sum()) for name, tensor in self.tensors.items()}

    def failures(self) -> int:
        return self.subscriber.fetch_failures

    def _keep(self, fetched) -> None:
        if fetched is None:
            return
        version, weights = fetched
        if self.bench and isinstance(weights, SharedWeights):  # the object store's payload, mapped
            copy_through(weights.payload, self.scratch)
        self.version, self.tensors = version, {} if self.bench else weights

    def close(self) -> None:
        if self.subscriber is not None:
            self.subscriber.close()
            self.subscriber = None
        self.tensors = {}


def policy_of(megabytes: float) -> dict[str, torch.Tensor]:
    """A state dict of float32 tensors (4 MB each, the last one the rest) totalling `megabytes` MB."""
    floats = int(megabytes * 1e6) // 4
    per_tensor = 1_000_000
    generator = torch.Generator().manual_seed(0)
    return {
        f"layer{i}.weight": torch.randn(min(per_tensor, floats - start), generator=generator)
        for i, start in enumerate(range(0, floats, per_tensor))
    }


def _redis_bytes(client) -> int:
    stats = client.info("stats")
    return stats["total_net_input_bytes"] + stats["total_net_output_bytes"]


def _case(ray, redis, subscribers, transport: str, megabytes: float, count: int, repeats: int) -> dict:
    """Latencies (s) and Redis bytes of `repeats` publishes of `megabytes` to `count` subscribers."""
    run = f"bench-weights-{transport}-{megabytes:g}mb-{count}"
    config = WeightsConfig(transport=transport, chunk_bytes=BENCH_CHUNK_BYTES)
    store = WeightStore(redis.url, run, config)
    client = connect_redis(redis.url)
    chosen = subscribers[:count]
    ray.get([subscriber.follow.remote(redis.url, run, config, bench=True) for subscriber in chosen])
    state = policy_of(megabytes)
    latencies, moved, blocked = [], [], []
    try:
        # Warm-up, not measured: the first publish starts the weights host (a Ray worker process)
        # and the subscribers' first fetch connects them; both happen once per learner / actor.
        warm_up = [subscriber.received.remote(1, WAIT_S) for subscriber in chosen]
        store.publish(state, 1)
        ray.get(warm_up, timeout=WAIT_S + 60)
        for version in range(2, repeats + 2):
            waits = [subscriber.received.remote(version, WAIT_S) for subscriber in chosen]
            before, started = _redis_bytes(client), time.time()
            size = store.publish(state, version)
            blocked.append(time.time() - started)
            latencies.append(max(ray.get(waits, timeout=WAIT_S + 60)) - started)
            moved.append(_redis_bytes(client) - before)
    finally:
        ray.get([subscriber.close.remote() for subscriber in chosen])
        keys = client.keys(f"qfleet:{run}:learner:weights*")  # the manifest, version and payloads
        if keys:
            client.delete(*keys)
        client.close()
        store.close()
    return {
        "transport": transport,
        "subscribers": count,
        "payload_bytes": size,
        "p50_s": float(np.percentile(latencies, 50)),
        "p99_s": float(np.percentile(latencies, 99)),
        "publish_call_p50_s": float(np.percentile(blocked, 50)),
        "redis_bytes_per_publish": int(np.median(moved)),
        "payload_copies_through_redis": float(np.median(moved)) / size,
        "latencies_s": [round(x, 4) for x in latencies],
    }


def run_weights_bench(
    counts: list[int], sizes_mb: list[float], transports: list[str], repeats: int, output: str | None
) -> int:
    for package in ("replay", "learner", "actors"):
        logging.getLogger(package).setLevel(logging.WARNING)
    redis = RedisProcess().start()
    os.environ[REDIS_PASSWORD_ENV] = redis.password  # before Ray starts: its workers inherit it
    init_ray()
    import ray

    results = []
    with redis:
        remote = ray.remote(WeightsFollower).options(num_cpus=0)
        subscribers = [remote.remote() for _ in range(max(counts))]
        try:
            for megabytes in sizes_mb:
                for count in counts:
                    for transport in transports:
                        result = _case(ray, redis, subscribers, transport, megabytes, count, repeats)
                        results.append(result)
                        print(
                            f"  {transport:>12}: {count} subscribers x {megabytes:g} MB: p50 {result['p50_s']:.3f} s, "
                            f"p99 {result['p99_s']:.3f} s, Redis {result['redis_bytes_per_publish']:,} B/publish "
                            f"({result['payload_copies_through_redis']:.2f} payload copies)",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            for subscriber in subscribers:
                ray.kill(subscriber)
            ray.shutdown()
    _print_table(results, repeats)
    if output:
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
        with open(output, "w") as f:
            json.dump({"machine": machine, "repeats": repeats, "results": results}, f, indent=2)
    return 0


def _print_table(results: list[dict], repeats: int) -> None:
    print(
        f"\nPublish to all subscribers on one Ray node ({repeats} publishes per row, so p99 is about the max; "
        f"latency: publish start to the last subscriber having copied every byte once into a reused buffer, "
        f"standing in for the load into a network (Redis: streamed, a lower bound); subscribers poll the version every 50 ms; Redis chunks {BENCH_CHUNK_BYTES // 2**20} MiB); {os.cpu_count()} CPUs, {platform.platform()}\n"
    )
    print(
        "| subscribers | payload | transport | p50 | p99 | publish call (p50) | bytes through Redis per publish "
        "| payload copies through Redis |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['subscribers']} | {r['payload_bytes'] / 1e6:,.1f} MB | {r['transport']} | {r['p50_s'] * 1e3:,.0f} ms "
            f"| {r['p99_s'] * 1e3:,.0f} ms | {r['publish_call_p50_s'] * 1e3:,.0f} ms | {r['redis_bytes_per_publish']:,} "
            f"| {r['payload_copies_through_redis']:.2f} |"
        )
    by_case: dict[tuple[int, int], dict[str, dict]] = {}
    for r in results:
        by_case.setdefault((r["subscribers"], r["payload_bytes"]), {})[r["transport"]] = r
    for (count, size), pair in by_case.items():
        if len(pair) == 2:
            ratio = pair["redis"]["p99_s"] / pair["object_store"]["p99_s"]
            print(f"\n{count} x {size / 1e6:,.1f} MB: Redis p99 / object store p99 = {ratio:.1f}x", end="")
    print()
