"""A driver's watchdog: when a `qfleet train` driver dies without stopping (SIGKILL, OOM), the
processes it started go with it within seconds, Ray's agents included.

Ray's own processes outlive a killed driver: gcs_server and raylet end by themselves, but the
dashboard and runtime-env agents linger for minutes. The watchdog is a small child process in its
own session that notes, every `SCAN_EVERY_S`, the driver's descendants that were not there when
it began (pid and start time, so a reused pid is never taken for one of them); the driver waits
for its "ready" before it starts anything. Its standard input is a
pipe from the driver: end of file without a "done" line means the driver died, and then it
terminates what it noted (and their children), SIGKILL after `GRACE_S`, through pidfds opened
once their start time was checked (a pid reused during the grace is never signalled). An orderly
stop writes "done" and nothing is touched.

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
READY_TIMEOUT_S = 30.0
"""Longest wait for the watchdog's "ready" (it scans /proc once before)."""


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
        # This file as a script, isolated (-I: no script folder, user site or PYTHON* variables on
        # its path): it needs the standard library only, and the driver waits for its "ready"
        # before Redis starts, so it must not load qfleet's packages (grpc, numpy: seconds).
        proc = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve()), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the driver must not end it first
        )
        await_ready(proc, READY_TIMEOUT_S)
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


def await_ready(proc: subprocess.Popen, timeout_s: float) -> None:
    """Waits up to `timeout_s` for the line "ready" on `proc`'s stdout (then closed).

    Raises:
        OSError: another line, end of file, or nothing in time (`proc` is killed).
    """
    answered, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if answered else b""
    proc.stdout.close()
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        why = "said nothing" if not answered else f"said {line[:80]!r}"
        raise OSError(f"the driver's watchdog did not start ({why} within {timeout_s:.0f} s)")


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


def _still_ours(noted: dict[int, int]) -> dict[int, int]:
    """The noted processes still alive (same start time), and their children: pid -> start time."""
    table = _processes()
    alive = {pid for pid, started in noted.items() if table.get(pid, (0, -1))[1] == started}
    return {pid: table[pid][1] for pid in alive | _descendants(alive, table) if pid in table}


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (None: no such process)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class _Process:
    """One process to end, held by a pidfd where the kernel has them (a pid reused after it exits
    is then never signalled), else by pid and start time, rechecked before each signal."""

    def __init__(self, pid: int, started: int):
        self.pid, self.started, self.fd = pid, started, None
        try:
            self.fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfds (old kernel), or it is gone: checked below
            pass
        self.gone = _start_time(pid) != started  # checked after opening: the fd is that process

    def signal(self, signum: int) -> None:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)
            elif _start_time(self.pid) == self.started:
                os.kill(self.pid, signum)
            else:
                self.gone = True
        except OSError:  # it exited
            self.gone = True

    def exited(self) -> bool:
        if not self.gone:
            if self.fd is not None:
                self.gone = bool(select.select([self.fd], [], [], 0)[0])  # readable once it exited
            else:
                self.gone = _start_time(self.pid) != self.started
        return self.gone

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _end(noted: dict[int, int]) -> None:
    processes = [_Process(pid, started) for pid, started in _still_ours(noted).items()]
    try:
        left = [process for process in processes if not process.gone]
        for process in left:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [process for process in left if not process.exited()]
        for process in left:
            process.signal(signal.SIGKILL)
    finally:
        for process in processes:
            process.close()


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
