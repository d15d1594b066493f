"""`qfleet record` from a run's checkpoint as a subprocess, SIGKILLed mid-recording; then what it left
is loaded, listed and described (in process: a subprocess would add nothing there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import torch

from actors import spec_for_spaces
from learner import ActionSpace, make_agent
from learner.checkpoint import rng_state
from learner.checkpoint import save as save_checkpoint
from system.cli import main
from system.config import load_config
from system.datasets import DatasetSource, load_episodes
from system.train import RunDir


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


def wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read() if process.stderr else "qfleet record exited"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_recording_killed_midway_keeps_its_committed_episodes_which_list_and_info_describe(tmp_path, capsys):
    run = make_run(tmp_path)
    datasets = tmp_path / "datasets"
    data = datasets / "cartpole/ckpt-v0" / "data"
    args = ["record", "cartpole/ckpt-v0", "--policy", str(run.path), "--epsilon", "0.3", "--episodes", "1000000"]
    args += ["--num-actors", "2", "--progress-every-s", "0.2", "--datasets-dir", str(datasets)]
    recording = subprocess.Popen(
        [sys.executable, "-m", "system.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: (data / "metadata.json").exists(), 120, recording)
        committed = json.loads((data / "metadata.json").read_text())["total_episodes"]
        # Killed while episodes past the last commit are on disk, uncommitted.
        wait_for(lambda: (data / str(committed + 2)).exists(), 60, recording)
        os.kill(recording.pid, signal.SIGKILL)
    finally:
        recording.kill()
        recording.wait(timeout=30)
    metadata = json.loads((data / "metadata.json").read_text())
    assert metadata["total_episodes"] >= committed >= 1
    # What a shared dataset needs and nothing local: no run directory, no env settings.
    assert str(tmp_path) not in (data / "metadata.json").read_text()
    assert metadata["qfleet"]["env_id"] == "CartPole-v1" and "env" not in metadata["qfleet"]
    space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    spec = spec_for_spaces("CartPole-v1", space, gym.spaces.Discrete(2))
    read = load_episodes(DatasetSource("cartpole/ckpt-v0", datasets_dir=str(datasets)), spec, ActionSpace(2))
    assert len(read.lengths) == metadata["total_episodes"]  # the committed episodes, whole

    assert main(["dataset", "list", "--datasets-dir", str(datasets)]) == 0
    listed = capsys.readouterr().out
    assert "cartpole/ckpt-v0" in listed and f"{metadata['total_episodes']:,} episodes" in listed
    assert "CartPole-v1" in listed

    assert main(["dataset", "info", "cartpole/ckpt-v0", "--datasets-dir", str(datasets), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == metadata["total_episodes"] and summary["steps"] == int(read.lengths.sum())
    assert summary["policy_versions"] == [7, 7]  # the checkpoint's weights version, on every episode
    assert summary["epsilons"] == [0.3]
    assert summary["recorded_by"]["policy"] == {"checkpoint": "learner-000000000005.pt", "updates": 5, "version": 7}
    assert summary["returns"]["min"] >= 1

    assert main(["dataset", "info", "cartpole/ckpt-v0", "--datasets-dir", str(datasets)]) == 0
    text = capsys.readouterr().out
    assert "policy versions 7..7" in text and "epsilon 0.3" in text

    assert main(["dataset", "info", "nothing/here-v0", "--datasets-dir", str(tmp_path)]) == 2
    assert "dataset 'nothing/here-v0'" in capsys.readouterr().err
