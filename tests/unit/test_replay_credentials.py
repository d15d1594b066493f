"""`ReplayCredentials` as the services read them: tokens and PEM given inline or as files, messages
that never hold a secret, long-lived certificates whose expiry is checked, and the server name
carried by the certificate itself."""

from __future__ import annotations

import datetime
import logging

import pytest

from replay import CERT_ENV, KEY_ENV, TOKEN_ENV, ReplayCredentials, generate_credentials
from replay.credentials import CERTIFICATE_DAYS, self_signed

CREDENTIALS = generate_credentials()
NOW = datetime.datetime.now(datetime.UTC)


def with_certificate(days_left: float, server_name: str = "qfleet-replay") -> ReplayCredentials:
    """Credentials whose certificate ends `days_left` days from now (negative: expired)."""
    cert_pem, key_pem = self_signed(
        server_name, NOW - datetime.timedelta(days=400), NOW + datetime.timedelta(days=days_left)
    )
    return ReplayCredentials(CREDENTIALS.token, cert_pem, key_pem, server_name)


def test_a_generated_certificate_lasts_years_not_a_month():
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(CREDENTIALS.cert_pem)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime >= datetime.timedelta(days=CERTIFICATE_DAYS) >= datetime.timedelta(days=3650)


def test_an_expired_certificate_is_refused_by_name(monkeypatch):
    expired = with_certificate(-1)
    with pytest.raises(ValueError, match=r"replay certificate for 'qfleet-replay' expired on .* make new ones"):
        expired.check_expiry()
    with pytest.raises(ValueError, match="expired on"):
        ReplayCredentials.from_env(expired.environ())


def test_a_certificate_in_its_last_week_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="replay.credentials"):
        ReplayCredentials.from_env(with_certificate(3).environ())
    assert "expires on" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="replay.credentials"):
        ReplayCredentials.from_env(with_certificate(30).environ())
    assert caplog.text == ""


@pytest.mark.parametrize(
    "token",
    ["short", "x" * 31, "a" * 40 + " " + "b" * 10, "a" * 40 + "\n", "é" * 40, "a" * 20 + "\t" + "b" * 20],
    ids=["short", "31 characters", "a space", "a newline", "not ASCII", "a tab"],
)
def test_a_weak_or_malformed_token_is_refused_without_being_echoed(token):
    with pytest.raises(ValueError, match="at least 32 visible ASCII characters") as caught:
        ReplayCredentials(token, CREDENTIALS.cert_pem)
    assert token.strip() not in str(caught.value)


def test_the_token_may_be_given_as_a_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(CREDENTIALS.token + "\n")
    credentials = ReplayCredentials.from_env({TOKEN_ENV: str(path), CERT_ENV: CREDENTIALS.cert_pem.decode()})
    assert credentials.token == CREDENTIALS.token


def test_a_malformed_inline_key_is_not_echoed():
    leaked = CREDENTIALS.key_pem.decode().replace("-----BEGIN", "-----BEGlN")  # one letter off: not PEM
    body = "".join(CREDENTIALS.key_pem.decode().splitlines()[1:-1])  # the base64 body alone, one line
    for value in (leaked, body, CREDENTIALS.token):
        environ = {**CREDENTIALS.for_clients().environ(), KEY_ENV: value}
        with pytest.raises(ValueError, match=f"{KEY_ENV} is neither PEM text nor a readable file") as caught:
            ReplayCredentials.from_env(environ)
        message = str(caught.value)
        assert value not in message and body[:20] not in message and CREDENTIALS.token not in message


def test_an_unreadable_path_is_named():
    environ = {**CREDENTIALS.for_clients().environ(), CERT_ENV: "/no/such/dir/cert.pem"}
    with pytest.raises(ValueError, match=r"QFLEET_REPLAY_TLS_CERT is neither PEM text nor a readable file \('/no/such"):
        ReplayCredentials.from_env(environ)


def test_a_missing_set_is_none_or_an_error_when_required():
    assert ReplayCredentials.from_env({}) is None
    with pytest.raises(ValueError, match=f"{TOKEN_ENV} and {CERT_ENV} are not set"):
        ReplayCredentials.from_env({}, required=True)
    with pytest.raises(ValueError, match=f"{CERT_ENV} is not set"):
        ReplayCredentials.from_env({TOKEN_ENV: CREDENTIALS.token})


def test_the_server_name_round_trips_through_the_environment():
    other = generate_credentials("other")
    read = ReplayCredentials.from_env(other.environ())
    assert read.server_name == "other" and read == other
    assert ReplayCredentials.from_env(CREDENTIALS.environ()).server_name == "qfleet-replay"


def test_a_key_of_another_certificate_is_named_as_such():
    mixed = ReplayCredentials(CREDENTIALS.token, CREDENTIALS.cert_pem, generate_credentials().key_pem)
    with pytest.raises(ValueError, match=r"private key \(QFLEET_REPLAY_TLS_KEY\) is not the certificate's") as caught:
        mixed.check_key()
    assert "PRIVATE KEY" not in str(caught.value)
    CREDENTIALS.check_key()  # the matching pair passes
