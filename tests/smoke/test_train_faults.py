"""Faults injected into a live `qfleet train` (CartPole, 2 shards, 2 actors, real processes): a
shard killed (SIGKILL), the other shard hung (SIGSTOP) beyond train.silent_after_s, the embedded
redis-server killed. The run rides each out, keeps learning, finishes by itself with exit 0, and its
loss accounting adds up: transitions the shards acknowledged = what they hold + what they lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_train import QFLEET, SETTINGS, alive, overrides

from conftest import wait_until

FAULT_SETTINGS = {
    **SETTINGS,
    "actors.num_actors": 2,
    "train.num_shards": 2,
    "train.eval_every_steps": 0,
    "train.silent_after_s": 8,
    "train.shard_checkpoint_every_s": 15,
    "train.total_env_steps": 30_000,
}


def progress_records(run_dir: Path) -> list[dict]:
    """The progress records written so far (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["kind"] == "progress":
            found.append(record)
    return found


class LiveRun:
    """A `qfleet train` subprocess and its run directory."""

    def __init__(self, run_dir: Path, proc: subprocess.Popen, log: Path):
        self.run_dir, self.proc, self.log = run_dir, proc, log

    def output(self) -> str:
        return self.log.read_text()

    def latest(self) -> dict:
        records = progress_records(self.run_dir)
        return records[-1] if records else {}

    def info(self) -> dict:
        return json.loads((self.run_dir / "run.json").read_text())

    def fault(self, pid: int, sig: signal.Signals, counted: str) -> float:
        """Sends `sig` to `pid`; waits until the run counted the fault (`counted`, a FaultCounts
        key) and moves again (env steps and updates past their values at the fault); returns the
        seconds from the fault to the first record that moved."""
        before = self.latest()
        already = before.get("faults", {}).get(counted, 0)
        sent = time.time()
        os.kill(pid, sig)

        def moved() -> dict | None:
            assert self.proc.poll() is None, self.output()[-4000:]
            for record in progress_records(self.run_dir):
                if (
                    record["time"] > sent
                    and record.get("faults", {}).get(counted, 0) > already
                    and record["env_steps"] > before["env_steps"]
                    and record["updates"] > before["updates"]
                ):
                    return record
            return None

        assert wait_until(lambda: moved() is not None, timeout=120, step=0.5), self.output()[-4000:]
        return round(moved()["time"] - sent, 1)


@pytest.mark.timeout(600)
def test_a_run_rides_out_a_killed_shard_a_hung_shard_and_a_killed_redis(tmp_path):
    run_dir = tmp_path / "run"
    log_path = tmp_path / "train.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [*QFLEET, "train", "configs/cartpole.yaml", "--run-dir", str(run_dir), *overrides(FAULT_SETTINGS)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    run = LiveRun(run_dir, proc, log_path)
    stopped: list[int] = []
    try:
        assert wait_until(lambda: run.latest().get("updates", 0) > 200, timeout=240, step=0.5), run.output()[-4000:]
        shards = run.info()["shards"]
        seconds = {}
        seconds["shard SIGKILL"] = run.fault(shards[0]["pid"], signal.SIGKILL, "shard_restarts")
        stopped.append(shards[1]["pid"])
        seconds["shard SIGSTOP"] = run.fault(shards[1]["pid"], signal.SIGSTOP, "shard_hangs")
        seconds["redis SIGKILL"] = run.fault(run.info()["redis_pid"], signal.SIGKILL, "redis_restarts")
        print("seconds from fault to progress moving again:", seconds)
        code = proc.wait(timeout=300)
    finally:
        for pid in stopped:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    output = run.output()
    assert code == 0, output[-4000:]
    assert "qfleet train: finished at" in output

    # Each fault logged with its cause and counted; the run's counts say so everywhere.
    assert re.search(r"shard 0: died or unreachable, Ray restarts it \(\w+Error", output), output[-4000:]
    assert "shard 1: answered no call for" in output
    assert "redis-server: exited (code -9): restarting it on port" in output
    state = json.loads((run_dir / "state.json").read_text())
    faults = state["faults"]
    assert faults["shard_restarts"] >= 1 and faults["shard_hangs"] >= 1 and faults["redis_restarts"] == 1, faults
    assert re.search(r"\| faults: .*shard restarts \d", output)
    summary = (run_dir / "summary.md").read_text()
    assert "| faults ridden out | shard restarts" in summary

    # Loss accounting adds up, per shard and in total.
    inserted, unacknowledged = map(
        _number, re.search(r"actors stopped: ([\d,]+) transitions inserted, ([\d,]+) lost", output).groups()
    )
    shards_final = [
        tuple(map(_number, m))
        for m in re.findall(
            r"shard stopped with ([\d,]+) items after ([\d,]+) inserts; ([\d,]+) transitions lost", output
        )
    ]
    assert len(shards_final) == 2, output[-4000:]
    present = sum(inserts for _, inserts, _ in shards_final)
    lost = sum(lost for _, _, lost in shards_final)
    print(f"acknowledged {inserted:,} = present {present:,} + lost {lost:,}; never acknowledged {unacknowledged:,}")
    assert lost > 0, "a shard killed between checkpoints loses what it acknowledged since"
    assert inserted == present + lost
    assert state["transitions_lost"] == unacknowledged + lost
    # The restarted shard said what it lost, from its ledger.
    reported = sum(map(_number, re.findall(r"shard \d lost ([\d,]+) transitions: it had acknowledged", output)))
    assert reported == lost

    # It kept learning after the faults.
    records = progress_records(run_dir)
    assert records[-1]["final"] and records[-1]["updates"] > records[0]["updates"] + 1000


def _number(text: str) -> int:
    return int(text.replace(",", ""))
