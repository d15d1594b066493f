"""Graceful stop for qfleet's long-running commands."""

from __future__ import annotations

import logging
import signal
import threading


def stop_on_signals(log: logging.Logger, what_happens: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C), which also logs `what_happens` next."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s: %s", signal.Signals(signum).name, what_happens)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
