"""The credentials of a run's replay service: a bearer token and a TLS certificate.

Every replay RPC carries the token (gRPC metadata `authorization: Bearer <token>`) over TLS. The
server holds the certificate and its private key; clients pin the same certificate (it is its own
root), and connect with the fixed server name `SERVER_NAME`, so one certificate serves shards on
any host or port of a run.

`qfleet train` makes fresh credentials at every start (`generate_credentials`) and hands them to its
components as arguments. Standalone services (`qfleet replay serve`, `qfleet learner run`,
`qfleet actors run`) read them from the environment (`ReplayCredentials.from_env`): the token and
the PEM certificate/key, each given either inline or as a file path. They are never taken from argv.

A generated certificate is valid for ten years (`CERTIFICATE_DAYS`): security rests on pinning
one run's certificate plus the token, and rotation is a restart with new credentials. Shards and
`from_env` refuse an expired certificate and warn in its last week.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TOKEN_ENV = "QFLEET_REPLAY_TOKEN"
"""The bearer token every replay RPC must carry (the token itself, or the path of a file holding it)."""
CERT_ENV = "QFLEET_REPLAY_TLS_CERT"
"""The server certificate (PEM text, or the path of a PEM file); clients pin it."""
KEY_ENV = "QFLEET_REPLAY_TLS_KEY"
"""The certificate's private key (PEM text or path); only servers need it."""

SERVER_NAME = "qfleet-replay"
"""The name in the certificate; clients override the target name with it (any host/port works)."""

CERTIFICATE_DAYS = 3650
"""How long a generated certificate is valid. Long on purpose: clients pin one run's certificate
and every call also needs the run's token, so its age adds no risk, while a short one would stop
shards and actors that restart late in a long run. Rotation is a restart with new credentials."""

EXPIRY_WARNING_DAYS = 7
"""A certificate this close to its end is warned about at every shard start and `from_env`."""

MIN_TOKEN_CHARS = 32
"""The shortest token accepted (a generated one has 43 characters, 256 bits)."""

_VISIBLE_ASCII = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class ReplayCredentials:
    """A run's replay token and TLS certificate.

    Attributes:
        token: the bearer token: at least `MIN_TOKEN_CHARS` visible ASCII characters, no
            whitespace (a generated one is URL-safe text of 256 random bits).
        cert_pem: the server certificate, PEM; clients use it as the only trusted root.
        key_pem: the certificate's private key, PEM; None in a client's copy.
        server_name: the name the certificate is issued to.

    Raises:
        ValueError: a token too short or with characters outside visible ASCII (the message never
            holds the token).
    """

    token: str = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    server_name: str = SERVER_NAME

    def __post_init__(self):
        token = self.token
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not _VISIBLE_ASCII.fullmatch(token):
            length = len(token) if isinstance(token, str) else 0
            raise ValueError(
                f"replay credentials: the replay token must be at least {MIN_TOKEN_CHARS} visible ASCII characters "
                f"with no whitespace; the one given ({length} characters) is not (`qfleet replay credentials` "
                "makes a good one)"
            )

    def for_clients(self) -> ReplayCredentials:
        """The same credentials without the private key (what learners and actors need)."""
        return ReplayCredentials(self.token, self.cert_pem, None, self.server_name)

    def environ(self) -> dict[str, str]:
        """The environment variables `from_env` reads back (inline PEM)."""
        env = {TOKEN_ENV: self.token, CERT_ENV: self.cert_pem.decode()}
        if self.key_pem is not None:
            env[KEY_ENV] = self.key_pem.decode()
        return env

    def check_expiry(self, now: datetime.datetime | None = None) -> None:
        """Refuses an expired certificate; warns (log) within `EXPIRY_WARNING_DAYS` of its end.

        Raises:
            ValueError: the certificate is not valid yet or no longer, or is not a PEM certificate.
        """
        certificate = _certificate(self.cert_pem)
        now = now or datetime.datetime.now(datetime.UTC)
        name = f"the replay certificate for {self.server_name!r}"
        ends = certificate.not_valid_after_utc
        if now > ends:
            raise ValueError(
                f"replay credentials: {name} expired on {ends:%Y-%m-%d %H:%M} UTC: make new ones "
                "(`qfleet replay credentials --out DIR`) and restart the run's shards, learner and actors with them"
            )
        if now < certificate.not_valid_before_utc:
            raise ValueError(
                f"replay credentials: {name} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
                "UTC (is this machine's clock right?)"
            )
        if ends - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
            log.warning(
                "%s expires on %s UTC: make new ones (`qfleet replay credentials --out DIR`) and restart the run "
                "with them before then",
                name,
                f"{ends:%Y-%m-%d %H:%M}",
            )

    def check_key(self) -> None:
        """Checks that `key_pem` is the private key of `cert_pem` (a shard's set).

        Raises:
            ValueError: no key, a key that is not PEM, or the key of another certificate (the
                message holds neither).
        """
        from cryptography.hazmat.primitives import serialization

        if self.key_pem is None:
            raise ValueError(
                f"replay credentials: a shard needs the certificate's private key ({KEY_ENV}); these are a client's copy"
            )
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError):
            raise ValueError(
                "replay credentials: the private key is not an unencrypted PEM private key "
                f"({KEY_ENV} holds something else)"
            ) from None
        encoding, public_format = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        certificate_key = _certificate(self.cert_pem).public_key().public_bytes(encoding, public_format)
        if key.public_key().public_bytes(encoding, public_format) != certificate_key:
            raise ValueError(
                f"replay credentials: the private key ({KEY_ENV}) is not the certificate's ({CERT_ENV}): "
                "they come from different sets; use the key.pem and cert.pem written together"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, required: bool = False) -> ReplayCredentials | None:
        """Credentials from `QFLEET_REPLAY_TOKEN` and `QFLEET_REPLAY_TLS_CERT` (+ `_KEY` on a server).

        Each variable holds the value itself or the path of a file holding it. The server name is
        read from the certificate (its DNS name), so credentials made for any name round-trip.
        The certificate's expiry is checked (`check_expiry`).

        Args:
            environ: where to read (default: `os.environ`).
            required: a missing set is an error instead of None (callers that must not fall back
                to plaintext).

        Returns:
            The credentials, or None when neither the token nor the certificate is set (and not
            `required`).

        Raises:
            ValueError: none set and `required`; only one of token and certificate set; a value
                that is neither the thing itself nor a readable file; a bad token; an expired
                certificate. The message holds no secret.
        """
        environ = os.environ if environ is None else environ
        token, cert, key = environ.get(TOKEN_ENV), environ.get(CERT_ENV), environ.get(KEY_ENV)
        if not token and not cert:
            if required:
                raise ValueError(f"replay credentials: {TOKEN_ENV} and {CERT_ENV} are not set")
            return None
        if not token or not cert:
            missing = TOKEN_ENV if not token else CERT_ENV
            raise ValueError(f"replay credentials: {missing} is not set (the token and the certificate go together)")
        cert_pem = _pem(cert, CERT_ENV)
        credentials = cls(
            _token(token), cert_pem, _pem(key, KEY_ENV) if key else None, _server_name(_certificate(cert_pem))
        )
        credentials.check_expiry()
        return credentials


def _token(value: str) -> str:
    """The token itself, or the content of the file `value` names (whitespace around it dropped)."""
    if os.path.isfile(value):
        try:
            with open(value, encoding="ascii", errors="replace") as file:
                return file.read().strip()
        except OSError as exc:
            raise ValueError(
                f"replay credentials: {TOKEN_ENV} names a file that cannot be read: {exc.strerror}"
            ) from None
    return value


def _pem(value: str, name: str) -> bytes:
    """PEM text given inline or as the path of a file; the error never echoes a value that may be a secret."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        with open(value, "rb") as file:
            content = file.read()
    except (OSError, ValueError):  # ValueError: a NUL in the value
        shown = f" ({value!r})" if _shows_as_path(value) else ""
        raise ValueError(f"replay credentials: {name} is neither PEM text nor a readable file{shown}") from None
    if b"-----BEGIN" not in content:
        raise ValueError(f"replay credentials: {name} names a file that holds no PEM text ({value!r})")
    return content


def _shows_as_path(value: str) -> bool:
    """Whether an unreadable value may go into a message: a short, one-line path that cannot be a
    PEM body, a token or a base64 key (those are long runs of base64 characters)."""
    if len(value) > 200 or "\n" in value or "\r" in value or "BEGIN" in value:
        return False
    return len(value) < MIN_TOKEN_CHARS or re.search(r"[^A-Za-z0-9+/=_-]", value) is not None


def _certificate(cert_pem: bytes):
    """The parsed certificate (`cryptography.x509.Certificate`)."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"replay credentials: the certificate ({CERT_ENV}) is not a PEM certificate") from None


def _server_name(certificate) -> str:
    """The name clients check the certificate against: its first DNS name (else SERVER_NAME)."""
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return SERVER_NAME
    dns_names = names.get_values_for_type(x509.DNSName)
    return dns_names[0] if dns_names else SERVER_NAME


def self_signed(server_name: str, not_valid_before: datetime.datetime, not_valid_after: datetime.datetime):
    """A self-signed ECDSA P-256 certificate for `server_name` and its key: (cert_pem, key_pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_valid_before)
        .not_valid_after(not_valid_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def generate_credentials(server_name: str = SERVER_NAME) -> ReplayCredentials:
    """Fresh credentials: a random token and a self-signed ECDSA P-256 certificate for `server_name`,
    valid for `CERTIFICATE_DAYS`."""
    now = datetime.datetime.now(datetime.UTC)
    cert_pem, key_pem = self_signed(
        server_name, now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=CERTIFICATE_DAYS)
    )
    return ReplayCredentials(secrets.token_urlsafe(32), cert_pem, key_pem, server_name)
