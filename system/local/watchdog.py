"""A driver's watchdog: when a `qfleet train` driver dies without stopping (SIGKILL, OOM), the
processes it started go with it within seconds, Ray's agents included.

Ray's own processes outlive a killed driver: gcs_server and raylet end by themselves, but the
dashboard and runtime-env agents linger for minutes. The watchdog is a small child process in its
own session that notes, every `SCAN_EVERY_S`, the driver's descendants that were not there when
it began (pid and start time, so a reused pid is never taken for one of them); the driver waits
for its "ready" before it starts anything. Its standard input is a
pipe from the driver: end of file without a "done" line means the driver died, and then it
terminates what it noted (and their children), by pid, SIGKILL after `GRACE_S`. An orderly stop
writes "done" and nothing is touched.

    watchdog = Watchdog.start()   # in the driver, before Redis and Ray start
    ...
    watchdog.close()              # after everything stopped in order
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SCAN_EVERY_S = 0.5
GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL of what is left."""


class Watchdog:
    """The driver's end: starts the watchdog process and tells it about an orderly end."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    @classmethod
    def start(cls) -> Watchdog:
        """Starts the watchdog and waits until it has noted what ran before it (not its to end).

        Raises:
            OSError: it could not start, or said nothing.
        """
        proc = subprocess.Popen(
            [sys.executable, "-m", "system.local.watchdog", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the driver must not end it first
            cwd=Path(__file__).resolve().parents[2],
        )
        if proc.stdout.readline().strip() != b"ready":
            proc.kill()
            proc.wait()
            raise OSError("the driver's watchdog did not start")
        proc.stdout.close()
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        """The driver stopped everything itself: the watchdog leaves at once."""
        try:
            self.proc.stdin.write(b"done\n")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every live process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[19]))
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _note(driver: int, before: set[tuple[int, int]], noted: dict[int, int]) -> None:
    table = _processes()
    for pid in _descendants({driver}, table):
        started = table[pid][1]
        if (pid, started) not in before and pid != os.getpid():
            noted[pid] = started


def _still_ours(noted: dict[int, int]) -> set[int]:
    """The noted processes still alive (same start time), and their children."""
    table = _processes()
    alive = {pid for pid, started in noted.items() if table.get(pid, (0, -1))[1] == started}
    return alive | _descendants(alive, table)


def _signal(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _end(noted: dict[int, int]) -> None:
    left = _still_ours(noted)
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if pid in _processes()}
    _signal(left, signal.SIGKILL)


def main(argv: list[str]) -> int:
    driver = int(argv[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    table = _processes()
    before = {(pid, table[pid][1]) for pid in _descendants({driver}, table)}
    os.write(sys.stdout.fileno(), b"ready\n")
    os.close(sys.stdout.fileno())
    noted: dict[int, int] = {}
    received = b""
    while True:
        _note(driver, before, noted)
        ready, _, _ = select.select([sys.stdin.buffer], [], [], SCAN_EVERY_S)
        if not ready:
            continue
        chunk = os.read(sys.stdin.fileno(), 64)
        if chunk:
            received += chunk
            continue
        if b"done" not in received:  # end of file without "done": the driver died
            _end(noted)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
