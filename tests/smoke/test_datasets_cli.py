"""`qfleet record` from a run's checkpoint, then `qfleet dataset list` and `info`, as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from learner import ActionSpace, make_agent
from learner.checkpoint import rng_state
from learner.checkpoint import save as save_checkpoint
from system.config import load_config
from system.train import RunDir


def qfleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "system.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def make_run(tmp_path):
    """A run directory with config.yaml and one learner checkpoint (update 5, weights version 7)."""
    run = RunDir(tmp_path / "run")
    config = load_config(None, ["env.id=CartPole-v1", "env.num_envs=2"])
    run.write_config(config)
    agent = make_agent(config.learner, (4,), ActionSpace(num_actions=2), torch.device("cpu"))
    state = {
        "agent": agent.state_dict(),
        "counters": {"updates": 5, "version": 7},
        "rng": rng_state(np.random.default_rng()),
    }
    save_checkpoint(run.checkpoints, state, 5)
    return run


def test_record_from_a_checkpoint_then_list_and_info(tmp_path):
    run = make_run(tmp_path)
    datasets = tmp_path / "datasets"
    recorded = qfleet(
        "record",
        "cartpole/ckpt-v0",
        "--policy",
        str(run.path),
        "--epsilon",
        "0.3",
        "--episodes",
        "4",
        "--actors",
        "2",
        "--datasets-dir",
        str(datasets),
    )
    assert recorded.returncode == 0, recorded.stderr
    assert "recorded" in recorded.stdout and "cartpole/ckpt-v0" in recorded.stdout

    listed = qfleet("dataset", "list", "--datasets-dir", str(datasets))
    assert listed.returncode == 0, listed.stderr
    assert "cartpole/ckpt-v0" in listed.stdout and "CartPole-v1" in listed.stdout

    info = qfleet("dataset", "info", "cartpole/ckpt-v0", "--datasets-dir", str(datasets), "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["episodes"] >= 4 and summary["steps"] >= summary["episodes"]
    assert summary["policy_versions"] == [7, 7]  # the checkpoint's weights version, on every episode
    assert summary["epsilons"] == [0.3]
    assert summary["recorded_by"]["policy"]["checkpoint"] == "learner-000000000005.pt"
    assert summary["returns"]["min"] >= 1

    text = qfleet("dataset", "info", "cartpole/ckpt-v0", "--datasets-dir", str(datasets))
    assert "policy versions 7..7" in text.stdout and "epsilon 0.3" in text.stdout


def test_info_of_a_missing_dataset_names_it(tmp_path):
    out = qfleet("dataset", "info", "nothing/here-v0", "--datasets-dir", str(tmp_path))
    assert out.returncode == 2
    assert "dataset 'nothing/here-v0'" in out.stderr and "no dataset" in out.stderr
