"""Observability end to end: a real `qfleet train`, `qfleet discovery` over its Redis, the real
Prometheus binary with deploy/prometheus/prometheus.yml (loopback addresses and 1 s intervals
swapped in), and every query of the generated Grafana dashboard evaluated through Prometheus'
HTTP API: none may error or come back without series."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import wait_until
from system.observe import dashboard

ROOT = Path(__file__).resolve().parents[2]
QFLEET = [sys.executable, "-m", "system.cli"]
RATE_WINDOW = "10s"
"""What Grafana's $__rate_interval becomes here (10 scrapes at 1 s)."""

SETTINGS = {
    "actors.num_actors": 1,
    "actors.num_cpus": 0.5,
    "env.num_envs": 4,
    "learner.hidden_size": 32,
    "learner.learning_starts": 500,
    "learner.batch_size": 64,
    "learner.publish_every": 20,
    "learner.updates_per_env_step": 0.5,
    "train.num_shards": 2,
    "train.eval_every_steps": 2000,
    "train.eval_episodes": 2,
    "train.log_every_s": 5,
    "replay.capacity": 20000,
    "train.total_env_steps": 10000000,
}
TRAIN = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def stop(proc: subprocess.Popen, group: bool = False) -> int:
    if proc.poll() is None:
        (os.killpg(proc.pid, signal.SIGINT) if group else proc.send_signal(signal.SIGINT))
        try:
            return proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            (os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill())
    return proc.wait()


@pytest.mark.timeout(300)  # a train, discovery and Prometheus; ~90 s, longer on a busy machine
def test_every_dashboard_query_returns_series_from_a_live_run(tmp_path):
    run_dir = tmp_path / "run"
    train_log = open(tmp_path / "train.log", "w+")
    train = subprocess.Popen(
        [*QFLEET, "train", "configs/cartpole.yaml", "--run-dir", str(run_dir), *TRAIN],
        stdout=train_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    prometheus_log = open(tmp_path / "prometheus.log", "w")
    procs: list[subprocess.Popen] = []
    try:
        # The run is up once the driver lists driver, learner, both shards and the actor.
        targets_file = run_dir / "prometheus" / "targets.json"

        def listed() -> bool:
            assert train.poll() is None, Path(train_log.name).read_text()[-3000:]
            return targets_file.exists() and len(json.loads(targets_file.read_text() or "[]")) == 5

        assert wait_until(listed, timeout=180, step=0.5), Path(train_log.name).read_text()[-3000:]
        run = json.loads((run_dir / "run.json").read_text())["run"]

        # `qfleet discovery` for the run's Redis, on a free port it prints.
        discovery = subprocess.Popen(
            [*QFLEET, "discovery", str(run_dir), "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        procs.append(discovery)
        match = re.search(r"http://(127\.0\.0\.1:\d+)/targets", discovery.stdout.readline())
        assert match, "qfleet discovery did not print its address"
        sd_url = f"http://{match.group(1)}/targets"
        groups = get_json(sd_url)
        assert sorted(g["labels"]["job"] for g in groups) == sorted(
            ["qfleet_train", "qfleet_learner", "qfleet_replay", "qfleet_replay", "qfleet_actor"]
        )

        # The shipped Prometheus config with loopback addresses and 1 s intervals.
        config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s")
        qfleet_job = next(job for job in config["scrape_configs"] if job["job_name"] == "qfleet")
        qfleet_job["http_sd_configs"] = [{"url": sd_url, "refresh_interval": "1s"}]
        config["scrape_configs"] = [qfleet_job]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prometheus_args = [f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        prometheus_args += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
        prometheus = subprocess.Popen(["prometheus", *prometheus_args], stdout=prometheus_log, stderr=subprocess.STDOUT)
        procs.append(prometheus)
        api = f"http://127.0.0.1:{port}/api/v1"

        def all_up() -> bool:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                active = get_json(f"{api}/targets")["data"]["activeTargets"]
            except OSError:
                return False
            return len(active) == 5 and all(t["health"] == "up" for t in active)

        assert wait_until(all_up, timeout=60, step=0.5), (tmp_path / "prometheus.log").read_text()[-3000:]

        def failed_queries() -> list[str]:
            failures = []
            for title, expr in dashboard.queries():
                query = expr.replace("$run", re.escape(run)).replace("$__rate_interval", RATE_WINDOW)
                try:
                    answer = get_json(f"{api}/query?" + urllib.parse.urlencode({"query": query}))
                except urllib.error.HTTPError as exc:  # a bad query: 400 with Prometheus' message
                    failures.append(f"{title}: {query}: {exc.read().decode()}")
                    continue
                if answer["status"] != "success" or not answer["data"]["result"]:
                    failures.append(f"{title}: {query}: {answer['status']}, {len(answer['data']['result'])} series")
            return failures

        # Rates need a window's worth of scrapes, some series a trained learner or an evaluation.
        failures: list[str] = []

        def every_query_answers() -> bool:
            failures[:] = failed_queries()
            return not failures

        wait_until(every_query_answers, timeout=90, step=1.0)
        assert not failures, "\n".join(failures)
        assert len(dashboard.queries()) >= 40
    finally:
        for proc in procs:
            stop(proc)
        code = stop(train, group=True)
        prometheus_log.close()
        train_log.close()
    assert code == 0, Path(train_log.name).read_text()[-3000:]
