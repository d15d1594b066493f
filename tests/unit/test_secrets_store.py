"""The private store of a live run's secrets: owner-only files outside the run folder, found by
run.json's id or by the run's Redis address, gone when the run ends or its driver died."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from system.local.secrets import (
    REDIS_PASSWORD_ENV,
    RunSecrets,
    find_run_secrets,
    load_run_secrets,
    new_secrets_id,
    remove_run_secrets,
    save_run_secrets,
    secrets_dir,
    use_run_secrets,
    without_redacted_password,
)

SECRETS = RunSecrets(redis_password="redis-password-1234", ray_token="ab" * 32)


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_saved_secrets_are_owner_only_and_load_back_by_id_and_by_address(runtime):
    secrets_id = new_secrets_id("cart pole/run")
    path = save_run_secrets(secrets_id, "cart pole/run", "redis://127.0.0.1:6400/0", SECRETS)
    assert path.parent == secrets_dir() == runtime / "qfleet"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert "/" not in secrets_id and secrets_id.startswith("cart-pole-run-")
    assert json.loads(path.read_text())["redis_url"] == "redis://127.0.0.1:6400/0"
    assert load_run_secrets(secrets_id) == SECRETS
    assert find_run_secrets("redis://localhost:6400/0") == SECRETS  # loopback spelled another way
    assert find_run_secrets("redis://127.0.0.1:6401/0") is None
    remove_run_secrets(secrets_id)
    assert not path.exists() and load_run_secrets(secrets_id) is None


def test_repr_shows_no_secret():
    assert "redis-password-1234" not in repr(SECRETS) and "abab" not in repr(SECRETS)


@pytest.mark.parametrize("planted", ["../../etc/passwd", "/etc/passwd", ".hidden", "a/b", ""])
def test_an_id_from_a_planted_run_json_cannot_name_another_file(runtime, planted):
    assert load_run_secrets(planted) is None
    with pytest.raises(ValueError, match="letters, digits"):
        save_run_secrets(planted, "run", "redis://127.0.0.1:6400/0", SECRETS)


def test_a_folder_open_to_others_is_closed_again(runtime):
    (runtime / "qfleet").mkdir(mode=0o777)
    (runtime / "qfleet").chmod(0o777)
    save_run_secrets(new_secrets_id("run"), "run", "redis://127.0.0.1:6400/0", SECRETS)
    assert (runtime / "qfleet").stat().st_mode & 0o777 == 0o700


def test_the_file_of_a_driver_that_died_goes_at_the_next_save(runtime):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = save_run_secrets(new_secrets_id("old"), "old", "redis://127.0.0.1:6400/0", SECRETS)
    record = json.loads(stale.read_text())
    stale.write_text(json.dumps({**record, "driver_pid": int(dead.stdout)}))
    live = save_run_secrets(new_secrets_id("new"), "new", "redis://127.0.0.1:6401/0", SECRETS)
    assert not stale.exists() and live.exists()


def test_a_runs_own_password_wins_over_one_set_for_another_redis(runtime, monkeypatch):
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "for-the-external-redis")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert use_run_secrets("redis://127.0.0.1:6499/0") is None
    assert os.environ[REDIS_PASSWORD_ENV] == "for-the-external-redis"  # nothing saved: unchanged
    secrets_id = new_secrets_id("run")
    save_run_secrets(secrets_id, "run", "redis://127.0.0.1:6400/0", SECRETS)
    assert use_run_secrets("redis://127.0.0.1:6400/0", secrets_id) == SECRETS
    assert os.environ[REDIS_PASSWORD_ENV] == "redis-password-1234"
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_AUTH_TOKEN"] == SECRETS.ray_token


@pytest.mark.parametrize(
    "shown, connect",
    [
        ("redis://:***@redis:6379/0", "redis://redis:6379/0"),
        ("redis://qfleet:***@redis:6379/0", "redis://qfleet@redis:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:real@redis:6379/0", "redis://:real@redis:6379/0"),
        ("redis://redis:6379/0?password=***&db=2", "redis://redis:6379/0?db=2"),
        ("unix:///run/redis.sock?password=***", "unix:///run/redis.sock"),
    ],
)
def test_a_redacted_url_connects_without_the_placeholder(shown, connect):
    assert without_redacted_password(shown) == connect


def test_config_yaml_shows_a_redis_password_as_stars_and_a_resume_connects_without_them(tmp_path):
    from system.config import load_config
    from system.train.run_dir import RunDir

    url = "redis://:hunter2-secret@redis:6379/0"
    config = load_config(None, [f"redis.url={url}", f"replay.redis_url={url}"])
    run = RunDir(tmp_path / "run")
    run.write_config(config)
    assert b"hunter2-secret" not in run.config_path.read_bytes()
    resumed = run.load_config()
    assert resumed.redis.url == "redis://:***@redis:6379/0"
    assert without_redacted_password(resumed.redis.url) == "redis://redis:6379/0"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:hunter2-secret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://redis:6379/0?password=hunter2-secret&db=2", "redis://redis:6379/0?password=***&db=2"),
        ("unix:///run/redis.sock?password=hunter2-secret", "unix:///run/redis.sock?password=***"),
        ("redis://redis:6379/0?db=2", "redis://redis:6379/0?db=2"),
    ],
)
def test_a_password_in_the_address_or_in_the_query_is_redacted(url, shown):
    from replay import redact_url

    assert redact_url(url) == shown


def test_qfleet_config_prints_no_redis_password(capsys):
    from system.cli import main

    assert main(["config", "--set", "redis.url=redis://redis:6379/0?password=hunter2-secret"]) == 0
    printed = capsys.readouterr().out
    assert "hunter2-secret" not in printed and "password=***" in printed


def test_secrets_of_another_host_or_a_dead_driver_are_never_used(runtime):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for change in ({"host": "another-machine"}, {"driver_pid": int(dead.stdout)}):
        secrets_id = new_secrets_id("run")
        path = save_run_secrets(secrets_id, "run", "redis://127.0.0.1:6400/0", SECRETS)
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        assert load_run_secrets(secrets_id) is None
        assert find_run_secrets("redis://127.0.0.1:6400/0") is None
        remove_run_secrets(secrets_id)


def test_of_two_live_records_for_one_loopback_port_the_newest_wins(runtime):
    older = RunSecrets(redis_password="older-password-1234")
    first = save_run_secrets(new_secrets_id("a"), "a", "redis://127.0.0.1:6400/0", older)
    os.utime(first, (1, 1))
    save_run_secrets(new_secrets_id("b"), "b", "redis://127.0.0.1:6400/0", SECRETS)
    assert find_run_secrets("redis://127.0.0.1:6400/0") == SECRETS


def test_an_inherited_opt_out_of_ray_token_auth_is_overridden_for_the_local_ray():
    """In a fresh process: the local Ray still gets a token of its own, with one warning."""
    script = (
        "import logging, os; logging.basicConfig(level=logging.WARNING)\n"
        "from system.local.ray_runtime import _use_local_token\n"
        "_use_local_token(); _use_local_token()\n"
        "print(os.environ['RAY_AUTH_MODE'], len(os.environ['RAY_AUTH_TOKEN']))\n"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_AUTH_TOKEN", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["token", "64"]
    assert done.stderr.count("is overridden: the local Ray gets a token of its own") == 1
