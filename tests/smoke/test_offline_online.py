"""`qfleet train` with an `offline:` phase as a user runs it (subprocesses): `qfleet record` makes a
small CartPole dataset with a uniform random policy, then one run learns from it alone (IQL) and
goes on online with actors, every batch half dataset, half actors' data. A dataset that does not
match the env, or is missing, stops the run before anything starts."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

QFLEET = [sys.executable, "-m", "system.cli"]

CONFIG = "configs/cartpole_offline_online.yaml"
"""The shipped config (IQL + AWR, 50/50 mix), made smaller below."""

SETTINGS = {
    "env.num_envs": 4,
    "actors.num_cpus": 0.5,
    "learner.batch_size": 64,
    "learner.learning_starts": 500,
    "learner.publish_every": 25,
    "replay.capacity": 20000,
    "offline.updates": 1500,
    "offline.eval_every_updates": 500,
    "train.total_env_steps": 4000,
    "train.eval_every_steps": 2000,
    "train.eval_episodes": 5,
    "train.log_every_s": 2,
}

DATASET_MEAN_RETURN = 22.0
"""A uniform random policy's mean CartPole return (the dataset's: about 22)."""

BAR = 100.0
"""The final (online) evaluation's mean return must reach this: 4.5x the dataset's mean. Offline
IQL alone reached 208-438 after 2,000 updates in the runs measured; 100 leaves room for a loaded
machine's noise."""


def qfleet(*args: str, timeout: float = 280) -> subprocess.CompletedProcess:
    return subprocess.run([*QFLEET, *args], capture_output=True, text=True, timeout=timeout, check=False)


def overrides(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A CartPole dataset of 100 episodes of a uniform random policy, made by `qfleet record`."""
    folder = tmp_path_factory.mktemp("datasets")
    recorded = qfleet(
        "record",
        "cartpole/random-v0",
        "--config",
        "configs/cartpole.yaml",
        "--epsilon",
        "1",
        "--episodes",
        "100",
        "--datasets-dir",
        str(folder),
    )
    assert recorded.returncode == 0, recorded.stderr
    return folder


def records(run_dir, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.timeout(300)
def test_an_offline_then_online_run_goes_through_both_phases_and_learns(datasets, tmp_path):
    run_dir = tmp_path / "run"
    settings = {**SETTINGS, "offline.datasets_dir": str(datasets)}
    out = qfleet("train", CONFIG, "--run-dir", str(run_dir), *overrides(settings))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "offline dataset cartpole/random-v0" in out.stdout
    assert "offline phase: updates" in out.stdout and "online phase: env steps" in out.stdout
    assert "offline phase done at update 1,500" in out.stdout

    phases = records(run_dir, "phase")
    assert [p["phase"] for p in phases] == ["offline", "online"]
    switch = phases[1]
    assert switch["updates"] == 1500 and switch["env_steps"] == 0
    progress = records(run_dir, "progress")
    offline = [p for p in progress if p["phase"] == "offline"]
    online = [p for p in progress if p["phase"] == "online"]
    assert offline and online and all(p["env_steps"] == 0 and p["actors"] == 0 for p in offline)
    assert all(p["wall_s"] >= switch["wall_s"] - 1.5 for p in online)  # recorded within a round of the switch
    assert max(p["updates"] for p in offline) <= 1500
    # The UTD is counted on online data: offline updates do not inflate it.
    assert 0.2 <= online[-1]["achieved_utd"] <= 0.6

    evals = records(run_dir, "eval")
    offline_evals = [e for e in evals if e["phase"] == "offline"]
    online_evals = [e for e in evals if e["phase"] == "online"]
    assert offline_evals and offline_evals[-1]["updates"] >= 1500 - 25  # the offline phase's result
    assert offline_evals[-1]["env_steps"] == 0  # taken before the actors start (the bench's figure at step 0)
    assert online_evals and online_evals[-1]["env_steps"] == 4000
    figures = [(e["phase"], e["updates"], e["env_steps"], e["wall_s"], e["mean_return"]) for e in evals]
    print("evaluations (phase, updates, env steps, wall s, mean return):", figures, "switch:", switch)
    assert online_evals[-1]["mean_return"] >= BAR, figures

    state = json.loads((run_dir / "state.json").read_text())
    assert state["phase"] == "online" and state["online_from"]["updates"] == 1500
    summary = (run_dir / "summary.md").read_text()
    assert "| phase | online |" in summary and "offline phase result" in summary
    assert (run_dir / "learning_curve.png").stat().st_size > 0


def test_a_dataset_of_another_env_stops_the_run_before_anything_starts(datasets, tmp_path):
    """(A missing dataset: tests/unit/test_offline_phase.py, through the same plan.)"""
    run_dir = tmp_path / "run"
    given = {**SETTINGS, "offline.datasets_dir": str(datasets), "env.id": "Acrobot-v1"}
    out = qfleet("train", CONFIG, "--run-dir", str(run_dir), *overrides(given), timeout=120)
    assert out.returncode == 2, out.stderr
    assert "dataset 'cartpole/random-v0'" in out.stderr and "observation_space" in out.stderr
    assert not run_dir.exists()


@pytest.mark.timeout(400)
def test_an_offline_only_filtered_bc_run_stopped_by_sigterm_mid_phase_resumes_to_exactly_its_updates_and_no_actors(
    datasets, tmp_path
):
    """SIGTERM once the offline phase has made updates; the resume finishes it. The first session's
    phase is made far too long to end before the signal (however slow the machine), and the resume
    sets where it ends: 200 updates past the stop. Then the run is checked as an offline-only run:
    evaluated, no actors, no episodes, one phase."""
    import torch

    run_dir = tmp_path / "run"
    settings = {
        **SETTINGS,
        "offline.datasets_dir": str(datasets),
        "offline.updates": 1_000_000,
        "offline.eval_every_updates": 0,
        "train.total_env_steps": 0,
        "train.eval_episodes": 1,
        "train.log_every_s": 1,
        "learner.loss": "filtered_bc",
    }
    first = subprocess.Popen(
        [*QFLEET, "train", CONFIG, "--run-dir", str(run_dir), *overrides(settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in first.stdout:
            seen.append(line)
            made = re.search(r"offline phase: updates ([\d,]+)/", line)
            if made and int(made.group(1).replace(",", "")) > 0:
                break
        first.send_signal(signal.SIGTERM)
        out = "".join(seen) + first.stdout.read()
        assert first.wait(timeout=120) == 0, out[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert "offline only: 1,000,000 updates on it alone" in out
    stopped = re.search(r"stopped at update ([\d,]+) of the offline phase", out)
    assert stopped, out[-3000:]
    stopped_at = int(stopped.group(1).replace(",", ""))
    target = stopped_at + 200

    resumed = qfleet("train", "--resume", str(run_dir), "--set", f"offline.updates={target}", timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"offline phase done at update {target:,}; offline only" in resumed.stdout
    finished = f"finished at update {target:,} of the offline phase (ends at update {target:,}), offline only"
    assert finished in resumed.stdout

    newest = max((run_dir / "checkpoints").glob("learner-*.pt"))
    state = torch.load(newest, weights_only=True)
    assert state["counters"]["updates"] == target
    assert state["phase"] == {"phase": "offline", "offline_updates": target, "online_from": None}
    assert [p["phase"] for p in records(run_dir, "phase")] == ["offline"]  # one phase, resumed: no new boundary
    progress = records(run_dir, "progress")
    assert all(p["phase"] == "offline" and p["env_steps"] == 0 for p in progress)
    assert max(p["updates"] for p in progress) == target
    learner = json.loads((run_dir / "run.json").read_text())["learner"]
    assert learner["resumed_at"] == stopped_at and learner["updates_lost"] == 0  # nothing redone
    assert all(p["actors"] == 0 for p in progress) and not records(run_dir, "episodes")
    final = [e for e in records(run_dir, "eval") if e["final"]]
    assert final[-1]["phase"] == "offline" and final[-1]["updates"] >= target
    summary = (run_dir / "summary.md").read_text()
    assert "| phase | offline (offline only: no actors) |" in summary
