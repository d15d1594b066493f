"""Connecting to Ray: an existing cluster (`address`), or a local instance on this machine.

A local instance (the embedded default of `qfleet train`) gets a token of its own and listens on
loopback only:
- Token: Ray 2.60's token authentication (RAY_AUTH_MODE=token) with a fresh RAY_AUTH_TOKEN per
  instance, so neither a process without it nor one holding the user's ~/.ray/auth_token can join.
  A token the user set (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) is kept;
  RAY_AUTH_MODE=disabled in the environment is respected, with a warning.
- Loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's single-machine mode, makes Ray take
  127.0.0.1 as the node's address, and its GCS, raylet, object manager and workers' gRPC servers
  bind to it (`ray.init(_node_ip_address="127.0.0.1")` alone is rewritten to the machine's address).

Both are environment variables, so Ray's own processes, started from this one, inherit them.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading

log = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray reads it when `ray` is imported; "0" makes 127.0.0.1 the node's address."""

_warned_disabled = False


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """`ray.init` for qfleet's drivers; a no-op when Ray is already initialised.

    Local instances (`address` None) run without the dashboard, with a per-instance token and on
    loopback (see the module's docstring); `address` joins a cluster with the token the
    environment gives (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).

    `ray.init` installs its own SIGTERM handler (exit at once, killing the local Ray processes);
    a handler the caller installed (`stop_on_signals`) is put back afterwards, so SIGTERM stops a
    qfleet command in the same order as Ctrl-C, which ends with `ray.shutdown`.
    """
    if address is None:
        os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    import ray

    if ray.is_initialized():
        return
    if address is None:
        _use_local_token()
        _use_loopback()
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


def local_ray_token() -> str | None:
    """The token of the local Ray this process started (or will start), when it came from the
    environment (RAY_AUTH_TOKEN with RAY_AUTH_MODE=token); None otherwise."""
    if os.environ.get(AUTH_MODE_ENV, "").lower() != "token":
        return None
    return os.environ.get(AUTH_TOKEN_ENV) or None


def _use_local_token() -> None:
    """Sets RAY_AUTH_MODE=token and a fresh RAY_AUTH_TOKEN for a new local instance, unless the
    user chose: their token is kept, and `disabled` is respected with a warning (once)."""
    global _warned_disabled
    mode = os.environ.get(AUTH_MODE_ENV, "").lower()
    if mode == "disabled":
        if not _warned_disabled:
            log.warning(
                "RAY_AUTH_MODE=disabled: the local Ray accepts any local process (it can run code as "
                "this user and read the run); unset it to give the run a token of its own"
            )
            _warned_disabled = True
        return
    if mode == "token" and (os.environ.get(AUTH_TOKEN_ENV) or os.environ.get(AUTH_TOKEN_PATH_ENV)):
        return  # the user's token
    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[AUTH_TOKEN_ENV] = secrets.token_hex(32)
    os.environ.pop(AUTH_TOKEN_PATH_ENV, None)
    # Ray read its configuration, and its C++ token loader may have cached a token, when `ray`
    # was imported (or at an earlier ray.init in this process): read both again, the config first
    # (as Ray's own `_enable_token_auth` does). Nothing of Ray runs in this process now.
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _use_loopback() -> None:
    """Ray's node address is 127.0.0.1 even when `ray` was imported before SINGLE_MACHINE_ENV was
    set (Ray reads it into `ray_constants` at import)."""
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ.get(SINGLE_MACHINE_ENV) == "0":
        constants.ENABLE_RAY_CLUSTER = False
