"""A live run's secrets, kept where only its user can read them, so that other qfleet commands of
that user (`qfleet status RUN_DIR`, `scale`, `discovery`, ...) can reach its password-protected
Redis and its token-protected local Ray.

    $XDG_RUNTIME_DIR/qfleet/          (when XDG_RUNTIME_DIR is set; else ~/.qfleet/run-secrets/)
      RUN-ID.json                     mode 0600 in a 0700 folder; JSON, no pickle:
                                      {"run", "redis_url", "driver_pid", "redis_password", "ray_token"}

The driver of `qfleet train` writes one at start (its id goes into run.json as "secrets_id": an id,
not a secret) and removes it when the run ends; files of drivers that died without removing theirs
are removed by the next save. Nothing secret is ever written into the run folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

import psutil

from replay import redact_url

REDIS_PASSWORD_ENV = "QFLEET_REDIS_PASSWORD"
"""The Redis password `replay.connect_redis` reads when a URL carries none."""

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
"""What a secrets id may look like (it names a file in the private folder: no paths)."""

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class RunSecrets:
    """What a run generated for itself: the embedded Redis's password, the local Ray's token (None
    where the run did not make or use one). `repr` shows neither."""

    redis_password: str | None = field(default=None, repr=False)
    ray_token: str | None = field(default=None, repr=False)

    def environ(self) -> dict[str, str]:
        """The environment variables that hand them to a qfleet process (and to Ray)."""
        env = {}
        if self.redis_password:
            env[REDIS_PASSWORD_ENV] = self.redis_password
        if self.ray_token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.ray_token)
        return env


def secrets_dir() -> pathlib.Path:
    """The private folder: $XDG_RUNTIME_DIR/qfleet, else ~/.qfleet/run-secrets."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return pathlib.Path(runtime) / "qfleet" if runtime else pathlib.Path.home() / ".qfleet" / "run-secrets"


def new_secrets_id(run: str) -> str:
    """A fresh id for a run's secrets file: the run name (made file-safe) and 8 random bytes."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", run).strip(".-")[:100] or "run"
    return f"{safe}-{secrets.token_hex(8)}"


def save_run_secrets(secrets_id: str, run: str, redis_url: str, run_secrets: RunSecrets) -> pathlib.Path:
    """Writes a run's secrets file (0600, a new file: never through a link or over another's).

    Raises:
        ValueError: `secrets_id` is not a bare file name.
        OSError: the folder cannot be made private, or the file exists.
    """
    directory = _private_dir()
    _remove_stale(directory)
    record = {
        "run": run,
        "redis_url": redact_url(redis_url),
        "host": socket.gethostname(),
        "driver_pid": os.getpid(),
        "redis_password": run_secrets.redis_password,
        "ray_token": run_secrets.ray_token,
    }
    path = directory / f"{_checked(secrets_id)}.json"
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(handle, "w") as out:
        json.dump(record, out)
    return path


def load_run_secrets(secrets_id: str) -> RunSecrets | None:
    """The secrets saved under `secrets_id` (run.json's "secrets_id"), or None when there are none
    (the run ended, or it was started by another user or on another machine)."""
    if not _ID.match(secrets_id or ""):
        return None
    record = _read(secrets_dir() / f"{secrets_id}.json")
    return _secrets(record) if record is not None and _live_here(record) else None


def find_run_secrets(redis_url: str) -> RunSecrets | None:
    """The secrets of the live run of this user whose embedded Redis is at `redis_url` (a loopback
    URL; the host may be spelled localhost, 127.0.0.1 or ::1), or None."""
    wanted = _endpoint(redis_url)
    directory = secrets_dir()
    if wanted is None or not directory.is_dir():
        return None
    matches = []
    for path in directory.glob("*.json"):
        record = _read(path)
        if record is not None and _live_here(record) and _endpoint(str(record.get("redis_url", ""))) == wanted:
            matches.append((path.stat().st_mtime, path.name, record))
    # Loopback ports are reused: the newest live run's record is the one listening there now.
    return _secrets(max(matches, key=lambda match: match[:2])[2]) if matches else None


def remove_run_secrets(secrets_id: str) -> None:
    """Removes a run's secrets file (the run ended); nothing if it is gone already."""
    if _ID.match(secrets_id or ""):
        (secrets_dir() / f"{secrets_id}.json").unlink(missing_ok=True)


def use_run_secrets(redis_url: str | None = None, secrets_id: str | None = None) -> RunSecrets | None:
    """Puts a live run's secrets into this process's environment, for a command that reads its
    Redis (and, for the token, joins its Ray): found by `secrets_id` (from run.json) or else by its
    Redis URL. A run's own saved password wins over a QFLEET_REDIS_PASSWORD set for another Redis;
    without a saved one, QFLEET_REDIS_PASSWORD (or the URL's password) applies as usual.

    Call it before `import ray` initialises Ray's configuration (qfleet imports Ray lazily).
    Returns what was found, or None.
    """
    found = load_run_secrets(secrets_id) if secrets_id else None
    if found is None and redis_url:
        found = find_run_secrets(redis_url)
    if found is not None:
        os.environ.update(found.environ())
    return found


def without_redacted_password(url: str) -> str:
    """`url` as shown by `redact_url` (password `***`) turned back into a URL to connect with: the
    placeholder is dropped, so the password comes from QFLEET_REDIS_PASSWORD (or the run's secrets)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if ("password", "***") in pairs:
        kept = urlencode([pair for pair in pairs if pair != ("password", "***")], safe="/")
        url = url.replace(f"?{parts.query}", f"?{kept}" if kept else "", 1)
        parts = urlsplit(url)
    if parts.password == "***":
        netloc = parts.netloc.rsplit("@", 1)[1]
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        url = parts._replace(netloc=netloc).geturl()
    return url


def was_redacted(url: str) -> bool:
    """True when `url` carries `redact_url`'s placeholder instead of its password."""
    return without_redacted_password(url) != url


def _checked(secrets_id: str) -> str:
    if not _ID.match(secrets_id):
        raise ValueError(f"secrets id {secrets_id!r}: letters, digits, _ . - only")
    return secrets_id


def _private_dir() -> pathlib.Path:
    """The folder, made if missing, owned by this user and 0700 (refused otherwise)."""
    directory = secrets_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = directory.lstat()
    if status.st_uid != os.getuid() or not directory.is_dir() or directory.is_symlink():
        raise OSError(f"{directory}: not a folder of this user; qfleet keeps run secrets only in one")
    if status.st_mode & 0o077:
        directory.chmod(0o700)
    return directory


def _read(path: pathlib.Path) -> dict | None:
    try:
        if path.lstat().st_uid != os.getuid():
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _secrets(record: dict) -> RunSecrets:
    def text(key: str) -> str | None:
        value = record.get(key)
        return value if isinstance(value, str) and value else None

    return RunSecrets(redis_password=text("redis_password"), ray_token=text("ray_token"))


def _endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of a Redis URL, loopback spellings made one; None when it names no port."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return None
    if port is None:
        return None
    return ("127.0.0.1" if host in _LOOPBACK else host, port)


def _remove_stale(directory: pathlib.Path) -> None:
    """Removes the files of this host's drivers that are gone (killed before removing theirs)."""
    host = socket.gethostname()
    for path in directory.glob("*.json"):
        record = _read(path)
        if record is None or record.get("host") != host:
            continue
        pid = record.get("driver_pid")
        if isinstance(pid, int) and pid > 0 and not psutil.pid_exists(pid):
            path.unlink(missing_ok=True)


def _live_here(record: dict) -> bool:
    """The record's driver runs on this host (a home folder may be shared by several machines)."""
    pid = record.get("driver_pid")
    return record.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0 and psutil.pid_exists(pid)
