"""Connecting to Ray: an existing cluster (`address`), or a local instance on this machine.

A local instance (the embedded default of `qfleet train`) gets a token of its own and listens on
loopback only:
- Token: Ray 2.60's token authentication (RAY_AUTH_MODE=token) with a fresh RAY_AUTH_TOKEN per
  instance, so neither a process without it nor one holding the user's ~/.ray/auth_token can join.
  A token the user set (RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) is kept;
  an opt-out of token auth in the environment is overridden, with a warning.
- Loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's single-machine mode, makes Ray take
  127.0.0.1 as the node's address, and its GCS, raylet, object manager and workers' gRPC servers
  bind to it (`ray.init(_node_ip_address="127.0.0.1")` alone is rewritten to the machine's address).

- Private files: Ray makes its temp and session folders world-writable (0777), so its sockets,
  logs and spilled objects sit in `/tmp/qfleet-UID/ray`, below a 0700 folder of this user that
  other users cannot enter (the default `/tmp/ray` is shared by every user of the machine).

The token and loopback settings are environment variables, so Ray's own processes, started from
this one, inherit them. After `ray.init` the node's address is checked: a local instance that is
not on loopback (a Ray upgrade that changed its single-machine switch) is stopped with an error.
"""

from __future__ import annotations

import logging
import os
import pathlib
import secrets
import signal
import sys
import tempfile
import threading

from system.errors import RayLaunchError

log = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray reads it when `ray` is imported; "0" makes 127.0.0.1 the node's address."""

_warned_disabled = False
_generated_token: str | None = None
"""The token this process made for its previous local instance (not the user's: a new one is made)."""

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def init_ray(address: str | None = None, num_cpus: int | None = None, worker_niceness: int | None = None) -> None:
    """`ray.init` for qfleet's drivers; a no-op when Ray is already initialised.

    `worker_niceness` (local instances only; None: Ray's default, 15) is the niceness Ray starts
    its worker processes with: `qfleet train` passes `ray.worker_niceness` (0), so its learner and
    actors compete for CPU on equal terms with ordinary processes instead of behind them.

    Local instances (`address` None) run without the dashboard, with a per-instance token and on
    loopback (see the module's docstring); `address` joins a cluster with the token the
    environment gives (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).

    `ray.init` installs its own SIGTERM handler (exit at once, killing the local Ray processes);
    a handler the caller installed (`stop_on_signals`) is put back afterwards, so SIGTERM stops a
    qfleet command in the same order as Ctrl-C, which ends with `ray.shutdown`.
    """
    on_loopback = address is None or _host(address) in _LOOPBACK_HOSTS
    if on_loopback:  # a local instance, or a join of one (its address is 127.0.0.1 as well)
        os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    import ray

    if ray.is_initialized():
        return
    if address is None:
        _use_local_token()
    if on_loopback:
        _use_loopback()
    in_main_thread = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        if address is None:
            # "local": always a new instance of our own, never one that happens to run on this
            # machine already (another run's, a benchmark's), which a bare ray.init() would join.
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                _temp_dir=str(private_temp_dir()),
                **({} if worker_niceness is None else {"_system_config": {"worker_niceness": worker_niceness}}),
            )
            gcs = ray.get_runtime_context().gcs_address
            if _host(gcs) not in _LOOPBACK_HOSTS:
                ray.shutdown()
                raise RayLaunchError(
                    f"the local Ray listens on {gcs}, not on loopback: this Ray version ignores "
                    f"{SINGLE_MACHINE_ENV}=0 (qfleet was tested with Ray 2.60)",
                    gcs,
                )
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
    user's own token is set (kept). An opt-out of token auth inherited from the environment is
    overridden, with a warning (once): qfleet never starts a Ray that any local process may join."""
    global _warned_disabled, _generated_token
    mode = os.environ.get(AUTH_MODE_ENV, "").lower()
    if mode not in ("", "token"):
        if not _warned_disabled:
            log.warning(
                "%s=%s in the environment is overridden: the local Ray gets a token of its own "
                "(without one, any local process could join it and run code as this user)",
                AUTH_MODE_ENV,
                mode,
            )
            _warned_disabled = True
        os.environ.pop(AUTH_TOKEN_ENV, None)
        os.environ.pop(AUTH_TOKEN_PATH_ENV, None)
    token = os.environ.get(AUTH_TOKEN_ENV)
    users = (token and token != _generated_token) or os.environ.get(AUTH_TOKEN_PATH_ENV)
    if mode == "token" and users:
        return  # the user's token
    _generated_token = secrets.token_hex(32)
    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[AUTH_TOKEN_ENV] = _generated_token
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
        if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
            raise RayLaunchError(
                "this Ray version has no ray_constants.ENABLE_RAY_CLUSTER: qfleet cannot keep the local "
                "Ray on loopback (tested with Ray 2.60)"
            )
        constants.ENABLE_RAY_CLUSTER = False


def private_temp_dir() -> pathlib.Path:
    """Ray's temp folder for local instances: `ray/` inside a 0700 folder of this user in the
    system's temp folder (`/tmp/qfleet-UID`); short, as Ray's socket paths must stay under 108
    bytes.

    Raises:
        RayLaunchError: the folder exists but is not a private folder of this user.
    """
    base = pathlib.Path(tempfile.gettempdir()) / f"qfleet-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    status = base.lstat()
    if base.is_symlink() or not base.is_dir() or status.st_uid != os.getuid():
        raise RayLaunchError(f"{base} is not a folder of this user: remove it, or set TMPDIR to a private folder")
    if status.st_mode & 0o077:
        base.chmod(0o700)
    return base / "ray"


def _host(address: str) -> str:
    """The host part of HOST:PORT (or ray://HOST:PORT)."""
    address = address.split("://", 1)[-1]
    return address.rsplit(":", 1)[0] if ":" in address else address
