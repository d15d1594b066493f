"""The embedded redis-server: it starts on a free port, and when it cannot start the error says
why in redis-server's own words."""

from __future__ import annotations

import socket

import pytest
import redis

from system.errors import RedisLaunchError
from system.local.redis_server import RedisProcess


def test_an_embedded_redis_answers_and_restarts_on_the_same_port(tmp_path):
    with RedisProcess(directory=str(tmp_path)) as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        port = server.port
        server.stop()
        server.start()
        assert server.port == port and client.ping()
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
        client = redis.Redis.from_url(first.url)
        assert client.ping()  # the first one is untouched
        client.close()
