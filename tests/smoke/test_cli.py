"""Each `qfleet` entry point, run as a user runs it (a subprocess), briefly."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys

import pytest

from system.config import load_config, to_yaml

QFLEET = [sys.executable, "-m", "system.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*QFLEET, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["replay"],
        ["replay", "serve"],
        ["learner", "run"],
        ["bench"],
        ["bench", "replay"],
        ["bench", "sharded"],
        ["bench", "learner"],
        ["bench", "sac-updates"],
        ["bench", "actors"],
        ["bench", "weights"],
        ["bench", "dataset"],
        ["bench", "offline"],
        ["bench", "digiq"],
        ["bench", "scaling"],
        ["bench", "e2e"],
        ["bench", "update-cost"],
        ["bench", "startup"],
        ["record"],
        ["dataset", "list"],
        ["actors", "run"],
        ["scale"],
        ["config"],
        ["train"],
        ["eval"],
        ["status"],
        ["report"],
        ["discovery"],
    ],
)
def test_help_of_every_command(args):
    result = run(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: qfleet" in result.stdout


def test_serve_help_documents_every_replay_option_from_the_dataclass():
    text = run("replay", "serve", "--help").stdout
    for option, words in [
        ("--capacity", "oldest item is evicted"),
        ("--samples-per-insert", "Reverb-style"),
        ("--checkpoint-every-s", "periodic checkpoints"),
    ]:
        assert option in text and words in " ".join(text.split())


def test_config_reference_and_resolved_config(tmp_path):
    reference = run("config")
    assert reference.returncode == 0 and "capacity: 100000" in reference.stdout
    resolved = run("config", "configs/cartpole.yaml", "--set", "replay.capacity=2048")
    assert resolved.returncode == 0 and "capacity: 2048" in resolved.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "serve", "--set", "replay.capacity=-1"], "replay.capacity"),
        (["replay", "serve", "--set", "env.id=NoSuchEnv-v9"], "env.id='NoSuchEnv-v9'"),
        (["replay", "serve", "--min-size", "10", "--capacity", "5"], "replay.min_size"),
        (["replay", "serve", "--samples-per-insert", "16", "--error-buffer", "2"], "error_buffer"),
        (["replay", "serve", "--config", "does/not/exist.yaml"], "does/not/exist.yaml"),
        (
            ["replay", "serve", "--insecure", "--capacity", str(10**12)],
            "replay.capacity=1000000000000: the table needs",
        ),
        (["actors", "run", "--redis-url", "redis://127.0.0.1:1/0", "--set", "env.id=NoSuchEnv-v9"], "NoSuchEnv-v9"),
        (["actors", "run", "--redis-url", "redis://127.0.0.1:1/0", "--num-actors", "0"], "actors.num_actors"),
        (["actors", "run", "--insecure", "--redis-url", "redis://127.0.0.1:1/0"], "redis://127.0.0.1:1/0"),
        (["scale", "--actors", "-1", "--redis-url", "redis://127.0.0.1:1/0"], "--actors -1"),
        (
            ["learner", "run", "--insecure", "--redis-url", "redis://127.0.0.1:1/0", "--lr-schedule", "linear"],
            "learner.lr_decay_updates=None",
        ),
        (["train"], "give a CONFIG"),
        (["train", "configs/cartpole.yaml", "--set", "learner.batch_sizee=3"], "learner.batch_sizee: unknown key"),
        (["train", "configs/cartpole.yaml", "--set", "env.id=NoSuchEnv-v9"], "NoSuchEnv-v9"),
        (
            ["train", "configs/cartpole.yaml", "--set", "learner.learning_starts=10"],
            "exceeds learner.learning_starts=10",
        ),
        (["train", "configs/cartpole.yaml", "--set", "replay.capacity=1000000000"], "replay.capacity=1000000000:"),
        (["train", "configs/cartpole.yaml", "--set", "ray.address=auto"], "redis.url is not set"),
        (["train", "--resume", "does/not/exist"], "not a qfleet run directory"),
        (["train", "--resume", "runs/x", "--run-dir", "runs/y"], "--run-dir with --resume"),
        (["eval", "does/not/exist"], "not a qfleet run directory"),
        (["status"], "give a RUN_DIR"),
        (["status", "--redis-url", "redis://127.0.0.1:1/0"], "redis://127.0.0.1:1/0"),
        (["discovery"], "give --redis-url"),
        (["discovery", "--redis-url", "redis://127.0.0.1:1/0"], "--redis-url redis://127.0.0.1:1/0"),
        (["discovery", "does/not/exist"], "no run.json"),
    ],
)
def test_bad_input_fails_before_serving_with_a_named_key(args, message):
    result = run(*args, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "serving at" not in result.stdout


def stopped_run(run_dir, started: bool, redis_url: str = "redis://127.0.0.1:1/0"):
    """A run directory as `qfleet train` leaves it; `started`: it got as far as run.json."""
    config = load_config("configs/cartpole.yaml", ["train.total_env_steps=5000", "train.run_name=cartpole"])
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(config))
    if started:
        (run_dir / "run.json").write_text(json.dumps({"run": "cartpole", "redis_url": redis_url}))
        state = {"env_steps": 3000, "episodes": 150, "wall_s": 90.0, "last_eval": [2500, 187.5]}
        (run_dir / "state.json").write_text(json.dumps(state))
        progress = {"kind": "progress", "env_steps": 3000, "updates": 1234, "weights_version": 12}
        (run_dir / "metrics.jsonl").write_text(json.dumps(progress) + "\n")
    return run_dir


@pytest.mark.parametrize(
    ("started", "why", "recorded"),
    [
        (True, "(its Redis at redis://127.0.0.1:1/0 is gone)", "env steps 3,000/5,000, episodes 150"),
        (False, "(it never started: no run.json in", "continue it with `qfleet train --resume"),
    ],
)
def test_status_of_a_stopped_run_says_it_is_not_running_and_what_it_last_recorded(tmp_path, started, why, recorded):
    run_dir = stopped_run(tmp_path / "run", started)
    result = run("status", str(run_dir), timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"run 'cartpole' is not running {why}" in result.stdout
    assert recorded in result.stdout and f"qfleet report {run_dir}" in result.stdout
    assert "config error" not in result.stderr and "Traceback" not in result.stderr


def test_status_of_a_stopped_run_whose_redis_still_answers_says_it_is_not_running(tmp_path, redis_server):
    run_dir = stopped_run(tmp_path / "run", started=True, redis_url=redis_server.url)
    result = run("status", str(run_dir), timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"run 'cartpole' is not running (nothing of it reports to its Redis at {redis_server.url}" in result.stdout


def test_status_with_an_unreachable_redis_url_names_it(tmp_path):
    run_dir = stopped_run(tmp_path / "run", started=True)
    result = run("status", str(run_dir), "--redis-url", "redis://127.0.0.1:2/0", timeout=60)
    assert result.returncode == 2 and "redis://127.0.0.1:2/0" in result.stderr


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_port_in_use_is_named_without_a_traceback(flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("replay", "serve", "--insecure", flag, str(port), timeout=60)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_bench_replay_runs_briefly_and_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "replay", "--only", "cartpole", "--seconds", "0.2", "--repeats", "1", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "| cartpole | insert |" in result.stdout and "| cartpole | sample |" in result.stdout
    assert "TLS / plaintext" in result.stdout and "cartpole insert with TLS + token at" in result.stdout
    (payload,) = json.loads(out.read_text())["runs"]
    rates = payload["rates"]
    assert set(rates) == {"qfleet", "qfleet_tls", "raw_grpc", "in_process"}  # --security both, the default
    assert all(rates[k][op] > 0 for k in rates for op in ("insert", "sample"))
    assert all(payload["tls_ratio"][op] > 0 for op in ("insert", "sample"))


def test_bench_priorities_runs_briefly_and_says_when_reverb_is_skipped(tmp_path):
    out = tmp_path / "priorities.json"
    args = ["--seconds", "0.2", "--repeats", "1", "--capacity", "16384", "--output", str(out)]
    result = run("bench", "priorities", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| qfleet unary |" in result.stdout and "| qfleet coalesced |" in result.stdout
    assert "Reverb not installed: skipped" in result.stdout  # reverb is no dependency of qfleet
    report = json.loads(out.read_text())
    assert all(report["qfleet"][mode]["calls_per_s"] > 0 for mode in ("unary", "stream", "coalesced"))
    assert all(report["qfleet"][mode]["applied_keys_per_s"] > 0 for mode in ("unary", "stream", "coalesced"))
    assert "keys/s applied" in result.stdout  # what the shard applied, beside what was sent
    counts = report["qfleet"]["stream"]["counts"]
    assert counts["applied"] > 0 and counts["lost"] == 0 and counts["rejected"] == 0
    assert report["reverb"] is None and report["keys_per_call"] == 256


def test_bench_offline_runs_briefly_and_reports_every_learner_and_seed(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--episodes", "20", "--updates", "20", "--seeds", "0,1", "--eval-episodes", "2", "--output", str(out)]
    result = run("bench", "offline", *args)
    assert result.returncode == 0, result.stderr
    assert "| learner | seed | greedy return (mean +- std) | vs dataset mean |" in result.stdout
    assert "filtered BC (top 10%)" in result.stdout and "IQL + Best-of-N (N=16)" in result.stdout
    payload = json.loads(out.read_text())
    assert 22 < payload["dataset_mean_return"] < 500  # a dataset of medium quality
    assert len(payload["results"]) == 5 * 2  # every learner, every seed
    assert run("bench", "offline", "--seeds", "x").returncode == 2


@pytest.mark.timeout(300)
def test_bench_scaling_measures_each_actor_count_of_a_live_run_and_stops_it(tmp_path):
    out = tmp_path / "bench.json"
    # A low UTD: a learner slowed by a loaded machine must not hold the actors back in the windows.
    settings = [
        "actors.num_cpus=0.25",
        "learner.learning_starts=256",
        "actors.insert_batch=64",
        "learner.updates_per_env_step=0.05",
    ]
    args = ["--actors", "1,2", "--seconds", "2", "--warmup-s", "1", "--output", str(out)]
    result = run("bench", "scaling", *args, *(f"--set={setting}" for setting in settings), timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    windows = json.loads(out.read_text())
    assert [(w["layout"], w["actors"]) for w in windows] == [("config", 1), ("config", 2)]
    assert all(w["inserts_per_s"] > 0 and w["nodes"] == 1 for w in windows), windows
    assert all(w["updates_per_s"] >= 0 and w["achieved_utd"] >= 0 for w in windows), windows
    assert "| layout | actors | nodes | env steps/s | inserts/s | x first |" in result.stdout
    assert "| config | 2 | 1 |" in result.stdout
    bad = run("bench", "scaling", "--layout", "no-equals-sign")
    assert bad.returncode == 2 and "expected NAME=RESOURCES" in bad.stderr


def test_bench_sharded_runs_briefly(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "sharded", "--shards", "1,2", "--seconds", "0.3", "--repeats", "1", "--output", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [row["shards"] for row in report["scaling"]] == [1, 2]
    assert all(row["insert"] > 0 and row["sample"] > 0 for row in report["scaling"])
    assert "prefetch (4 batch/request), with work" in report["prefetch"]
    assert "| consumer (2 shards, batches of 256) | batches/s |" in result.stdout


def test_bench_learner_runs_one_case_briefly(tmp_path):
    from system.bench.learner import CASES
    from system.cli.bench import LEARNER_CASES

    assert LEARNER_CASES == CASES  # the CLI offers exactly the cases the bench has

    out = tmp_path / "learner.json"
    case = "cartpole-mlp b256"
    result = run("bench", "learner", "--case", case, "--seconds", "0.5", "--repeats", "1", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"| {case} |" in result.stdout and "atari" not in result.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["case"] == case and row["grpc"] > 0 and row["grpc_tls"] > 0 and row["in_process"] > 0
    assert row["grpc_ratio"] > 0 and row["tls_ratio"] > 0 and "TLS / plaintext" in result.stdout
    assert (
        row["same_host"] > 0
        and row["same_host_ratio"] > 0
        and row["same_host_vs_grpc"] > 0
        and "same-host feed / gRPC" in result.stdout
    )
    assert set(row["cpu_ms"]) == {"in_process", "grpc", "grpc_tls", "same_host"}
    help_text = run("bench", "learner", "--help").stdout
    assert all(name in help_text for name in CASES)
    assert run("bench", "learner", "--case", "pong").returncode == 2


def test_bench_learner_feed_only_reports_cpu_per_batch_with_the_same_host_feed_used(tmp_path):
    out = tmp_path / "feed.json"
    case = "cartpole-mlp b256"  # the smallest table to fill three times over
    result = run(
        *("bench", "learner", "--feed-only", "--case", case, "--seconds", "0.3", "--repeats", "1"),
        *("--security", "on", "--output", str(out)),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["feed"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"in_process", "grpc_tls", "same_host"}
    assert all(row["batches_per_s"] > 0 and row["learner_cpu_ms"] > 0 for row in rows.values())
    assert rows["same_host"]["feed_counts"]["in_region"] > 0 and rows["same_host"]["feed_counts"]["refused"] == 0
    assert f"| {case} | same-host feed + TLS |" in result.stdout


def test_bench_sac_updates_runs_briefly_beside_sb3_or_says_it_is_missing(tmp_path):
    out = tmp_path / "sac.json"
    result = run(
        *("bench", "sac-updates", "--ensembles", "2,3", "--hidden-size", "32", "--batch-size", "64"),
        *("--seconds", "0.2", "--repeats", "1", "--output", str(out)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "| qfleet SAC, 2 LayerNorm critics |" in result.stdout
        and "| qfleet SAC, 3 LayerNorm critics |" in result.stdout
    )
    written = json.loads(out.read_text())
    results = written["results"]
    assert all(row["updates_per_cpu_s"] > 0 for row in results.values())
    sizes = [learner["sac"]["ensemble_size"] for learner in written["settings"]["learners"].values()]
    assert sizes == [2, 3]  # the settings recorded are those measured
    if importlib.util.find_spec("stable_baselines3") is None:  # qfleet's venv has no stable-baselines3
        assert "SB3 not installed: skipped" in result.stdout and "SB3 SAC.train" not in results
    else:  # SB3 installed here: the bench runs it as the reference row
        assert "| SB3 SAC.train |" in result.stdout and results["SB3 SAC.train"]["updates_per_cpu_s"] > 0
    assert run("bench", "sac-updates", "--ensembles", "1").returncode != 0  # an ensemble needs 2 critics


@pytest.mark.timeout(300)  # the run's own timeout is 240 s
def test_bench_actors_runs_briefly_and_reports_every_figure(tmp_path):
    out = tmp_path / "actors.json"
    result = run("bench", "actors", "--seconds", "0.3", "--repeats", "1", "--output", str(out), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| qfleet EnvActor as a Ray actor |" in result.stdout
    figures = json.loads(out.read_text())["results"]
    in_process = {"plain_loop", "actor_in_process", "in_process_vs_plain"}
    on_ray = {"ray_actor", "ray_actor_vs_plain", "fleet_1_actors", "fleet_2_actors"}
    assert set(figures) == in_process | on_ray
    assert all(value > 0 for value in figures.values())


@pytest.mark.timeout(300)  # the run's own timeout is 240 s
def test_bench_weights_runs_briefly_with_both_transports(tmp_path):
    out = tmp_path / "weights.json"
    args = ["--subscribers", "2", "--sizes-mb", "2", "--repeats", "2", "--output", str(out)]
    result = run("bench", "weights", *args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 2 | 2.0 MB | object_store |" in result.stdout and "| 2 | 2.0 MB | redis |" in result.stdout
    rows = {row["transport"]: row for row in json.loads(out.read_text())["results"]}
    assert rows.keys() == {"object_store", "redis"}
    assert all(0 < row["p50_s"] <= row["p99_s"] for row in rows.values())
    assert rows["redis"]["redis_bytes_per_publish"] > 2 * 2_000_000  # the payload, once per subscriber
    assert rows["object_store"]["redis_bytes_per_publish"] < 50_000  # the manifest and version polls
    assert run("bench", "weights", "--transports", "carrier-pigeon").returncode == 2


def test_bench_dataset_times_each_stage_for_both_shapes_of_episodes(tmp_path, capsys):
    from system.cli import main

    out = tmp_path / "dataset.json"
    assert main(["bench", "dataset", "--steps", "4000", "--n-step", "3", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| episodes | steps | longest |" in text and "| even (" in text and "| uneven (" in text
    rows = json.loads(out.read_text())["rows"]
    assert [row["shape"] for row in rows] == ["even", "uneven"]
    assert all(row["steps"] == 4000 and row["read_s"] > 0 and row["insert_s"] > 0 for row in rows)
    assert rows[1]["longest"] == 2000  # the uneven dataset's one long episode
