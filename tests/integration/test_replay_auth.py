"""A shard with the run's credentials (real servers on port 0): TLS only, and every method refuses
a call without the run's token before anything changes; the right credentials work end to end."""

from __future__ import annotations

import datetime
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest

from conftest import CARTPOLE_SPEC, make_batch
from replay import (
    ReplayAuthenticationError,
    ReplayClient,
    ReplayCredentials,
    ReplayServer,
    ReplayTLSError,
    ReplayUnavailableError,
    ShardedReplay,
    codec,
    generate_credentials,
    wire,
)
from replay._proto import replay_pb2, replay_pb2_grpc
from replay.auth import REFUSAL
from replay.credentials import SERVER_NAME, self_signed

CREDENTIALS = generate_credentials()
SERVICE = "/qfleet.replay.ReplayService/"


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(CARTPOLE_SPEC.to_json())
    return str(path)


@pytest.fixture
def shard(start_server, tmp_path):
    """A TLS shard holding 100 items (priorities 1), with a checkpoint folder and a rate limiter."""
    server = start_server(
        capacity=1000, samples_per_insert=1.0, checkpoint_dir=str(tmp_path / "ckpt"), credentials=CREDENTIALS
    )
    with ReplayClient(server.address, credentials=CREDENTIALS) as client:
        client.insert(make_batch(100))
        client.flush()
    return server


def tls_channel(address: str, cert_pem: bytes = CREDENTIALS.cert_pem) -> grpc.Channel:
    """A TLS channel that trusts `cert_pem` and sends no token of its own."""
    options = [("grpc.ssl_target_name_override", CREDENTIALS.server_name)]
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=cert_pem), options=options)


def call(channel: grpc.Channel, method: str, keys: np.ndarray, metadata):
    """One call of `method` that would change the shard (or read it) if it were let through."""
    if method == "Insert":
        request = wire.encode_insert_request(make_batch(10, start=1000), writer_id=7, sequence=1, timeout_ms=0)
        stream = channel.stream_stream(SERVICE + "Insert", request_serializer=None, response_deserializer=None)
        return list(stream(iter([request]), metadata=metadata, timeout=10))
    if method == "UpdatePrioritiesStream":
        message = replay_pb2.UpdatePrioritiesRequest()
        codec.encode_tensor(keys, message.keys)
        codec.encode_tensor(np.full(len(keys), 1e6), message.priorities)
        stream = channel.stream_stream(SERVICE + method, request_serializer=None, response_deserializer=None)
        return list(stream(iter([message.SerializeToString()]), metadata=metadata, timeout=10))
    if method == "Sample":
        request = replay_pb2.SampleRequest(batch_size=8, num_batches=4, beta=-1.0).SerializeToString()
    elif method == "Credit":
        request = replay_pb2.CreditRequest(items=5).SerializeToString()
    elif method == "UpdatePriorities":
        message = replay_pb2.UpdatePrioritiesRequest()
        codec.encode_tensor(keys, message.keys)
        codec.encode_tensor(np.full(len(keys), 1e6), message.priorities)
        request = message.SerializeToString()
    else:
        request = getattr(replay_pb2, f"{method}Request")().SerializeToString()
    unary = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    return unary(request, metadata=metadata, timeout=10)


def state(server: ReplayServer, tmp_path) -> tuple:
    info = server.table.info()
    return (
        info.size,
        info.inserts,
        info.samples,
        info.credited,
        info.priority_mass,
        sorted((tmp_path / "ckpt").glob("*")),
    )


METHODS = ["Insert", "Sample", "Credit", "UpdatePriorities", "UpdatePrioritiesStream", "Info", "Checkpoint"]


def test_every_method_is_in_the_list_checked_here():
    assert set(METHODS) == set(replay_pb2.DESCRIPTOR.services_by_name["ReplayService"].methods_by_name)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", "Bearer " + generate_credentials().token),),
        (("authorization", "Bearer " + CREDENTIALS.token[:-1]),),
        (("authorization", CREDENTIALS.token),),  # the token without its scheme
    ],
    ids=["no token", "another run's token", "a truncated token", "no Bearer"],
)
def test_each_rpc_without_the_token_is_refused_and_changes_nothing(shard, tmp_path, method, metadata):
    with ReplayClient(shard.address, credentials=CREDENTIALS) as client:
        keys = client.sample(16).keys
    before = state(shard, tmp_path)
    refused = shard.unauthenticated_requests
    with tls_channel(shard.address) as channel, pytest.raises(grpc.RpcError) as caught:
        call(channel, method, keys, metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == REFUSAL and CREDENTIALS.token not in caught.value.details()
    assert state(shard, tmp_path) == before  # table, counters, priorities, no checkpoint file
    assert shard.unauthenticated_requests == refused + 1


def test_the_same_calls_with_the_token_go_through(shard, tmp_path):
    """The control for the test above: the very calls it makes do change the shard with the token."""
    with ReplayClient(shard.address, credentials=CREDENTIALS) as client:
        keys = client.sample(16).keys
    token = (("authorization", "Bearer " + CREDENTIALS.token),)
    with tls_channel(shard.address) as channel:
        for method in METHODS:
            call(channel, method, keys, token)
    size, inserts, samples, credited, mass, checkpoints = state(shard, tmp_path)
    assert (
        (size, inserts, samples, credited) == (110, 110, 16 + 32, 5) and mass > 1000 and checkpoints
    )  # 1e6 ** alpha per key
    assert shard.unauthenticated_requests == 0


def test_refusals_are_counted_on_metrics(start_server):
    server = start_server(metrics_port=0, credentials=CREDENTIALS)
    with tls_channel(server.address) as channel:
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                replay_pb2_grpc.ReplayServiceStub(channel).Info(replay_pb2.InfoRequest(), timeout=10)
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'qfleet_replay_unauthenticated_requests_total{shard="0"} 3.0' in scraped


def test_right_credentials_work_end_to_end_and_survive_pickling(shard):
    original_client = ReplayClient(shard.address, credentials=CREDENTIALS)
    client = pickle.loads(pickle.dumps(original_client))
    original_client.close()
    assert client.credentials.key_pem is None  # a client never carries the private key
    assert CREDENTIALS.token not in repr(client) and CREDENTIALS.token not in repr(client.credentials)
    client.insert(make_batch(50, start=100))
    client.flush()
    sample = client.sample(32)
    assert client.update_priorities(sample.keys, np.full(32, 3.0)).applied == 32
    client.send_priorities(sample.keys, np.full(32, 5.0))  # the priority stream: TLS and the token too
    counts = client.flush_priorities(timeout=10)  # a key drawn twice is coalesced to its last value
    assert (counts.applied + counts.coalesced, counts.lost) == (32, 0)
    assert client.info().size == 150 and client.checkpoint().size == 150
    client.close()

    original = ShardedReplay(addresses=[shard.address], credentials=CREDENTIALS)
    sharded = pickle.loads(pickle.dumps(original))
    original.close()  # the copy discovers the shards again on its own
    assert sharded.config.credentials.key_pem is None
    sharded.insert(make_batch(10, start=150))
    sharded.flush()
    keys = sharded.sample(8).keys
    assert keys.shape == (8,) and sharded.info().size == 160
    sharded.send_priorities(keys, np.full(8, 2.0))
    counts = sharded.flush_priorities(timeout=10)
    assert (counts.applied + counts.coalesced, counts.lost) == (8, 0)
    sharded.close()


def test_a_wrong_token_raises_a_typed_error_at_once_without_the_token(shard):
    wrong = ReplayCredentials(generate_credentials().token, CREDENTIALS.cert_pem)
    with ReplayClient(shard.address, credentials=wrong, retry_for_s=30) as client:
        started = time.monotonic()
        with pytest.raises(ReplayAuthenticationError, match="requires the run's replay token") as caught:
            client.info()
        assert time.monotonic() - started < 5  # not retried: waiting does not fix a token
        client.insert(make_batch(5))
        with pytest.raises(ReplayAuthenticationError):
            client.flush()
        mass = shard.table.info().priority_mass
        client.send_priorities(np.arange(5, dtype=np.uint64), np.full(5, 1e6))
        with pytest.raises(ReplayAuthenticationError):
            client.flush_priorities(timeout=10)
        assert client.priority_counts().lost == 5  # refused, not applied, and said so
    assert wrong.token not in str(caught.value) and CREDENTIALS.token not in str(caught.value)
    assert shard.table.info().size == 100 and shard.table.info().priority_mass == mass


def test_a_plaintext_client_is_told_the_shard_wants_tls_and_a_token(shard):
    with ReplayClient(shard.address, retry_for_s=0.3) as client, pytest.raises(ReplayUnavailableError) as caught:
        client.info()
    assert "needs the run's replay token and certificate" in str(caught.value)
    with grpc.insecure_channel(shard.address) as channel, pytest.raises(grpc.RpcError) as raw:
        replay_pb2_grpc.ReplayServiceStub(channel).Info(replay_pb2.InfoRequest(), timeout=5)
    assert raw.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_pinning_another_certificate_fails_at_once_with_the_cause(shard):
    impostor = generate_credentials()
    other_cert = ReplayCredentials(CREDENTIALS.token, impostor.cert_pem)  # the right token, another cert
    with ReplayClient(shard.address, credentials=other_cert, retry_for_s=30) as client:
        started = time.monotonic()
        with pytest.raises(ReplayTLSError, match="holds another certificate than the one this client pins"):
            client.info()
        client.insert(make_batch(5))
        with pytest.raises(ReplayTLSError):
            client.flush()
        assert time.monotonic() - started < 5  # not retried for retry_for_s
    assert shard.unauthenticated_requests == 0  # the token never left the client


def test_a_tls_client_of_a_plaintext_shard_is_told_so_at_once(start_server):
    plain = start_server()
    with ReplayClient(plain.address, credentials=CREDENTIALS, retry_for_s=30) as client:
        started = time.monotonic()
        with pytest.raises(ReplayTLSError, match="serves plaintext"):
            client.info()
        assert time.monotonic() - started < 5


def test_a_shard_certificate_that_expired_is_named_as_the_cause():
    """A shard whose certificate expired while it ran (a qfleet shard refuses to start with one)."""
    now = datetime.datetime.now(datetime.UTC)
    cert_pem, key_pem = self_signed(SERVER_NAME, now - datetime.timedelta(days=60), now - datetime.timedelta(days=1))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    try:
        pinned = ReplayCredentials(CREDENTIALS.token, cert_pem)
        with ReplayClient(f"127.0.0.1:{port}", credentials=pinned, retry_for_s=30) as client:
            with pytest.raises(ReplayTLSError, match="certificate has expired"):
                client.info()
    finally:
        server.stop(0)


def test_a_shard_that_is_merely_down_is_still_retried(start_server):
    server = start_server(credentials=CREDENTIALS)
    address = server.address
    server.stop(grace=0, checkpoint=False)
    with ReplayClient(address, credentials=CREDENTIALS, retry_for_s=2.0) as client:
        started = time.monotonic()
        with pytest.raises(ReplayUnavailableError) as caught:
            client.info()
        # Retried for most of retry_for_s (its backoff may stop short of it), not failed at once.
        assert time.monotonic() - started > 0.5 and not isinstance(caught.value, ReplayTLSError)


def test_a_shard_needs_the_private_key():
    with pytest.raises(ValueError, match="private key"):
        ReplayServer(CARTPOLE_SPEC, credentials=CREDENTIALS.for_clients())


def test_a_key_of_another_certificate_is_named_not_taken_for_a_busy_port():
    mixed = ReplayCredentials(CREDENTIALS.token, CREDENTIALS.cert_pem, generate_credentials().key_pem)
    with pytest.raises(ValueError, match="is not the certificate's"):
        ReplayServer(CARTPOLE_SPEC, port=0, credentials=mixed)


def test_a_shard_with_an_expired_certificate_refuses_to_start():
    now = datetime.datetime.now(datetime.UTC)
    cert_pem, key_pem = self_signed(SERVER_NAME, now - datetime.timedelta(days=60), now - datetime.timedelta(days=1))
    server = ReplayServer(CARTPOLE_SPEC, port=0, credentials=ReplayCredentials(CREDENTIALS.token, cert_pem, key_pem))
    with pytest.raises(ValueError, match="replay certificate for 'qfleet-replay' expired on"):
        server.start()
    assert server.port is None  # nothing listens


# -- the standalone command --------------------------------------------------------------------------


def qfleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QFLEET_REPLAY_")}
    return subprocess.run(
        [sys.executable, "-m", "system.cli", *args], capture_output=True, text=True, timeout=60, env=clean | env
    )


def test_replay_credentials_writes_private_files_and_prints_no_secret(tmp_path):
    out = tmp_path / "creds"
    made = qfleet("replay", "credentials", "--out", str(out), env={})
    assert made.returncode == 0, made.stderr
    token = (out / "token").read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE((out / name).stat().st_mode) == 0o600 for name in ("token", "cert.pem", "key.pem"))
    assert token not in made.stdout + made.stderr and "PRIVATE KEY" not in made.stdout
    exports = dict(
        line.removeprefix("export ").split("  #")[0].split("=", 1)
        for line in made.stdout.splitlines()
        if line.startswith("export ")
    )
    assert exports == {
        "QFLEET_REPLAY_TOKEN": f"{out}/token",
        "QFLEET_REPLAY_TLS_CERT": f"{out}/cert.pem",
        "QFLEET_REPLAY_TLS_KEY": f"{out}/key.pem",
    }
    # What the exports hand a service reads back as the files' credentials.
    credentials = ReplayCredentials.from_env(exports)
    assert credentials.token == token and credentials.key_pem == (out / "key.pem").read_bytes()
    again = qfleet("replay", "credentials", "--out", str(out), env={})
    assert again.returncode == 2 and "holds credentials already" in again.stderr
    assert (out / "token").read_text() == token  # never overwritten


@pytest.mark.parametrize("mode", [0o755, 0o1777, 0o750], ids=["a working folder", "like /tmp", "group-readable"])
def test_replay_credentials_never_changes_an_open_existing_folder(tmp_path, mode):
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(mode)
    made = qfleet("replay", "credentials", "--out", str(out), env={})
    assert made.returncode == 2 and "open to other users" in made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == mode and not list(out.iterdir())


def test_replay_credentials_uses_an_existing_private_empty_folder_as_it_is(tmp_path):
    out = tmp_path / "mine"
    out.mkdir(mode=0o700)
    out.chmod(0o700)
    (out / "notes").write_text("kept")
    made = qfleet("replay", "credentials", "--out", str(out), env={})
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and (out / "notes").read_text() == "kept"
    assert {p.name for p in out.iterdir()} == {"notes", "token", "cert.pem", "key.pem"}


def test_replay_credentials_keeps_nothing_when_a_write_fails(tmp_path):
    """A file-size limit of 100 bytes: the token (43) is written, the certificate is not. util-linux's
    prlimit sets it before exec (a preexec_fn would run Python after fork beside gRPC's threads)."""
    out = tmp_path / "new" / "creds"
    made = subprocess.run(
        ["prlimit", "--fsize=100:100", "--", sys.executable, "-B", "-m", "system.cli", "replay", "credentials"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 2 and "cannot write cert.pem" in made.stderr and "nothing was kept" in made.stderr
    assert not out.exists() and (tmp_path / "new").is_dir()


def test_serve_refuses_to_start_without_credentials_or_insecure_off_loopback(spec_file):
    plain = qfleet("replay", "serve", "--spec", spec_file, env={})
    assert plain.returncode == 2 and "qfleet replay credentials --out DIR" in plain.stderr
    exposed = qfleet("replay", "serve", "--spec", spec_file, "--insecure", "--host", "0.0.0.0", env={})
    assert exposed.returncode == 2 and "only on a loopback address" in exposed.stderr
    key_missing = qfleet("replay", "serve", "--spec", spec_file, env=CREDENTIALS.for_clients().environ())
    assert key_missing.returncode == 2 and "QFLEET_REPLAY_TLS_KEY is not set" in key_missing.stderr
    learner = qfleet("learner", "run", "--redis-url", "redis://127.0.0.1:1/0", env={})
    assert learner.returncode == 2 and "replay credentials" in learner.stderr


def test_serve_with_credentials_from_the_environment_refuses_token_less_clients(qfleet_serve, spec_file):
    shard = qfleet_serve("replay", "serve", "--spec", spec_file, credentials=CREDENTIALS)
    with ReplayClient(shard.address, credentials=CREDENTIALS) as client:
        client.insert(make_batch(20))
        client.flush()
        assert client.info().size == 20
    with ReplayClient(shard.address, retry_for_s=0.3) as client, pytest.raises(ReplayUnavailableError):
        client.info()
    assert CREDENTIALS.token not in shard.log() and "PRIVATE KEY" not in shard.log()


# -- a token-less peer that withholds its request body -------------------------------------------


def withheld_body(release: threading.Event):
    """A request iterator that sends nothing until `release` is set (headers only on the wire)."""
    release.wait(30)
    yield from ()


def withheld_call(channel: grpc.Channel, method: str, release: threading.Event, timeout: float = 20):
    """A token-less call of a unary-request `method` whose body never comes (until `release`)."""
    stream = channel.stream_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
    return stream.future(withheld_body(release), timeout=timeout)


@pytest.mark.parametrize("method", ["Info", "Sample"])
def test_a_token_less_call_that_withholds_its_body_is_refused_at_once(shard, method):
    release = threading.Event()
    with tls_channel(shard.address) as channel:
        try:
            started = time.monotonic()
            call = withheld_call(channel, method, release)
            with pytest.raises(grpc.RpcError) as caught:
                call.result(timeout=5)
            assert time.monotonic() - started < 0.5
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            release.set()


def test_many_withheld_token_less_calls_do_not_starve_the_run(shard):
    """80 peers that send headers and no body (more than the shard's 64 workers) hold nothing."""
    release = threading.Event()
    channels = [tls_channel(shard.address) for _ in range(4)]
    try:
        calls = [withheld_call(channels[i % 4], ("Info", "Sample")[i % 2], release) for i in range(80)]
        with ReplayClient(shard.address, credentials=CREDENTIALS) as client:
            started = time.monotonic()
            assert client.info(timeout=5).size == 100
            assert time.monotonic() - started < 1.0
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call.result(timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        release.set()
        for channel in channels:
            channel.close()
