"""The driver's watchdog with real processes: a killed driver's children go within seconds, an
orderly end touches nothing, and a process started before the watchdog is never its to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import wait_until
from system.local.watchdog import GRACE_S, SCAN_EVERY_S, _end, _start_time, await_ready

DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from system.local.watchdog import Watchdog
    older = subprocess.Popen(["sleep", "300"])           # started before the watchdog
    watchdog = Watchdog.start()
    child = subprocess.Popen(["sleep", "300"])           # what the run started
    grandchild = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], start_new_session=True)
    while len(subprocess.run(["pgrep", "-P", str(grandchild.pid)], capture_output=True).stdout.split()) < 1:
        time.sleep(0.05)
    grandchild_sleep = int(subprocess.run(["pgrep", "-P", str(grandchild.pid)], capture_output=True).stdout.split()[0])
    print(older.pid, watchdog.pid, child.pid, grandchild.pid, grandchild_sleep, flush=True)
    if sys.argv[1] == "orderly":
        watchdog.close()
        print("closed", flush=True)
    time.sleep(300)
    """
)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_driver(mode: str) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    pids = [int(p) for p in proc.stdout.readline().split()]
    return proc, pids


def end(pids: list[int], proc: subprocess.Popen) -> None:
    for pid in [*pids, proc.pid]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_a_killed_driver_takes_what_it_started_with_it_within_seconds():
    proc, (older, watchdog, child, grandchild, below) = start_driver("killed")
    try:
        time.sleep(3 * SCAN_EVERY_S)  # the watchdog notes the driver's descendants every SCAN_EVERY_S
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ours = (child, grandchild, below, watchdog)
        assert wait_until(lambda: not any(alive(pid) for pid in ours), timeout=10)
        assert alive(older)  # not started by this run: not the watchdog's to end
    finally:
        end([older, child, grandchild, below], proc)


def test_an_orderly_end_leaves_everything_alone():
    proc, (older, watchdog, child, grandchild, below) = start_driver("orderly")
    try:
        assert proc.stdout.readline().strip() == "closed"
        assert not alive(watchdog)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(3 * SCAN_EVERY_S)  # nothing may happen: a watchdog still there would act by now
        assert all(alive(pid) for pid in (older, child, grandchild, below))
    finally:
        end([older, child, grandchild, below], proc)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_but_a_reused_pid_never_is():
    ignore_sigterm = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"
    stubborn = subprocess.Popen([sys.executable, "-c", ignore_sigterm], stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen(["sleep", "300"])
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        started = {pid: _start_time(pid) for pid in (stubborn.pid, other.pid)}
        # `other`'s pid with another start time: what a pid reused since it was noted looks like.
        began = time.monotonic()
        _end({stubborn.pid: started[stubborn.pid], other.pid: started[other.pid] + 1})
        assert stubborn.wait(timeout=5) == -signal.SIGKILL and time.monotonic() - began >= GRACE_S
        assert other.poll() is None
    finally:
        for proc in (stubborn, other):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_a_watchdog_that_never_says_ready_is_given_up_on_in_time():
    silent = subprocess.Popen(["sleep", "300"], stdout=subprocess.PIPE)
    began = time.monotonic()
    with pytest.raises(OSError, match="did not start"):
        await_ready(silent, 0.5)
    assert time.monotonic() - began < 5 and silent.poll() is not None  # killed, not left behind
