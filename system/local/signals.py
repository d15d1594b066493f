"""Graceful stop for qfleet's long-running commands, and children that stop with their parent."""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
from typing import Any

from replay import pdeathsig_setpriv


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
    parent goes (PR_SET_PDEATHSIG), so that a parent killed hard leaves no child running.

    The fallback of `dying_with_parent` only: Python code run between fork and exec in a process
    with other threads (gRPC's, Ray's) can deadlock or abort the child."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:  # not Linux/glibc: the owner's stop is then the only way it ends
        pass


def dying_with_parent(command: list[str]) -> tuple[list[str], dict[str, Any]]:
    """`command` and the extra `subprocess.Popen` keyword arguments that make the child get SIGTERM
    when the thread that starts it ends (PR_SET_PDEATHSIG), so that a parent killed hard leaves no
    child running.

    With a util-linux `setpriv` that takes `--pdeathsig` (2.33 or newer; scripts/setup.sh installs
    it; `replay.pdeathsig_setpriv` probes it once) the command runs under `setpriv --pdeathsig
    SIGTERM --`, which sets the signal and execs it: the child keeps its pid and no Python runs
    after fork. Without one, `terminate_with_parent` as a `preexec_fn`.

    Use: `command, popen = dying_with_parent(command); subprocess.Popen(command, **popen, ...)`.
    """
    setpriv = pdeathsig_setpriv()
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "SIGTERM", "--", *command], {}
    return list(command), {"preexec_fn": terminate_with_parent}
