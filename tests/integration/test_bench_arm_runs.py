"""How `qfleet bench offline --online` runs one arm, with a stand-in for `qfleet train` (a child
process writing metrics.jsonl as a run does): stopped in order once an evaluation reaches the
threshold, its figures read from its records; a child that ignores SIGTERM is killed with its whole
process group after the stop timeout, and so is one whose stop an interrupt cuts short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import wait_until
from system.bench.children import start_child, stop_child
from system.bench.offline_online import ARMS, Budget, run_arm

STAND_IN = """
import json, os, pathlib, signal, subprocess, sys, time

run_dir, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
run_dir.mkdir(parents=True, exist_ok=True)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(run_dir / "grandchild.pid").write_text(str(grandchild.pid))
if mode == "ignores-sigterm":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def stop(signum, frame):
        (run_dir / "stopped").write_text("in order")
        grandchild.terminate()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
records = [
    {"kind": "progress", "env_steps": 0},
    {"kind": "eval", "phase": "offline", "env_steps": 0, "mean_return": 120.0},
    {"kind": "progress", "env_steps": 2500},
    {"kind": "eval", "phase": "online", "env_steps": 2500, "mean_return": 490.0},
    {"kind": "progress", "env_steps": 2600},
]
with open(run_dir / "metrics.jsonl", "a") as metrics:
    for record in records:
        metrics.write(json.dumps(record) + "\\n")
        metrics.flush()
while True:
    time.sleep(0.1)
"""

BUDGET = Budget(total_env_steps=30_000, eval_every_steps=2500, eval_episodes=2, offline_updates=50, threshold=475)


def stand_in(tmp_path, run_dir, mode: str) -> list[str]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script), str(run_dir), mode]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_an_arm_is_stopped_in_order_at_the_threshold_and_read_from_its_records(tmp_path):
    run_dir = tmp_path / "offline-online-seed0"
    result = run_arm(ARMS[0], 0, BUDGET, "d", "dir", tmp_path, command=stand_in(tmp_path, run_dir, "stops"))
    assert (run_dir / "stopped").read_text() == "in order"  # SIGTERM: the orderly stop
    assert (result.exit_code, result.reached_env_steps, result.offline_result) == (0, 2500, 120.0)
    assert result.best_return == 490.0 and result.env_steps >= 2500
    assert wait_until(lambda: gone(int((run_dir / "grandchild.pid").read_text())), 30)


def test_a_run_that_ignores_sigterm_is_killed_with_its_process_group_after_the_stop_timeout(tmp_path):
    run_dir = tmp_path / "scratch-seed1"
    command = stand_in(tmp_path, run_dir, "ignores-sigterm")
    result = run_arm(ARMS[1], 1, BUDGET, "d", "dir", tmp_path, command=command, stop_timeout_s=3.0)
    assert result.exit_code == -signal.SIGKILL and result.reached_env_steps == 2500
    assert result.offline_result is None  # from scratch: no offline phase
    assert wait_until(lambda: gone(int((run_dir / "grandchild.pid").read_text())), 30)


@pytest.mark.timeout(120)
def test_an_interrupt_while_a_child_stops_kills_its_group_instead_of_leaving_it(tmp_path):
    run_dir = tmp_path / "run"
    process = start_child(stand_in(tmp_path, run_dir, "ignores-sigterm"), stdout=subprocess.DEVNULL)
    assert wait_until(lambda: (run_dir / "metrics.jsonl").exists(), 60)
    grandchild = int((run_dir / "grandchild.pid").read_text())

    def second_ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, second_ctrl_c)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)  # arrives while stop_child waits out its long timeout
        began = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            stop_child(process, timeout_s=600)
        assert time.monotonic() - began < 300
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert process.poll() == -signal.SIGKILL
    assert wait_until(lambda: gone(grandchild), 30)
