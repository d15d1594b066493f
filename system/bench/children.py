"""The benchmarks' child processes (`qfleet train` runs, peers): started so that they end with the
bench however it ends, and stopped in order.

A child gets a session of its own (its Redis, Ray and hosts form one process group that a stop can
kill whole) and PR_SET_PDEATHSIG (a bench killed hard sends it SIGTERM). `interrupt_on_sigterm`
turns SIGTERM to the bench into KeyboardInterrupt, so the bench's own cleanup runs and stops them.
"""

from __future__ import annotations

import os
import signal
import subprocess


def start_child(command: list[str], **popen) -> subprocess.Popen:
    """`subprocess.Popen(command, **popen)` in a session of its own that ends with this process."""
    from system.local import dying_with_parent

    command, dying = dying_with_parent(command)
    return subprocess.Popen(command, start_new_session=True, **dying, **popen)


def stop_child(process: subprocess.Popen, timeout_s: float) -> int:
    """SIGTERM (the orderly stop), then SIGKILL to its whole process group after `timeout_s`;
    its exit code. Whatever of its group outlives the leader (a server it started) is killed too,
    and so is the group when interrupted while it waits (a second Ctrl-C): a child is never left
    running."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(process)
            return process.wait()
    finally:
        kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the child's process group (its session: `start_child`), and reaps it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # gone already
        pass
    process.wait()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """SIGTERM to this process raises KeyboardInterrupt (its `finally` blocks stop the children)."""
    signal.signal(signal.SIGTERM, _interrupt)
