"""Connecting to Ray: an existing cluster (`address`), or a local instance on this machine."""

from __future__ import annotations

import logging
import signal
import threading


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """`ray.init` for qfleet's drivers; a no-op when Ray is already initialised.

    Local instances run without the dashboard and keep Ray's token authentication on (Ray makes
    the token at start and qfleet's Ray processes read it; only the environment can turn it off).

    `ray.init` installs its own SIGTERM handler (exit at once, killing the local Ray processes);
    a handler the caller installed (`stop_on_signals`) is put back afterwards, so SIGTERM stops a
    qfleet command in the same order as Ctrl-C, which ends with `ray.shutdown`.
    """
    import ray

    if ray.is_initialized():
        return
    in_main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        if address is None:
            # "local": always a new instance of our own, never one that happens to run on this
            # machine already (another run's, a benchmark's), which a bare ray.init() would join.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    finally:
        if callable(on_sigterm):  # not SIG_DFL or SIG_IGN: those keep Ray's handler
            signal.signal(signal.SIGTERM, on_sigterm)
