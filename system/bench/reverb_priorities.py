"""Reverb's `mutate_priorities` at the shape of `qfleet bench priorities`, standalone.

Reverb is no dependency of qfleet (nor of its benchmarks): this script imports nothing of qfleet,
so it runs in any environment that has `dm-reverb` (e.g. a separate venv), and prints one JSON
object on its last line. `qfleet bench priorities` runs it in-process when `reverb` imports, or
with `--reverb-python PATH` in that interpreter.

    /path/to/venv/bin/python system/bench/reverb_priorities.py --capacity 100000 --seconds 3 --repeats 3

Measured: one Reverb server in its own process on loopback (as the qfleet shard is), holding a
full prioritized table (`capacity` items of 4 float32, as CartPole's observation), keys taken from
samples of it, and `mutate_priorities` called with `keys_per_call` keys (random priorities) for
`seconds`, `repeats` times: calls/s and keys/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

TABLE = "priorities"


def serve(capacity: int) -> None:
    """Child-process entry: a Reverb server with one prioritized table; prints its port, runs until
    stdin closes."""
    import reverb

    server = reverb.Server(
        tables=[
            reverb.Table(
                name=TABLE,
                sampler=reverb.selectors.Prioritized(0.6),
                remover=reverb.selectors.Fifo(),
                max_size=capacity,
                rate_limiter=reverb.rate_limiters.MinSize(1),
            )
        ],
        port=None,
    )
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


def measure_reverb(capacity: int, keys_per_call: int, seconds: float, repeats: int) -> dict:
    """Calls/s and keys/s of `mutate_priorities` against a full table; returns a JSON-ready dict."""
    import numpy as np
    import reverb

    table = TABLE
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--capacity", str(capacity)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = child.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError("the Reverb server did not start")
        client = reverb.Client(f"localhost:{port}")
        started = time.perf_counter()
        with client.trajectory_writer(num_keep_alive_refs=1) as writer:
            for i in range(capacity):
                writer.append({"obs": np.full(4, i, np.float32)})
                writer.create_item(table, 1.0, {"obs": writer.history["obs"][-1:]})
                if i % 1000 == 999:
                    writer.flush()
        fill_s = time.perf_counter() - started
        pool = keys_per_call * 64
        keys = np.array([sample[0].info.key for sample in client.sample(table, num_samples=pool)], dtype=np.uint64)
        rng = np.random.default_rng(0)
        updates = [
            {int(k): float(p) for k, p in zip(chunk, rng.uniform(0.1, 10.0, keys_per_call), strict=True)}
            for chunk in keys.reshape(64, keys_per_call)
        ]
        rates = []
        for _ in range(repeats):
            calls, begun = 0, time.perf_counter()
            while time.perf_counter() - begun < seconds:
                client.mutate_priorities(table, updates=updates[calls % 64])
                calls += 1
            rates.append(calls / (time.perf_counter() - begun))
        calls_per_s = statistics.median(rates)
        return {
            "system": "reverb",
            "version": getattr(reverb, "__version__", "0.14"),
            "capacity": capacity,
            "fill_seconds": round(fill_s, 2),
            "keys_per_call": keys_per_call,
            "calls_per_s": calls_per_s,
            "keys_per_s": calls_per_s * keys_per_call,
            "runs_calls_per_s": rates,
        }
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--keys-per-call", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="internal: run the server")
    args = parser.parse_args()
    if args.serve:
        serve(args.capacity)
        sys.exit(0)
    print(json.dumps(measure_reverb(args.capacity, args.keys_per_call, args.seconds, args.repeats)))
