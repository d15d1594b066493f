"""The replay credentials of a standalone service, and `qfleet replay credentials`.

`qfleet replay serve`, `qfleet learner run` and `qfleet actors run` take the run's replay token and
TLS certificate from the environment (`QFLEET_REPLAY_TOKEN`, `QFLEET_REPLAY_TLS_CERT`, and
`QFLEET_REPLAY_TLS_KEY` for a shard), never from argv. Without them they refuse to start, unless
`--insecure` asks for plaintext (a shard then binds loopback only). `qfleet replay credentials
--out DIR` makes a set: files only the user can read, and the `export` lines that name them (each
variable takes a file path, the token's too, so no secret is printed).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
import shlex
import stat

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
        credentials = ReplayCredentials.from_env(required=not insecure)  # a missing set: an error, no plaintext
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}: {HOW_TO_MAKE}" + ("" if insecure else f"; {INSECURE}")) from None
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
    if server and credentials.key_pem is None:
        raise ConfigError(f"{what}: {KEY_ENV} is not set: a shard needs the certificate's private key")
    return credentials if server else credentials.for_clients()


def write_credentials(directory: str) -> list[str]:
    """Writes fresh credentials into `directory`; returns the `export` lines that name the files.

    A folder that does not exist is created, 0700. An existing one is used only if it is the
    user's, closed to group and others, and holds no credentials yet: its mode is never changed
    (`--out .` must not close a working folder, nor `--out /tmp` a shared one). Files are 0600,
    never overwritten; if one cannot be written, those already written are removed again.

    Raises:
        ConfigError: an existing folder that is another user's, open to others, or holds
            credentials already; or a folder or file that cannot be written.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    files = [path / TOKEN_FILE, path / CERT_FILE, path / KEY_FILE]
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # ours, just made: whatever the umask left
        created = True
    except FileExistsError:
        _check_existing_folder(path, directory, files)
    except OSError as exc:
        raise ConfigError(f"--out {directory}: cannot create the folder: {exc.strerror}") from None
    credentials = generate_credentials()
    written: list[pathlib.Path] = []
    try:
        for file, content in zip(
            files, [credentials.token.encode(), credentials.cert_pem, credentials.key_pem], strict=True
        ):
            descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            written.append(file)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
    except OSError as exc:
        for file in written:
            file.unlink(missing_ok=True)
        if created:
            path.rmdir()
        raise ConfigError(f"--out {directory}: cannot write {file.name}: {exc.strerror}; nothing was kept") from None
    token, cert, key = (shlex.quote(str(f)) for f in files)
    return [
        f"export {TOKEN_ENV}={token}",
        f"export {CERT_ENV}={cert}",
        f"export {KEY_ENV}={key}  # shards only: learners and actors need the first two",
    ]


def _check_existing_folder(path: pathlib.Path, directory: str, files: list[pathlib.Path]) -> None:
    """Accepts an existing `--out` folder only if it is the user's, private and free of credentials."""
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"--out {directory}: exists and is not a folder")
    if info.st_uid != os.getuid():
        raise ConfigError(
            f"--out {directory}: the folder belongs to another user; choose a new folder (it is created 0700)"
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            f"--out {directory}: the folder is open to other users (mode {stat.S_IMODE(info.st_mode):o}); choose a "
            "new folder (it is created 0700), or close this one yourself (chmod 700) if nothing else lives there"
        )
    existing = [str(f) for f in files if f.exists()]
    if existing:
        raise ConfigError(f"--out {directory}: holds credentials already ({', '.join(existing)}); choose a new folder")


def main_credentials(directory: str) -> int:
    """Entry of `qfleet replay credentials`."""
    lines = write_credentials(directory)
    print(f"# replay credentials written to {pathlib.Path(directory).expanduser().resolve()} (readable by you only)")
    print("# every shard, learner and actor of the run needs them; new ones (a restart of each) rotate them")
    for line in lines:
        print(line)
    return 0
