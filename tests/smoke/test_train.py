"""`qfleet train`, `status`, `eval`, `report` and `--resume` as a user runs them (subprocesses):
the embedded default (redis-server child, local Ray, a shard, the learner, an actor), stopped with
Ctrl-C, then resumed to the end (SIGTERM's stop: tests/smoke/test_run_secrets.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from actors import ActorRegistry
from conftest import wait_until
from replay import (
    ReplayAuthenticationError,
    ReplayClient,
    ReplayCredentials,
    ReplayTLSError,
    ReplayUnavailableError,
    generate_credentials,
)
from system.local.secrets import load_run_secrets, secrets_dir
from system.train.startup import PHASE_NAMES

QFLEET = [sys.executable, "-m", "system.cli"]

SETTINGS = {
    "actors.num_actors": 1,
    "actors.num_cpus": 0.5,
    "env.num_envs": 4,
    "learner.hidden_size": 32,
    "learner.learning_starts": 500,
    "learner.batch_size": 64,
    "learner.publish_every": 20,
    "learner.updates_per_env_step": 0.5,
    "train.eval_every_steps": 1000,
    "train.eval_episodes": 3,
    "train.log_every_s": 1,
    "replay.capacity": 20000,
}


def overrides(settings: dict) -> list[str]:
    """`--set key=value` arguments."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


SMALL = overrides(SETTINGS)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0


def qfleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*QFLEET, *args], capture_output=True, text=True, timeout=timeout)


def records(run_dir: Path, kind: str) -> list[dict]:
    """The run's metrics records of `kind`; a last line still being written is left out."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    found = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise
        if record["kind"] == kind:
            found.append(record)
    return found


def assert_fault_in_time(env_steps: int, budget: int) -> None:
    """A fault test's run is kept short: one that reached half its budget before the fault was
    injected is on a machine faster than the budget was sized for, and says so rather than failing
    later on a run that ended before it showed the recovery."""
    assert env_steps < budget / 2, f"budget too small for this machine: fault at {env_steps:,} of {budget:,} env steps"


def test_train_status_ctrl_c_eval_report_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "train.log", "w+")
    command = [*QFLEET, "train", "configs/cartpole.yaml", "--run-dir", str(run_dir), *SMALL]
    proc = subprocess.Popen(
        [*command, *overrides({"train.total_env_steps": 1_000_000})],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen_pids: set[int] = set()
    addresses: set[str] = set()
    status = None
    try:

        def trained_and_evaluated() -> bool:
            seen_pids.update(descendants(proc.pid))
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            metrics = run_dir / "metrics.jsonl"
            text = metrics.read_text() if metrics.exists() else ""
            return '"kind":"eval"' in text and '"kind":"startup"' in text

        assert wait_until(trained_and_evaluated, timeout=240, step=0.5), Path(log.name).read_text()[-3000:]
        info = json.loads((run_dir / "run.json").read_text())
        addresses |= {info["redis_url"].split("//")[1].split("/")[0], info["shards"][0]["address"]}
        addresses.add(info["learner"]["metrics"])
        # The run's shard serves TLS with this start's certificate and wants its token: a client
        # without them, or with another run's, gets nowhere (no credential is in the run folder).
        shard = info["shards"][0]["address"]
        with ReplayClient(shard, retry_for_s=0.3) as outsider, pytest.raises(ReplayUnavailableError):
            outsider.info()
        with ReplayClient(shard, credentials=generate_credentials()) as outsider, pytest.raises(ReplayTLSError):
            outsider.info()
        # Any peer can read the shard's real certificate off the wire and pin it: the token still
        # keeps it out (none, or a wrong one: UNAUTHENTICATED).
        host, port = shard.rsplit(":", 1)
        real_cert = ssl.get_server_certificate((host, int(port))).encode()
        pinned = ReplayCredentials(generate_credentials().token, real_cert)
        with ReplayClient(shard, credentials=pinned) as outsider, pytest.raises(ReplayAuthenticationError):
            outsider.info()
        tls = grpc.ssl_channel_credentials(root_certificates=real_cert)
        with grpc.secure_channel(
            shard, tls, options=[("grpc.ssl_target_name_override", pinned.server_name)]
        ) as channel:
            info_call = channel.unary_unary("/qfleet.replay.ReplayService/Info")
            with pytest.raises(grpc.RpcError) as token_less:
                info_call(b"", timeout=10)
            assert token_less.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The run's Redis takes the password the driver saved in the private secrets folder.
        password = load_run_secrets(info["secrets_id"]).redis_password
        registry = ActorRegistry(info["redis_url"].replace("//", f"//:{password}@"), info["run"])
        assert wait_until(lambda: registry.actors(), timeout=30)
        actor_metrics = {r["metrics"] for r in registry.actors().values()}
        addresses |= actor_metrics | {info["shards"][0]["metrics"]}
        registry.close()
        assert all(listening(a) for a in addresses), addresses
        # Prometheus discovery: the driver lists every component's /metrics (and its own).
        addresses.add(info["metrics"])
        targets_file = run_dir / "prometheus" / "targets.json"
        assert wait_until(lambda: len(json.loads(targets_file.read_text())) == 4, timeout=30)
        groups = {g["labels"]["job"]: g for g in json.loads(targets_file.read_text())}
        assert set(groups) == {"qfleet_train", "qfleet_learner", "qfleet_replay", "qfleet_actor"}
        scraped = {info["metrics"], info["learner"]["metrics"], info["shards"][0]["metrics"]} | actor_metrics
        assert {t for g in groups.values() for t in g["targets"]} == scraped
        driver = urllib.request.urlopen(f"http://{info['metrics']}/metrics", timeout=10).read().decode()
        assert 'qfleet_train_env_steps{run="run"}' in driver

        status = qfleet("status", str(run_dir), timeout=60)
        seen_pids.update(descendants(proc.pid))
        # Ctrl-C in a terminal goes to the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = Path(log.name).read_text()
    assert code == 0, output[-3000:]

    # The live view named the learner, the shard and the actor.
    assert status.returncode == 0, status.stderr
    assert "learner: " in status.stdout and " updates (" in status.stdout
    assert "start-up: started in " in status.stdout  # the session's start-up breakdown
    assert "shards: 1 live" in status.stdout and "actors: 1 reporting, 1 wanted" in status.stdout

    # A clean stop: every child process gone, every port closed, the run saved, its secrets file
    # gone (SIGTERM to the driver alone: tests/smoke/test_run_secrets.py).
    assert seen_pids and not [pid for pid in seen_pids if alive(pid)]
    assert not (secrets_dir() / f"{info['secrets_id']}.json").exists()
    assert not [a for a in addresses if listening(a)]
    assert json.loads((run_dir / "prometheus" / "targets.json").read_text()) == []  # nothing left to scrape
    assert "received SIGINT" in output and "continue it with: qfleet train --resume" in output
    assert "-----BEGIN" not in output  # no certificate or key in the logs ...
    assert not [f for f in run_dir.rglob("*") if f.is_file() and b"-----BEGIN" in f.read_bytes()]  # nor the run
    assert (run_dir / "config.yaml").exists() and (run_dir / "learning_curve.png").stat().st_size > 10_000
    assert "| env steps |" in (run_dir / "summary.md").read_text()
    checkpoints = sorted((run_dir / "checkpoints").glob("learner-*.pt"))
    assert checkpoints and list((run_dir / "replay" / "shard-0").glob("*.safetensors"))
    first = json.loads((run_dir / "state.json").read_text())
    assert first["env_steps"] >= 1000 and first["episodes"] > 0
    progress = records(run_dir, "progress")
    assert progress[-1]["updates"] > 0 and progress[-1]["weights_version"] > 0
    assert records(run_dir, "eval") and records(run_dir, "episodes")
    # The start-up, phase by phase, in seconds since `qfleet train` began: every phase reached,
    # each after what it waits for (a fresh run's actors and learner start beside the shards, and
    # an actor is up once one shard serves, which may come before "shards": that waits for every
    # shard's answer to the driver; a resumed run's learner after the shards: below).
    (startup,) = records(run_dir, "startup")
    phases = startup["phases"]
    assert list(phases) == list(PHASE_NAMES) and all(at is not None and at > 0 for at in phases.values())
    assert phases["driver"] <= phases["redis"] <= phases["ray"] <= phases["shards"]
    assert phases["ray"] <= phases["learner"]
    assert phases["ray"] <= phases["envs"] <= phases["actors"] <= phases["first_env_step"]
    assert phases["first_env_step"] <= phases["first_insert"] <= phases["first_update"]
    assert phases["learner"] <= phases["first_update"]
    assert output.count("qfleet train: started in ") == 1
    assert "| start-up: first env step / first update |" in (run_dir / "summary.md").read_text()

    # `eval` loads the newest checkpoint without Redis, Ray or shards.
    evaluated = qfleet("eval", str(run_dir), "--episodes", "2", timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr
    assert checkpoints[-1].name in evaluated.stdout and "mean return" in evaluated.stdout
    result = json.loads((run_dir / "eval.json").read_text())
    assert len(result["returns"]) == 2 and all(r >= 1 for r in result["returns"])

    reported = qfleet("report", str(run_dir), timeout=120)
    assert reported.returncode == 0, reported.stderr
    assert "| final evaluation |" in reported.stdout

    # --resume continues the counters, the learner and the replay, and stops at the target: the
    # last chunks of the actors are shortened to it (1500 is a whole number of vector steps).
    target = first["env_steps"] + 1500
    resumed = subprocess.run(
        [*QFLEET, "train", "--resume", str(run_dir), *overrides({"train.total_env_steps": target})],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"resuming at {first['env_steps']:,} env steps" in resumed.stdout
    assert "restored" in resumed.stderr and "resumed at update" in resumed.stderr
    second = json.loads((run_dir / "state.json").read_text())
    assert second["env_steps"] == target and second["episodes"] > first["episodes"]
    assert second["wall_s"] > first["wall_s"]
    after = records(run_dir, "progress")[len(progress) :]
    assert after and after[0]["env_steps"] >= first["env_steps"]
    assert after[0]["updates"] >= progress[-1]["updates"]  # from the checkpoint on, not from 0
    assert records(run_dir, "progress")[-1]["final"] and records(run_dir, "progress")[-1]["env_steps"] == target
    assert f"finished at {target:,} env steps" in resumed.stdout
    # A resumed run's actors start once its learner has restored (and published) its weights.
    resumed_phases = records(run_dir, "startup")[-1]["phases"]
    # (not the first insert: a record taken at the stop may precede the report that stamps it; it
    # was missing once in a CI dry run)
    started = ("driver", "redis", "ray", "shards", "learner", "envs", "actors", "first_env_step")
    assert len(records(run_dir, "startup")) == 2 and None not in [resumed_phases[k] for k in started]
    assert resumed_phases["shards"] <= resumed_phases["learner"] <= resumed_phases["envs"]
