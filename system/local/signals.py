"""Graceful stop for qfleet's long-running commands, and children that stop with their parent."""

from __future__ import annotations

import ctypes
import logging
import signal
import threading


def stop_on_signals(log: logging.Logger, what_happens: str, force_on_second: bool = False) -> threading.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C), which also logs `what_happens` next.

    With `force_on_second`, a second signal while the orderly stop is under way raises
    KeyboardInterrupt in the main thread: the impatient user's way out.
    """
    stop = threading.Event()

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if stop.is_set() and force_on_second:
            log.warning("second %s: leaving without finishing the orderly stop", name)
            raise KeyboardInterrupt
        log.info("received %s: %s", name, what_happens)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def terminate_with_parent() -> None:
    """In a child before exec (`subprocess.Popen(preexec_fn=...)`): ask Linux for SIGTERM when the
    parent goes (PR_SET_PDEATHSIG), so that a parent killed hard leaves no child running."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:  # not Linux/glibc: the owner's stop is then the only way it ends
        pass
