"""A running embedded `qfleet train` (the default: no redis.url, no ray.address), tried as another
local process would: its Redis refuses clients without the run's password, its Ray refuses
processes without the run's token (RAY_AUTH_MODE=disabled, or a wrong token), nothing of it listens
off loopback, and the password and token are found in no argv, no file of the run folder, not in
its output, `qfleet status` or a discovery 503; the private secrets file is 0600 and goes with the run.
SIGTERM to the driver alone stops it in the same order as Ctrl-C (one run serves both checks: a
`qfleet train` start is the suite's costliest step)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from test_train import QFLEET, SMALL, alive, descendants, overrides

from actors import ActorRegistry
from conftest import wait_until
from learner import LearnerStatus
from replay import ShardRegistry
from system.local.secrets import load_run_secrets, secrets_dir

JOIN = """
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level=50)
except Exception as exc:
    print("REFUSED", type(exc).__name__)
else:
    print("JOINED", sorted(ray.util.list_named_actors(all_namespaces=True), key=str))
"""
"""A process that tries to join a Ray cluster as a driver and says what happened."""


def join_attempt(gcs_address: str, **env: str) -> subprocess.Popen:
    """`ray.init(address=gcs_address)` in a fresh process with `env` as its Ray auth settings.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as the run has it: otherwise Ray rewrites 127.0.0.1 to the
    machine's address, where nothing of the run listens, and the attempt never reaches the GCS."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    return subprocess.Popen(
        [sys.executable, "-c", JOIN, gcs_address],
        env={**clean, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def listening_sockets(pids: set[int]) -> set[str]:
    """host:port of every TCP socket these processes listen on (from /proc; IPv4 and IPv6)."""
    inodes: dict[str, str] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            host = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words)
            inodes[fields[9]] = f"{host}:{int(port, 16)}"
    found = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        found |= {inodes[m[1]] for m in map(re.compile(r"socket:\[(\d+)\]").match, links) if m and m[1] in inodes}
    return found


def loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def files_holding(root: Path, secrets: list[bytes]) -> list[str]:
    """Files under `root` (recursively, bytes as they are) that contain any of `secrets`."""
    return [str(p) for p in root.rglob("*") if p.is_file() and any(s in p.read_bytes() for s in secrets)]


@pytest.mark.timeout(420)
def test_a_running_train_refuses_outsiders_stops_in_order_on_sigterm_and_leaves_no_secret_behind(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    # The product default: no Ray token or Redis password from the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_") and k != "QFLEET_REDIS_PASSWORD"}
    run_dir = tmp_path / "run"
    log = open(tmp_path / "train.log", "w+")
    settings = {"train.eval_every_steps": 0, "train.total_env_steps": 1_000_000}
    proc = subprocess.Popen(
        [*QFLEET, "train", "configs/cartpole.yaml", "--run-dir", str(run_dir), *SMALL, *overrides(settings)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    discovery = None
    try:
        info = {}

        def learning() -> bool:
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            metrics = run_dir / "metrics.jsonl"
            if not (metrics.exists() and re.search(r'"updates":[1-9]', metrics.read_text())):
                return False
            info.update(json.loads((run_dir / "run.json").read_text()))
            return True

        assert wait_until(learning, timeout=240, step=0.5), Path(log.name).read_text()[-3000:]
        store = secrets_dir() / f"{info['secrets_id']}.json"
        assert store.parent == runtime / "qfleet" and store.stat().st_mode & 0o777 == 0o600
        run_secrets = load_run_secrets(info["secrets_id"])
        password, token = run_secrets.redis_password, run_secrets.ray_token
        assert password and token and len(password) >= 32 and len(token) >= 32
        assert password.encode() not in (run_dir / "run.json").read_bytes()

        # Ray: token-less and wrong-token joins are refused; the run's token joins (the address is right).
        gcs = info["ray_address"]
        assert gcs.startswith("127.0.0.1:"), gcs
        attempts = {
            "disabled": join_attempt(gcs, RAY_AUTH_MODE="disabled"),
            "wrong token": join_attempt(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
            "run's token": join_attempt(gcs, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
        }

        # Redis: no password, NOAUTH; with the run's, the shard, the learner and the actor are there.
        host, port = info["redis_url"].split("//")[1].split("/")[0].split(":")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=host, port=int(port), protocol=2, socket_timeout=5).ping()
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"KEYS *\r\n")
            assert raw.recv(200).startswith(b"-NOAUTH")
        url = f"redis://:{password}@{host}:{port}/0"
        shards, learner = ShardRegistry(url, info["run"]), LearnerStatus(url, info["run"])
        actors = ActorRegistry(url, info["run"])
        assert wait_until(lambda: actors.actors() and learner.read() and shards.live_shards(), timeout=60)
        for client in (shards, learner, actors):
            client.close()

        # Nothing the run started listens off loopback; no process of it has a secret in its argv.
        pids = descendants(proc.pid) | {proc.pid}
        listening = listening_sockets(pids)
        assert listening and all(loopback(a) for a in listening), sorted(listening)
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert password.encode() not in argv and token.encode() not in argv, argv
        # Ray's sockets and logs live below a folder only this user can enter (Ray's own folders
        # are world-writable): the raylet was started on that folder's session.
        private = Path(tempfile.gettempdir()) / f"qfleet-{os.getuid()}"
        assert private.stat().st_mode & 0o777 == 0o700
        raylet_argv = [
            Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids if Path(f"/proc/{pid}/cmdline").exists()
        ]
        assert any(b"raylet" in argv and str(private / "ray").encode() in argv for argv in raylet_argv)

        # `qfleet status RUN_DIR` and `qfleet discovery RUN_DIR` reach it with the saved password.
        status = subprocess.run([*QFLEET, "status", str(run_dir)], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "shards: 1 live" in status.stdout, status.stdout + status.stderr
        assert password not in status.stdout + status.stderr
        discovery = subprocess.Popen(
            [*QFLEET, "discovery", str(run_dir), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        first = discovery.stdout.readline()
        served = re.search(r"http://(127\.0\.0\.1:\d+)/targets", first)
        assert served, first
        targets = f"http://{served[1]}/targets"
        assert urllib.request.urlopen(targets, timeout=10).status == 200

        outcomes = {name: attempt.communicate(timeout=120)[0] for name, attempt in attempts.items()}
        assert outcomes["disabled"].startswith("REFUSED"), outcomes
        assert outcomes["wrong token"].startswith("REFUSED"), outcomes
        assert outcomes["run's token"].startswith("JOINED") and "-learner" in outcomes["run's token"], outcomes

        # SIGTERM, what Kubernetes, systemd and `ray job stop` send, to the driver alone (`kill PID`):
        # the same orderly stop as Ctrl-C to the process group (tests/smoke/test_train.py).
        # Its children go with it: none of them got the signal, yet none outlives it.
        children = (pids | descendants(proc.pid)) - {proc.pid}
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=180)
        assert code == 0, Path(log.name).read_text()[-3000:]
        assert wait_until(lambda: not [pid for pid in children if alive(pid)], timeout=60, step=0.5), [
            Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in children if alive(pid)
        ]

        # Its Redis is gone: discovery answers 503, naming the Redis but not the password.
        def unavailable() -> bool:
            try:
                urllib.request.urlopen(targets, timeout=10)
            except urllib.error.HTTPError as exc:
                unavailable.body = exc.read().decode()
                return exc.code == 503
            return False

        assert wait_until(unavailable, timeout=30, step=0.5)
        assert info["redis_url"] in unavailable.body and password not in unavailable.body
        discovery.send_signal(signal.SIGTERM)
        printed = first + discovery.communicate(timeout=30)[0]
        assert "cannot read" in printed and password not in printed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if discovery is not None and discovery.poll() is None:
            discovery.kill()
            discovery.wait()
        log.close()

    # It stopped in order: the learner and the shard checkpointed, and it says how to go on.
    output = Path(log.name).read_text()
    assert "received SIGTERM: stopping in order" in output
    assert list((run_dir / "checkpoints").glob("learner-*.pt")), output[-3000:]
    assert list((run_dir / "replay" / "shard-0").glob("*.safetensors")), output[-3000:]
    assert "continue it with: qfleet train --resume" in output

    # After the run: the secrets file is gone; neither secret is in the run folder or its output.
    assert not store.exists()
    secrets = [password.encode(), token.encode()]
    assert files_holding(run_dir, secrets) == []
    assert not any(s in Path(log.name).read_bytes() for s in secrets)
