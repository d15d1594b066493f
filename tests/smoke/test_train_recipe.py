"""`qfleet train --env ENV_ID` as a new user runs it on a task no config was tuned for (Acrobot,
negative returns): the default recipe's auto value support holds the returns and nothing warns; the
CartPole support [0, 110] set by hand warns at start, once in the learner's log when targets are
clamped, in the progress lines, in metrics.jsonl and in the learner's metric. On a continuous task
(Pendulum) the SAC recipe trains and warns of nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import wait_until

QFLEET = [sys.executable, "-m", "system.cli"]

TINY = {
    "actors.num_actors": 1,
    "actors.num_cpus": 0.5,
    "env.num_envs": 4,
    "learner.hidden_size": 32,
    "learner.learning_starts": 300,
    "learner.batch_size": 64,
    "learner.publish_every": 20,
    "train.eval_every_steps": 0,
    "train.eval_episodes": 1,
    "train.log_every_s": 1,
    "replay.capacity": 20000,
}


def overrides(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.timeout(600)  # < 40 s on a quiet machine; Ray's start alone took 90 s at load 48 on 2 cores
def test_train_env_acrobot_with_the_default_recipe_derives_a_support_that_clamps_nothing(tmp_path):
    run_dir = tmp_path / "run"
    command = [*QFLEET, "train", "--env", "Acrobot-v1", "--run-dir", str(run_dir)]
    settings = TINY | {"train.total_env_steps": 1500, "train.eval_every_steps": 500}
    done = subprocess.run([*command, *overrides(settings)], capture_output=True, text=True, timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "value support [-110, 10], 51 bins of width 2.35 (auto: rewards in [-1, -1]" in output
    assert "cannot hold the" not in output and "CLAMPED" not in output
    assert "ahead of the learner" not in output  # insert settings derived from the run
    assert "fell outside the value support" not in output
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["env"]["id"] == "Acrobot-v1"
    assert (config["learner"]["loss"], config["learner"]["v_min"], config["learner"]["v_max"]) == (
        "hl_gauss",
        -110.0,
        10.0,
    )
    assert config["actors"]["insert_batch"] == 15  # 2% of 1,500 steps: 30 in flight at most
    # Evaluations are labelled with their multiple of train.eval_every_steps (the weights taken at or
    # after it: as soon as the learner's first weights are announced).
    for record in records(run_dir, "eval"):
        scheduled = record.get("scheduled_env_steps", record["env_steps"])
        assert scheduled % 500 == 0 and 0 <= record["env_steps"] - scheduled < 500, record
    fractions = [r["clamped_fraction"] for r in records(run_dir, "progress") if "clamped_fraction" in r]
    assert fractions and max(fractions) <= 0.01, fractions
    assert records(run_dir, "progress")[-1]["updates"] > 0


@pytest.mark.timeout(600)
def test_a_hand_set_support_that_cannot_hold_acrobots_returns_warns_everywhere(tmp_path):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "train.log", "w+")
    # Hard target copies every 10 updates: Q falls below 0 (where [0, 110] clamps) within seconds.
    settings = TINY | {
        "train.total_env_steps": 1_000_000,
        "learner.v_min": 0,
        "learner.v_max": 110,
        "learner.target_update_every": 10,
    }
    command = [*QFLEET, "train", "--env", "Acrobot-v1", "--run-dir", str(run_dir), *overrides(settings)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def clamping_recorded() -> bool:
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            return any(r.get("clamped_fraction", 0) > 0.5 for r in records(run_dir, "progress"))

        assert wait_until(clamping_recorded, timeout=420, step=0.5), Path(log.name).read_text()[-3000:]
        learner_metrics = json.loads((run_dir / "run.json").read_text())["learner"]["metrics"]

        def metric_value() -> float:
            text = urllib.request.urlopen(f"http://{learner_metrics}/metrics", timeout=10).read().decode()
            line = next(
                line for line in text.splitlines() if line.startswith("qfleet_learner_clamped_target_fraction{")
            )
            return float(line.rsplit(" ", 1)[1])

        assert wait_until(lambda: metric_value() > 0.5, timeout=30, step=0.5)

        def progress_says_so() -> bool:
            return "CLAMPED TARGETS" in Path(log.name).read_text()

        assert wait_until(progress_says_so, timeout=30, step=0.5), Path(log.name).read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    output = Path(log.name).read_text()
    assert "learner.v_min/v_max=[0, 110] cannot hold the discounted returns random play reached on Acrobot-v1" in output
    # The learner says it once (its log reaches the terminal through Ray); the progress lines while it lasts.
    assert output.count("of a batch's targets fell outside the value support [learner.v_min=0.0") == 1, output[-3000:]
    progress = [line for line in output.splitlines() if "env steps" in line and "updates" in line]
    assert any("CLAMPED TARGETS" in line and "of the batch" in line for line in progress)


@pytest.mark.timeout(600)
def test_train_env_pendulum_with_the_sac_recipe_makes_updates_and_warns_of_nothing(tmp_path):
    run_dir = tmp_path / "run"
    # Insert settings left to the run: derived from its 1,500 steps, so the plan warns of nothing.
    settings = TINY | {"train.total_env_steps": 1500}
    command = [*QFLEET, "train", "--env", "Pendulum-v1", "--run-dir", str(run_dir), *overrides(settings)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if "WARNING" in line or "Warning" in line]
    # An actor's overdue chunk (a slow env or start on a loaded machine) depends on the load, not on the
    # recipe; any other warning is the recipe's.
    assert [line for line in warnings if "has not finished a chunk within" not in line] == [], output[-3000:]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["env"]["id"], config["learner"]["loss"], config["learner"]["ensemble_size"]) == (
        "Pendulum-v1",
        "sac",
        2,
    )
    assert records(run_dir, "progress")[-1]["updates"] > 0
