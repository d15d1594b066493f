"""The embedded redis-server: it starts on a free port with a password that is nowhere on its
command line, refuses clients without it, and when it cannot start the error says why in
redis-server's own words; and it dies with an owner killed hard."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import wait_until
from replay import connect_redis
from system.errors import RedisLaunchError
from system.local.redis_server import RedisProcess


def test_an_embedded_redis_answers_and_restarts_on_the_same_port_with_the_same_password(tmp_path):
    with RedisProcess(directory=str(tmp_path)) as server:
        client = connect_redis(server.url, password=server.password)
        assert client.ping()
        port, password = server.port, server.password
        server.stop()
        server.start()
        assert server.port == port and server.password == password and client.ping()
        client.close()


def test_each_embedded_redis_gets_a_fresh_password_that_is_not_on_its_command_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with RedisProcess(directory=str(tmp_path / "a")) as first, RedisProcess(directory=str(tmp_path / "b")) as second:
        assert first.password and second.password and first.password != second.password
        assert len(first.password) >= 32 and "@" not in first.url and first.password not in first.url
        argv = open(f"/proc/{first.proc.pid}/cmdline", "rb").read()
        assert first.password.encode() not in argv
        assert b"requirepass" not in argv


def test_a_client_without_the_password_gets_noauth_and_one_with_a_wrong_one_is_refused(tmp_path):
    with RedisProcess(directory=str(tmp_path)) as server:
        # No retries: redis-py 8 retries a refused handshake with backoff (4 s of the test's time).
        anonymous = redis.Redis(port=server.port, protocol=2, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"SET qfleet:any:key 1\r\n")
            assert raw.recv(200).startswith(b"-NOAUTH")
        with pytest.raises(redis.AuthenticationError):
            connect_redis(server.url, password="not-" + server.password).ping()
        anonymous.close()
        owner = connect_redis(server.url, password=server.password)
        assert owner.get("qfleet:any:key") is None  # nothing was written
        owner.close()


def test_password_none_is_a_redis_without_one(tmp_path):
    with RedisProcess(directory=str(tmp_path), password=None) as server:
        client = redis.Redis.from_url(server.url)
        assert server.password is None and client.ping()
        client.close()


def test_a_port_already_taken_fails_naming_the_port_and_redis_reason(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RedisProcess(port=port, directory=str(tmp_path))
        with pytest.raises(RedisLaunchError, match=f"127.0.0.1:{port}.*Address already in use") as raised:
            server.start()
        assert raised.value.port == port and "Address already in use" in raised.value.log_tail
        assert server.proc is None
        server.close()


def test_a_directory_that_does_not_exist_fails_with_redis_reason(tmp_path):
    server = RedisProcess(directory=str(tmp_path / "missing"))
    with pytest.raises(RedisLaunchError, match="exited with code 1.*missing"):
        server.start()
    server.close()


def test_a_port_answered_by_another_redis_is_not_taken_for_ours(tmp_path):
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with RedisProcess(directory=str(tmp_path / "first")) as first:
        second = RedisProcess(port=first.port, directory=str(tmp_path / "second"))
        with pytest.raises(RedisLaunchError, match="answered by another process's Redis"):
            second.start()
        assert second.proc is None
        second.close()
        client = connect_redis(first.url, password=first.password)
        assert client.ping()  # the first one is untouched
        client.close()


OWNER = """
import sys, time
from system.local.redis_server import RedisProcess
server = RedisProcess(directory=sys.argv[1]).start()
print(server.proc.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("setpriv", ["as installed", "too old for --pdeathsig"])
def test_a_redis_server_whose_owner_is_killed_hard_goes_too(tmp_path, setpriv):
    """Its owner SIGKILLed (no orderly stop runs): the kernel's parent-death signal ends it. With
    a setpriv older than util-linux 2.33 (RHEL 8, Ubuntu 18.04) on PATH it still starts, and goes."""
    env = dict(os.environ)
    (tmp_path / "redis").mkdir()
    if setpriv != "as installed":
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "setpriv").write_text("#!/bin/sh\necho \"setpriv: unrecognized option '$1'\" >&2\nexit 1\n")
        (fake / "setpriv").chmod(0o755)
        env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "redis")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    redis_pid = None
    try:
        line = owner.stdout.readline()
        if not line:  # the owner ended before it had a redis-server: say why
            owner.wait(timeout=60)
            pytest.fail(f"the owner printed no pid; its stderr:\n{owner.stderr.read()[-3000:]}")
        redis_pid = int(line)
        # setpriv (where it takes --pdeathsig) execs redis-server, and the preexec_fn fallback
        # runs before exec: either way the pid its owner knows is redis-server's own.
        assert open(f"/proc/{redis_pid}/comm").read().strip() == "redis-server"
        owner.kill()
        owner.wait()
        assert wait_until(lambda: not _alive(redis_pid), timeout=60), "redis-server outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if redis_pid is not None and _alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)
        owner.stdout.close()
        owner.stderr.close()
