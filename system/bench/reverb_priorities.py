"""Reverb's `mutate_priorities` at the shape of `qfleet bench priorities`, standalone.

Reverb is no dependency of qfleet (nor of its benchmarks): this script imports nothing of qfleet,
so it runs in any environment that has `dm-reverb` (e.g. a separate venv), and prints one JSON
object on its last line. `qfleet bench priorities` runs it with `--on-request` in the interpreter
that has `reverb` (this one, or `--reverb-python PATH`), one run between each of its own repeats.

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


class ReverbBench:
    """A Reverb server in its own process with a full table, and a client with keys to update."""

    def __init__(self, capacity: int, keys_per_call: int, chunks: int = 1024):
        import numpy as np
        import reverb

        self.version = getattr(reverb, "__version__", "0.14")
        self.capacity, self.keys_per_call = capacity, keys_per_call
        self._child = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--capacity", str(capacity)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            port = self._child.stdout.readline().strip()
            if not port.isdigit():
                raise RuntimeError("the Reverb server did not start")
            self._client = reverb.Client(f"localhost:{port}")
            started = time.perf_counter()
            with self._client.trajectory_writer(num_keep_alive_refs=1) as writer:
                for i in range(capacity):
                    writer.append({"obs": np.full(4, i, np.float32)})
                    writer.create_item(TABLE, 1.0, {"obs": writer.history["obs"][-1:]})
                    if i % 1000 == 999:
                        writer.flush()
            self.fill_seconds = time.perf_counter() - started
            samples = self._client.sample(TABLE, num_samples=keys_per_call * chunks)
            keys = np.array([sample[0].info.key for sample in samples], dtype=np.uint64)
            rng = np.random.default_rng(0)
            self._updates = [
                {int(k): float(p) for k, p in zip(chunk, rng.uniform(0.1, 10.0, keys_per_call), strict=True)}
                for chunk in keys.reshape(chunks, keys_per_call)
            ]
        except BaseException:
            self.close()
            raise

    def calls_per_s(self, seconds: float) -> float:
        """`mutate_priorities` calls per second over `seconds`."""
        calls, begun = 0, time.perf_counter()
        while time.perf_counter() - begun < seconds:
            self._client.mutate_priorities(TABLE, updates=self._updates[calls % len(self._updates)])
            calls += 1
        return calls / (time.perf_counter() - begun)

    def summary(self, rates: list[float]) -> dict:
        calls_per_s = statistics.median(rates)
        return {
            "system": "reverb",
            "version": self.version,
            "capacity": self.capacity,
            "fill_seconds": round(self.fill_seconds, 2),
            "keys_per_call": self.keys_per_call,
            "calls_per_s": calls_per_s,
            "keys_per_s": calls_per_s * self.keys_per_call,
            "runs_calls_per_s": rates,
        }

    def close(self) -> None:
        self._child.stdin.close()
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()


def measure_reverb(capacity: int, keys_per_call: int, seconds: float, repeats: int, chunks: int = 1024) -> dict:
    """Calls/s and keys/s of `mutate_priorities` against a full table; returns a JSON-ready dict."""
    bench = ReverbBench(capacity, keys_per_call, chunks)
    try:
        return bench.summary([bench.calls_per_s(seconds) for _ in range(repeats)])
    finally:
        bench.close()


def measure_on_request(capacity: int, keys_per_call: int, chunks: int = 1024) -> None:
    """`--on-request`: sets up, prints {"ready": ...}, then answers each stdin line SECONDS with
    {"calls_per_s": ...}, so a caller interleaves these runs with its own; ends at EOF."""
    bench = ReverbBench(capacity, keys_per_call, chunks)
    try:
        print(json.dumps({"ready": True, "version": bench.version, "fill_seconds": bench.fill_seconds}), flush=True)
        for line in sys.stdin:
            print(json.dumps({"calls_per_s": bench.calls_per_s(float(line))}), flush=True)
    finally:
        bench.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--keys-per-call", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=1024, help="distinct key chunks cycled (as qfleet's side)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help="internal: run the server")
    parser.add_argument("--on-request", action="store_true", help="measure once per stdin line (SECONDS)")
    args = parser.parse_args()
    if args.serve:
        serve(args.capacity)
        sys.exit(0)
    if args.on_request:
        measure_on_request(args.capacity, args.keys_per_call, args.chunks)
        sys.exit(0)
    print(json.dumps(measure_reverb(args.capacity, args.keys_per_call, args.seconds, args.repeats, args.chunks)))
