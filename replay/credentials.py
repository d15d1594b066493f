"""The credentials of a run's replay service: a bearer token and a TLS certificate.

Every replay RPC carries the token (gRPC metadata `authorization: Bearer <token>`) over TLS. The
server holds the certificate and its private key; clients pin the same certificate (it is its own
root), and connect with the fixed server name `SERVER_NAME`, so one certificate serves shards on
any host or port of a run.

`qfleet train` makes fresh credentials at every start (`generate_credentials`) and hands them to its
components as arguments. Standalone services (`qfleet replay serve`, `qfleet learner run`,
`qfleet actors run`) read them from the environment (`ReplayCredentials.from_env`): the token and
the PEM certificate/key given either inline or as a file path. They are never taken from argv.
"""

from __future__ import annotations

import datetime
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

TOKEN_ENV = "QFLEET_REPLAY_TOKEN"
"""The bearer token every replay RPC must carry."""
CERT_ENV = "QFLEET_REPLAY_TLS_CERT"
"""The server certificate (PEM text, or the path of a PEM file); clients pin it."""
KEY_ENV = "QFLEET_REPLAY_TLS_KEY"
"""The certificate's private key (PEM text or path); only servers need it."""

SERVER_NAME = "qfleet-replay"
"""The name in the certificate; clients override the target name with it (any host/port works)."""

CERTIFICATE_DAYS = 30
"""How long a generated certificate is valid (a run longer than this restarts with new ones)."""


@dataclass(frozen=True)
class ReplayCredentials:
    """A run's replay token and TLS certificate.

    Attributes:
        token: the bearer token (URL-safe text, at least 32 bytes of entropy when generated).
        cert_pem: the server certificate, PEM; clients use it as the only trusted root.
        key_pem: the certificate's private key, PEM; None in a client's copy.
        server_name: the name the certificate is issued to.
    """

    token: str = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    server_name: str = SERVER_NAME

    def for_clients(self) -> ReplayCredentials:
        """The same credentials without the private key (what learners and actors need)."""
        return ReplayCredentials(self.token, self.cert_pem, None, self.server_name)

    def environ(self) -> dict[str, str]:
        """The environment variables `from_env` reads back (inline PEM)."""
        env = {TOKEN_ENV: self.token, CERT_ENV: self.cert_pem.decode()}
        if self.key_pem is not None:
            env[KEY_ENV] = self.key_pem.decode()
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReplayCredentials | None:
        """Credentials from `QFLEET_REPLAY_TOKEN` and `QFLEET_REPLAY_TLS_CERT` (+ `_KEY` on a server).

        Returns None when neither the token nor the certificate is set.

        Raises:
            ValueError: only one of token and certificate is set, or a PEM path cannot be read.
        """
        environ = os.environ if environ is None else environ
        token, cert, key = environ.get(TOKEN_ENV), environ.get(CERT_ENV), environ.get(KEY_ENV)
        if not token and not cert:
            return None
        if not token or not cert:
            missing = TOKEN_ENV if not token else CERT_ENV
            raise ValueError(f"replay credentials: {missing} is not set (the token and the certificate go together)")
        return cls(token, _pem(cert, CERT_ENV), _pem(key, KEY_ENV) if key else None)


def _pem(value: str, name: str) -> bytes:
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        with open(value, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"replay credentials: {name} names {value!r}, which cannot be read: {exc.strerror}") from None


def generate_credentials(server_name: str = SERVER_NAME) -> ReplayCredentials:
    """Fresh credentials: a random token and a self-signed ECDSA P-256 certificate for `server_name`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ReplayCredentials(
        secrets.token_urlsafe(32), cert.public_bytes(serialization.Encoding.PEM), key_pem, server_name
    )
