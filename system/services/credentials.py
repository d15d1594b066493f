"""The replay credentials of a standalone service, and `qfleet replay credentials`.

`qfleet replay serve`, `qfleet learner run` and `qfleet actors run` take the run's replay token and
TLS certificate from the environment (`QFLEET_REPLAY_TOKEN`, `QFLEET_REPLAY_TLS_CERT`, and
`QFLEET_REPLAY_TLS_KEY` for a shard), never from argv. Without them they refuse to start, unless
`--insecure` asks for plaintext (a shard then binds loopback only). `qfleet replay credentials
--out DIR` makes a set: files only the user can read, and the `export` lines that name them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
import shlex

from replay import CERT_ENV, KEY_ENV, TOKEN_ENV, ReplayCredentials, generate_credentials
from system.config import ConfigError

log = logging.getLogger(__name__)

TOKEN_FILE, CERT_FILE, KEY_FILE = "token", "cert.pem", "key.pem"

HOW_TO_MAKE = (
    f"make them with `qfleet replay credentials --out DIR` and export the lines it prints "
    f"({TOKEN_ENV}, {CERT_ENV}, and {KEY_ENV} for a shard)"
)
INSECURE = "or pass --insecure for a plaintext replay on loopback (no TLS, no token: anyone on this machine can use it)"


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_credentials(what: str, insecure: bool, *, server: bool = False, host: str | None = None):
    """The replay credentials a standalone service runs with, from the environment.

    Args:
        what: the command, for messages ("qfleet replay serve").
        insecure: `--insecure` was given: plaintext, no token (refused with credentials set, and for
            a shard on a non-loopback `host`).
        server: a shard (needs the private key) rather than a client.
        host: the shard's bind address.

    Returns:
        The credentials (a client's copy, without the key, when not `server`), or None with
        `insecure`.

    Raises:
        ConfigError: none set without --insecure; --insecure beside set credentials or off
            loopback; a set that cannot be read, or a shard's without the key.
    """
    try:
        credentials = ReplayCredentials.from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if insecure:
        if credentials is not None:
            raise ConfigError(f"{what}: --insecure, but {TOKEN_ENV} is set: unset it, or drop --insecure")
        if server and host is not None and not is_loopback(host):
            raise ConfigError(
                f"{what}: --insecure serves plaintext to anyone who reaches the port, so only on a loopback "
                f"address; replay.host={host!r} is not one: {HOW_TO_MAKE}"
            )
        log.warning("%s: --insecure: the replay runs without TLS and without a token", what)
        return None
    if credentials is None:
        raise ConfigError(f"{what} needs the run's replay credentials and none are set: {HOW_TO_MAKE}; {INSECURE}")
    if server and credentials.key_pem is None:
        raise ConfigError(f"{what}: {KEY_ENV} is not set: a shard needs the certificate's private key")
    return credentials if server else credentials.for_clients()


def write_credentials(directory: str) -> list[str]:
    """Writes fresh credentials into `directory` (0700; files 0600); returns the `export` lines.

    The lines name the files; the token's reads its file (`$(cat ...)`), so it is never printed.

    Raises:
        ConfigError: the directory holds credentials already (never overwritten: rotate into a
            new one), or cannot be written.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    files = [path / TOKEN_FILE, path / CERT_FILE, path / KEY_FILE]
    existing = [str(f) for f in files if f.exists()]
    if existing:
        raise ConfigError(f"--out {directory}: holds credentials already ({', '.join(existing)}); choose a new folder")
    credentials = generate_credentials()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        for file, content in zip(
            files, [credentials.token.encode(), credentials.cert_pem, credentials.key_pem], strict=True
        ):
            descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
    except OSError as exc:
        raise ConfigError(f"--out {directory}: cannot write: {exc.strerror}") from None
    token, cert, key = (shlex.quote(str(f)) for f in files)
    return [
        f'export {TOKEN_ENV}="$(cat {token})"',
        f"export {CERT_ENV}={cert}",
        f"export {KEY_ENV}={key}  # shards only: learners and actors need the first two",
    ]


def main_credentials(directory: str) -> int:
    """Entry of `qfleet replay credentials`."""
    lines = write_credentials(directory)
    print(f"# replay credentials written to {pathlib.Path(directory).expanduser().resolve()} (readable by you only)")
    print("# every shard, learner and actor of the run needs them; new ones (a restart of each) rotate them")
    for line in lines:
        print(line)
    return 0
