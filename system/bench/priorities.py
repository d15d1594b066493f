"""`qfleet bench priorities`: priority updates to one shard, 256 keys per call, three ways.

One qfleet shard in its own process on loopback holds a full prioritized table (CartPole-size
items); keys come from samples of it. Measured, interleaved in each repeat so that a shared
machine's drift hits them alike:

- unary: `ReplayClient.update_priorities`, one `UpdatePriorities` call per update, each waited for
  (what a learner did before the stream);
- stream: `send_priorities` on the `UpdatePrioritiesStream` without coalescing: every update
  sent, at most `max_in_flight` unanswered (updates queued while one is on the wire ride together);
- coalesced: `send_priorities` with the default coalescing (latest priority per key, sent at
  16,384 keys or after 20 ms).

Calls/s counts the caller's calls until every update was answered (stream modes flush at the end);
keys/s = calls/s x keys per call (keys sent); applied keys/s counts what the shard applied (from
the counts: coalesced and stale keys are sent but not applied). Both sides cycle the same number of
key chunks (`KEY_CHUNKS`). Beside them Reverb's `mutate_priorities` at the same shape (its
server in its own process too, a full table of the same size), one run in each repeat, when
`reverb` imports here or in `--reverb-python`'s interpreter (system/bench/reverb_priorities.py);
else "Reverb not installed: skipped". Reverb is no dependency of qfleet.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from replay import PriorityStreamConfig, ReplayClient, ReplayCredentials, ReplayServer, generate_credentials
from system.bench.peer import PeerProcess, peer_python
from system.bench.replay import bench_spec, random_batch

KEYS_PER_CALL = 256
KEY_CHUNKS = 1024
MODES = ("unary", "stream", "coalesced")
REVERB_SCRIPT = pathlib.Path(__file__).with_name("reverb_priorities.py")
SPEC = bench_spec((4,), "float32")


def _serve_forever(capacity: int) -> None:
    """Child-process entry: a prioritized shard (TLS + token when QFLEET_REPLAY_* are set); prints
    its port, runs until stdin closes."""
    server = ReplayServer(
        SPEC, capacity=capacity, selector="prioritized", seed=0, credentials=ReplayCredentials.from_env()
    ).start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop(grace=0, checkpoint=False)


class _Shard:
    """The benchmark shard in its own process."""

    def __init__(self, capacity: int, credentials: ReplayCredentials | None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("QFLEET_REPLAY_")}
        if credentials is not None:
            env |= credentials.environ()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "system.bench.priorities", "--serve", str(capacity)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError("the benchmark shard failed to start")
        self.address = f"127.0.0.1:{line}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _fill(client: ReplayClient, capacity: int) -> list[np.ndarray]:
    """Fills the table; returns `KEY_CHUNKS` chunks of sampled keys, `KEYS_PER_CALL` each (as a
    learner's: a key repeats about as often as in its samples, not every 64 calls)."""
    rng = np.random.default_rng(1)
    chunk = random_batch(SPEC, min(capacity, 65_536), rng)
    for start in range(0, capacity, len(chunk["action"])):
        client.insert({name: column[: capacity - start] for name, column in chunk.items()})
    client.flush()
    return [sample.keys for sample in client.sample_batches(KEYS_PER_CALL, KEY_CHUNKS)]


def _calls_per_s(
    send, keys: list[np.ndarray], priorities: list[np.ndarray], seconds: float, finish, applied
) -> tuple[float, float]:
    """(calls/s, applied keys/s) of one run: `applied()` is the shard's count of applied keys so
    far (stale or coalesced keys are not applied), read before and after the run."""
    before = applied()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        send(keys[calls % KEY_CHUNKS], priorities[calls % KEY_CHUNKS])
        calls += 1
    finish()
    elapsed = time.perf_counter() - started
    return calls / elapsed, (applied() - before) / elapsed


def measure_qfleet(
    capacity: int, seconds: float, repeats: int, security: str, reverb: ReverbPeer | None = None
) -> dict:
    """Calls/s of each mode (median of `repeats`), keys/s, and what the shard made of the updates;
    with `reverb`, one Reverb run after each repeat's qfleet runs."""
    credentials = generate_credentials() if security == "on" else None
    shard = _Shard(capacity, credentials)
    clients = {
        "unary": ReplayClient(shard.address, credentials=credentials),
        "stream": ReplayClient(
            shard.address, credentials=credentials, priorities=PriorityStreamConfig(coalesce_keys=0)
        ),
        "coalesced": ReplayClient(shard.address, credentials=credentials, priorities=PriorityStreamConfig()),
    }
    try:
        keys = _fill(clients["unary"], capacity)
        rng = np.random.default_rng(2)
        priorities = [rng.uniform(0.1, 10.0, KEYS_PER_CALL) for _ in keys]
        runs: dict[str, list[float]] = {mode: [] for mode in MODES}
        applied_runs: dict[str, list[float]] = {mode: [] for mode in MODES}
        unary_applied = [0]

        def update(keys, priorities):
            unary_applied[0] += clients["unary"].update_priorities(keys, priorities).applied

        for _ in range(repeats):
            for mode in MODES:
                client = clients[mode]
                if mode == "unary":
                    rate, applied = _calls_per_s(
                        update, keys, priorities, seconds, lambda: None, lambda: unary_applied[0]
                    )
                else:
                    rate, applied = _calls_per_s(
                        client.send_priorities,
                        keys,
                        priorities,
                        seconds,
                        client.flush_priorities,
                        lambda client=client: client.priority_counts().applied,
                    )
                runs[mode].append(rate)
                applied_runs[mode].append(applied)
            if reverb is not None:
                reverb.measure(seconds)
        results = {}
        for mode in MODES:
            calls = statistics.median(runs[mode])
            results[mode] = {
                "calls_per_s": calls,
                "keys_per_s": calls * KEYS_PER_CALL,
                "applied_keys_per_s": statistics.median(applied_runs[mode]),
                "runs_calls_per_s": runs[mode],
                "runs_applied_keys_per_s": applied_runs[mode],
            }
            if mode != "unary":
                counts = clients[mode].priority_counts()
                results[mode]["counts"] = {
                    "applied": counts.applied,
                    "dropped_stale": counts.dropped_stale,
                    "lost": counts.lost,
                    "rejected": counts.rejected,
                    "coalesced": counts.coalesced,
                }
        return results
    finally:
        for client in clients.values():
            client.close()
        shard.close()


class ReverbPeer(PeerProcess):
    """Reverb's side, in `python` (an interpreter that has `reverb`): system/bench/reverb_priorities.py
    with --on-request, asked for one run per repeat so that its runs interleave with qfleet's
    (stderr shown: TensorFlow's and Reverb's logs, and any failure of theirs)."""

    def __init__(self, python: str, capacity: int):
        self.python = python
        keys = ("--keys-per-call", str(KEYS_PER_CALL), "--chunks", str(KEY_CHUNKS))  # qfleet's keys, cycled
        super().__init__(
            "the Reverb side", [python, str(REVERB_SCRIPT), "--on-request", "--capacity", str(capacity), *keys]
        )
        self.rates: list[float] = []

    def measure(self, seconds: float) -> dict:
        answer = super().measure(seconds)
        self.rates.append(answer["calls_per_s"])
        return answer

    def summary(self) -> dict:
        calls = statistics.median(self.rates)
        return {
            "system": "reverb",
            "version": self.ready["version"],
            "python": self.python,
            "fill_seconds": round(self.ready["fill_seconds"], 2),
            "calls_per_s": calls,
            "keys_per_s": calls * KEYS_PER_CALL,
            "runs_calls_per_s": self.rates,
        }


def reverb_python(given: str | None) -> tuple[str | None, str]:
    """The interpreter for Reverb's side (`given`, else this one if `reverb` imports), or why none."""
    missing = "Reverb not installed: skipped (pip install dm-reverb in another venv and pass --reverb-python)"
    return peer_python(given, "reverb", missing)  # optional: never a dependency of qfleet


def format_results(qfleet: dict, reverb: dict | None, reverb_note: str) -> str:
    lines = [
        f"| mode ({KEYS_PER_CALL} keys per call) | calls/s | keys/s sent | keys/s applied | calls/s vs Reverb "
        "| applied keys/s vs Reverb |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        row = qfleet[mode]
        versus = ("", "")
        if reverb is not None:
            versus = (
                f"{row['calls_per_s'] / reverb['calls_per_s']:.2f}x",
                f"{row['applied_keys_per_s'] / reverb['keys_per_s']:.2f}x",
            )
        lines.append(
            f"| qfleet {mode} | {row['calls_per_s']:,.0f} | {row['keys_per_s']:,.0f} | "
            f"{row['applied_keys_per_s']:,.0f} | {versus[0]} | {versus[1]} |"
        )
    if reverb is not None:
        lines.append(
            f"| Reverb mutate_priorities | {reverb['calls_per_s']:,.0f} | {reverb['keys_per_s']:,.0f} | "
            f"{reverb['keys_per_s']:,.0f} | 1x | 1x |"  # it applies every key it is sent
        )
    lines.append(f"\n{reverb_note}")
    return "\n".join(lines)


def check_targets(qfleet: dict, reverb: dict | None) -> list[str]:
    """The issue's targets: stream calls/s >= Reverb's; coalesced applied keys/s >= 10x Reverb's."""
    if reverb is None:
        return ["targets not checked: no Reverb figure"]
    stream = qfleet["stream"]["calls_per_s"] / reverb["calls_per_s"]
    coalesced = qfleet["coalesced"]["applied_keys_per_s"] / reverb["keys_per_s"]
    return [
        f"stream calls/s vs Reverb's: {stream:.2f}x (target >= 1x): {'met' if stream >= 1 else 'NOT met'}",
        f"coalesced applied keys/s vs Reverb's: {coalesced:.1f}x (target >= 10x): {'met' if coalesced >= 10 else 'NOT met'}",
    ]


def run_priorities_bench(
    seconds: float,
    repeats: int,
    capacity: int,
    security: str,
    reverb_interpreter: str | None,
    output: str | None,
) -> int:
    """Runs the benchmark, prints the table and the targets; returns 0."""
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()})"
    print(
        f"qfleet bench priorities: {seconds}s x {repeats} repeats per figure, capacity {capacity:,}, "
        f"security {security}, on {machine}",
        flush=True,
    )
    python, reverb_note = reverb_python(reverb_interpreter)
    peer = None
    if python is not None:
        print(f"  filling Reverb's table ({python}) ...", flush=True)
        try:
            peer = ReverbPeer(python, capacity)
            reverb_note = f"Reverb {peer.ready['version']} in {python}, runs interleaved with qfleet's"
        except (OSError, RuntimeError) as exc:
            reverb_note = f"Reverb side failed to start: {exc}"
    print("  measuring (qfleet's modes, then Reverb, in each repeat) ...", flush=True)
    try:
        qfleet = measure_qfleet(capacity, seconds, repeats, security, peer)
        reverb = peer.summary() if peer is not None else None
    finally:
        if peer is not None:
            peer.close()
    print()
    print(format_results(qfleet, reverb, reverb_note))
    print()
    for line in check_targets(qfleet, reverb):
        print(line)
    if output:
        with open(output, "w") as handle:
            json.dump(
                {
                    "machine": machine,
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "seconds": seconds,
                    "repeats": repeats,
                    "capacity": capacity,
                    "keys_per_call": KEYS_PER_CALL,
                    "security": security,
                    "qfleet": qfleet,
                    "reverb": reverb,
                    "reverb_note": reverb_note,
                },
                handle,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", type=int, metavar="CAPACITY", help="internal: run the benchmark shard")
    args = parser.parse_args()
    if args.serve:
        _serve_forever(args.serve)
    else:
        sys.exit(run_priorities_bench(3.0, 3, 100_000, "off", None, None))
