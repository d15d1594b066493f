"""`qfleet bench replay`: throughput of one shard beside its two limits, measured in one run.

For CartPole- and Atari-size items: a qfleet shard in its own process; a raw gRPC server speaking
the same proto with no table (the transport limit, same client code); an in-process `Table` (the
memory limit). Each figure is the median of `repeats` runs; ratios are taken within one run.

`security`: "off" measures the shard as plaintext, "on" with TLS and the token on every call (as
`qfleet train` runs it), "both" both in one run, their measurements interleaved, with the ratio.
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
    ReplayCredentials,
    ReplayServer,
    Spec,
    Table,
    add_servicer,
    generate_credentials,
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

    UpdatePriorities = UpdatePrioritiesStream = Info = Checkpoint = Credit = _unimplemented


def _serve_forever(kind: str, payload: Payload, shard_id: int = 0) -> None:
    """Child-process entry: serve, print the port, run until stdin closes. A qfleet shard serves
    TLS + token when its environment holds replay credentials (QFLEET_REPLAY_*)."""
    if kind == "qfleet":
        server = ReplayServer(
            payload.spec,
            capacity=payload.capacity,
            selector="prioritized",
            seed=0,
            shard_id=shard_id,
            credentials=ReplayCredentials.from_env(),
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
    """A benchmark server ("qfleet" shard or "raw" gRPC) in its own process; `address` is where it
    listens. With `credentials` a qfleet shard serves TLS + token (they reach it in its environment)."""

    def __init__(self, kind: str, payload: Payload, shard_id: int = 0, credentials: ReplayCredentials | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("QFLEET_REPLAY_")}
        if credentials is not None:
            env |= credentials.environ()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "system.bench.replay", "--serve", kind, payload.name, str(shard_id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
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


SECURITY = ("off", "on", "both")
"""`--security`: plaintext shards, TLS + token shards, or both in one run."""


class _Feed:
    """A client of one benchmark server, its table filled, measuring insert and sample rates."""

    def __init__(self, address: str, payload: Payload, credentials: ReplayCredentials | None = None):
        self.payload = payload
        rng = np.random.default_rng(1)
        self.batch = random_batch(payload.spec, payload.insert_batch, rng)
        self.client = ReplayClient(address, max_in_flight=64, credentials=credentials)
        # Fill the table so samples draw from a full prioritized tree.
        fill = random_batch(payload.spec, min(payload.capacity, 65_536), rng)
        for _ in range(max(1, payload.capacity // len(fill["action"]))):
            self.client.insert(fill)
        self.client.flush()

    def rate(self, op: str, seconds: float) -> float:
        payload, client = self.payload, self.client
        if op == "insert":

            def insert_step() -> int:
                client.insert(self.batch)
                return payload.insert_batch

            return _rate(insert_step, seconds, client.flush)

        def sample_step() -> int:
            client.sample_batches(payload.sample_batch, payload.batches_per_request)
            return payload.sample_batch * payload.batches_per_request

        return _rate(sample_step, seconds)

    def close(self) -> None:
        self.client.close()


def _interleaved_rates(feeds: dict[str, _Feed], seconds: float, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Every feed's insert and sample rates, `repeats` times, the feeds taking turns in each
    repeat (so that drift in a shared machine's speed hits them alike)."""
    runs: dict[str, dict[str, list[float]]] = {name: {"insert": [], "sample": []} for name in feeds}
    for _ in range(repeats):
        for op in ("insert", "sample"):
            for name, feed in feeds.items():
                runs[name][op].append(feed.rate(op, seconds))
    return runs


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


def bench_payload(payload: Payload, seconds: float, repeats: int, security: str = "off") -> dict:
    """Every figure of one payload, in one run: the qfleet shard plaintext ("qfleet") and/or with
    TLS + token ("qfleet_tls"), raw gRPC, in-process."""
    credentials = generate_credentials()
    wanted = {"qfleet": security in ("off", "both"), "qfleet_tls": security in ("on", "both"), "raw_grpc": True}
    servers: dict[str, ChildServer] = {}
    feeds: dict[str, _Feed] = {}
    try:
        for name in (n for n, on in wanted.items() if on):
            kind = "raw" if name == "raw_grpc" else "qfleet"
            tls = credentials if name == "qfleet_tls" else None
            servers[name] = ChildServer(kind, payload, credentials=tls)
            feeds[name] = _Feed(servers[name].address, payload, tls.for_clients() if tls else None)
        runs = _interleaved_rates(feeds, seconds, repeats)
    finally:
        for feed in feeds.values():
            feed.close()
        for server in servers.values():
            server.close()
    results = {name: {op: statistics.median(values) for op, values in ops.items()} for name, ops in runs.items()}
    results["in_process"] = _in_process_rates(payload, seconds, repeats)
    run = {
        "payload": payload.name,
        "item_bytes": payload.spec.item_nbytes(),
        "security": security,
        "rates": results,
        "runs": runs,
        "config": payload.__dict__ | {"spec": payload.spec.to_json()},
    }
    if security == "both":  # each TLS figure against the plaintext one just before it
        run["tls_ratio"] = {
            op: statistics.median(t / p for t, p in zip(runs["qfleet_tls"][op], runs["qfleet"][op], strict=True))
            for op in ("insert", "sample")
        }
    return run


def _shard_rates(rates: dict) -> dict[str, float]:
    """The qfleet shard's figures: plaintext when measured, else TLS + token."""
    return rates["qfleet"] if "qfleet" in rates else rates["qfleet_tls"]


def format_results(runs: list[dict]) -> str:
    """A Markdown table of the results with ratios and the issue's targets."""
    lines = [
        "| payload | op | batch | qfleet items/s | qfleet MB/s | raw gRPC items/s | qfleet / raw | in-process items/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        payload = PAYLOADS[run["payload"]]
        for op in ("insert", "sample"):
            rates = run["rates"]
            q, raw, mem = _shard_rates(rates)[op], rates["raw_grpc"][op], rates["in_process"][op]
            batch = (
                f"{payload.insert_batch}/msg"
                if op == "insert"
                else f"{payload.sample_batch} x {payload.batches_per_request}/req"
            )
            lines.append(
                f"| {run['payload']} | {op} | {batch} | {q:,.0f} | {q * run['item_bytes'] / 1e6:,.1f} | "
                f"{raw:,.0f} | {q / raw:.0%} | {mem:,.0f} |"
            )
    if any("tls_ratio" in run for run in runs):
        lines += [
            "",
            "| payload | op | plaintext items/s | TLS + token items/s | TLS / plaintext |",
            "|---|---|---:|---:|---:|",
        ]
        for run in runs:
            if "tls_ratio" in run:
                for op in ("insert", "sample"):
                    plain, tls = run["rates"]["qfleet"][op], run["rates"]["qfleet_tls"][op]
                    lines.append(
                        f"| {run['payload']} | {op} | {plain:,.0f} | {tls:,.0f} | {run['tls_ratio'][op]:.0%} |"
                    )
        lines.append("\n(TLS / plaintext: median over the interleaved pairs of runs)")
    return "\n".join(lines)


def check_targets(runs: list[dict]) -> list[str]:
    """The issue's targets, each as a line that says met or missed, with the figure."""
    lines = []
    for run in runs:
        rates = run["rates"]
        for op in ("insert", "sample"):
            q = _shard_rates(rates)[op]
            if "tls_ratio" in run:
                ratio = run["tls_ratio"][op]
                lines.append(
                    f"{'met' if ratio >= 0.9 else 'MISSED'}: {run['payload']} {op} with TLS + token at {ratio:.0%} "
                    "of plaintext (target >= 90%)"
                )
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


def run_replay_bench(seconds: float, repeats: int, only: str | None, output: str | None, security: str = "both") -> int:
    """Runs the benchmark, prints progress and the table; returns 0."""
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()})"
    print(
        f"qfleet bench replay: {seconds}s x {repeats} repeats per figure, security {security}, on {machine}",
        flush=True,
    )
    runs = []
    for name, payload in PAYLOADS.items():
        if only and name != only:
            continue
        print(f"  measuring {name} ({payload.spec.item_nbytes():,} bytes/item) ...", flush=True)
        runs.append(bench_payload(payload, seconds, repeats, security))
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
                    "security": security,
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
