"""`qfleet bench replay`: throughput of one shard beside its two limits, measured in one run.

For CartPole- and Atari-size items: a qfleet shard in its own process; a raw gRPC server speaking
the same proto with no table (the transport limit, same client code); an in-process `Table` (the
memory limit). Each figure is the median of `repeats` runs; ratios are taken within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np

from replay import (
    RateLimiter,
    ReplayClient,
    ReplayServer,
    Spec,
    Table,
    add_servicer,
    grpc_options,
    insert_response,
    make_selector,
    wire,
)


@dataclass(frozen=True)
class Payload:
    """One kind of transition and how the benchmark moves it."""

    name: str
    spec: Spec
    capacity: int
    insert_batch: int
    sample_batch: int
    batches_per_request: int


def bench_spec(obs_shape: tuple[int, ...], obs_dtype: str) -> Spec:
    """The transition columns the benchmarks move (obs, action, reward, next_obs, discount)."""
    return Spec(
        {
            "obs": (obs_shape, obs_dtype),
            "action": ((), "int64"),
            "reward": ((), "float32"),
            "next_obs": (obs_shape, obs_dtype),
            "discount": ((), "float32"),
        }
    )


PAYLOADS = {
    "cartpole": Payload("cartpole", bench_spec((4,), "float32"), 1_000_000, 2048, 256, 16),
    # Same items in small messages: the per-message cost (informational, no target).
    "cartpole_small": Payload("cartpole_small", bench_spec((4,), "float32"), 1_000_000, 256, 256, 1),
    "atari": Payload("atari", bench_spec((84, 84, 4), "uint8"), 8_192, 32, 256, 1),
}


def random_batch(spec: Spec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n random items of `spec`."""
    batch = {}
    for name, (shape, dtype) in spec.columns.items():
        if dtype.kind == "f":
            batch[name] = rng.random((n, *shape), dtype=np.float32).astype(dtype)
        else:
            batch[name] = rng.integers(0, 100, size=(n, *shape)).astype(dtype)
    return batch


# -- the raw gRPC reference server -----------------------------------------------------------------


class _RawServicer:
    """Same proto and wire code, no table: the cost of moving the bytes alone (Insert and Sample;
    the other methods are not part of the reference)."""

    def __init__(self, spec: Spec):
        self._spec = spec
        self._responses: dict[tuple[int, int], bytes] = {}

    def Insert(self, request_iterator, context):
        for raw in request_iterator:
            request = wire.decode_insert_request(raw)  # headers only: no item is copied
            items = next(iter(request.columns().values())).shape[0]
            yield insert_response(request.sequence, items)

    def Sample(self, request, context):
        key = (request.batch_size, request.num_batches or 1)
        if key not in self._responses:
            n = key[0] * key[1]
            self._responses[key] = wire.encode_sample_response(
                random_batch(self._spec, n, np.random.default_rng(0)),
                np.arange(n, dtype=np.uint64),
                np.full(n, 1.0 / n),
                np.ones(n),
                table_size=n,
                priority_mass=float(n),
                inserts=n,
                samples=n,
            )
        return self._responses[key]

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the raw reference server only inserts and samples")

    UpdatePriorities = Info = Checkpoint = _unimplemented


def _serve_forever(kind: str, payload: Payload, shard_id: int = 0) -> None:
    """Child-process entry: serve, print the port, run until stdin closes."""
    if kind == "qfleet":
        server = ReplayServer(
            payload.spec, capacity=payload.capacity, selector="prioritized", seed=0, shard_id=shard_id
        ).start()
        port = server.port
    else:
        raw = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=grpc_options(512))
        add_servicer(_RawServicer(payload.spec), raw)
        port = raw.add_insecure_port("127.0.0.1:0")
        raw.start()
    print(port, flush=True)
    sys.stdin.read()  # the parent closes stdin (or dies) to stop us


class ChildServer:
    """A benchmark server ("qfleet" shard or "raw" gRPC) in its own process; `address` is where it listens."""

    def __init__(self, kind: str, payload: Payload, shard_id: int = 0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "system.bench.replay", "--serve", kind, payload.name, str(shard_id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"{kind} benchmark server failed to start")
        self.address = f"127.0.0.1:{line.strip()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- measurements ------------------------------------------------------------------------------------


def _rate(step, seconds: float, finish=lambda: None) -> float:
    """Items per second of calling `step()` (returns items) for about `seconds`, then `finish()`."""
    items = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        items += step()
    finish()
    return items / (time.perf_counter() - started)


def _median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def _client_rates(address: str, payload: Payload, seconds: float, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    batch = random_batch(payload.spec, payload.insert_batch, rng)
    client = ReplayClient(address, max_in_flight=64)
    # Fill the table so samples draw from a full prioritized tree.
    fill = random_batch(payload.spec, min(payload.capacity, 65_536), rng)
    for _ in range(max(1, payload.capacity // len(fill["action"]))):
        client.insert(fill)
    client.flush()

    def insert_step() -> int:
        client.insert(batch)
        return payload.insert_batch

    def sample_step() -> int:
        client.sample_batches(payload.sample_batch, payload.batches_per_request)
        return payload.sample_batch * payload.batches_per_request

    rates = {
        "insert": _median(lambda: _rate(insert_step, seconds, client.flush), repeats),
        "sample": _median(lambda: _rate(sample_step, seconds), repeats),
    }
    client.close()
    return rates


def _in_process_rates(payload: Payload, seconds: float, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    table = Table(payload.spec, payload.capacity, make_selector("prioritized", payload.capacity, 0.6), RateLimiter())
    batch = random_batch(payload.spec, payload.insert_batch, rng)
    fill = random_batch(payload.spec, min(payload.capacity, 65_536), rng)
    for _ in range(max(1, payload.capacity // len(fill["action"]))):
        table.insert(fill)

    def insert_step() -> int:
        table.insert(batch)
        return payload.insert_batch

    def sample_step() -> int:
        table.sample(payload.sample_batch, payload.batches_per_request)
        return payload.sample_batch * payload.batches_per_request

    return {
        "insert": _median(lambda: _rate(insert_step, seconds), repeats),
        "sample": _median(lambda: _rate(sample_step, seconds), repeats),
    }


def bench_payload(payload: Payload, seconds: float, repeats: int) -> dict:
    """Every figure of one payload, in one run."""
    results: dict[str, dict[str, float]] = {}
    for kind in ("qfleet", "raw_grpc"):
        server = ChildServer("qfleet" if kind == "qfleet" else "raw", payload)
        try:
            results[kind] = _client_rates(server.address, payload, seconds, repeats)
        finally:
            server.close()
    results["in_process"] = _in_process_rates(payload, seconds, repeats)
    return {
        "payload": payload.name,
        "item_bytes": payload.spec.item_nbytes(),
        "rates": results,
        "config": payload.__dict__ | {"spec": payload.spec.to_json()},
    }


def format_results(runs: list[dict]) -> str:
    """A Markdown table of the results with ratios and the issue's targets."""
    lines = [
        "| payload | op | batch | qfleet items/s | qfleet MB/s | raw gRPC items/s | qfleet / raw | in-process items/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        payload = PAYLOADS[run["payload"]]
        for op in ("insert", "sample"):
            q, raw, mem = (run["rates"][k][op] for k in ("qfleet", "raw_grpc", "in_process"))
            batch = (
                f"{payload.insert_batch}/msg"
                if op == "insert"
                else f"{payload.sample_batch} x {payload.batches_per_request}/req"
            )
            lines.append(
                f"| {run['payload']} | {op} | {batch} | {q:,.0f} | {q * run['item_bytes'] / 1e6:,.1f} | "
                f"{raw:,.0f} | {q / raw:.0%} | {mem:,.0f} |"
            )
    return "\n".join(lines)


def check_targets(runs: list[dict]) -> list[str]:
    """The issue's targets, each as a line that says met or missed, with the figure."""
    lines = []
    for run in runs:
        rates = run["rates"]
        for op in ("insert", "sample"):
            q = rates["qfleet"][op]
            if run["payload"] == "cartpole_small":
                continue
            if run["payload"] == "cartpole":
                ok = q >= 1_000_000
                lines.append(f"{'met' if ok else 'MISSED'}: cartpole {op} {q:,.0f}/s (target >= 1,000,000/s)")
            else:
                ratio = q / rates["raw_grpc"][op]
                ok = ratio >= 0.70
                lines.append(
                    f"{'met' if ok else 'MISSED'}: atari {op} at {ratio:.0%} of raw gRPC bytes/s (target >= 70%)"
                )
    return lines


def run_replay_bench(seconds: float, repeats: int, only: str | None, output: str | None) -> int:
    """Runs the benchmark, prints progress and the table; returns 0."""
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()})"
    print(f"qfleet bench replay: {seconds}s x {repeats} repeats per figure on {machine}", flush=True)
    runs = []
    for name, payload in PAYLOADS.items():
        if only and name != only:
            continue
        print(f"  measuring {name} ({payload.spec.item_nbytes():,} bytes/item) ...", flush=True)
        runs.append(bench_payload(payload, seconds, repeats))
    print()
    print(format_results(runs))
    print()
    for line in check_targets(runs):
        print(line)
    if output:
        with open(output, "w") as handle:
            json.dump(
                {
                    "machine": machine,
                    "date": time.strftime("%Y-%m-%d"),
                    "seconds": seconds,
                    "repeats": repeats,
                    "runs": runs,
                },
                handle,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--serve", nargs=3, metavar=("KIND", "PAYLOAD", "SHARD"), help="internal: run a benchmark server"
    )
    parser.add_argument("--write", nargs=3, metavar=("ADDRESSES", "SHARD", "SECONDS"), help="internal: run a writer")
    args = parser.parse_args()
    if args.serve:
        _serve_forever(args.serve[0], PAYLOADS[args.serve[1]], int(args.serve[2]))
    elif args.write:
        from system.bench.sharded import write_for

        write_for(args.write[0].split(","), int(args.write[1]), float(args.write[2]))
    else:
        sys.exit(run_replay_bench(3.0, 3, None, None))
