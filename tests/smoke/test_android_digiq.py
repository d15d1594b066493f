"""`configs/android_digiq.yaml` as a user runs it, on android_env's FakeSimulator: a frozen small
encoder (saved by the test, randomly initialised) makes features in the actors, `qfleet record`
writes a dataset of them, and `qfleet train` learns offline from it, then online, with Digi-Q's
heads (Q(s, a) with an action embedding, the factored policy, Best-of-N)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner import SmallEncoder, save_small_encoder

ROOT = Path(__file__).resolve().parents[2]
OFFLINE_UPDATES = 40


def qfleet(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "system.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
@pytest.mark.timeout(600)  # record, then a train with Ray; minutes on a machine busy with other runs
def test_android_digiq_config_learns_offline_then_online_on_the_fake_simulator(tmp_path):
    torch.manual_seed(0)
    save_small_encoder(SmallEncoder((32, 32, 1), 32), tmp_path / "encoder", {})
    datasets, run_dir = tmp_path / "datasets", tmp_path / "run"
    features = f"env.features.path={tmp_path / 'encoder'}"
    qfleet(
        "record",
        "android/fake-features-v0",
        "--config",
        "configs/android_digiq.yaml",
        "--set",
        features,
        "--epsilon",
        "1",
        "--episodes",
        "8",
        "--datasets-dir",
        str(datasets),
    )
    settings = [
        features,
        f"offline.datasets_dir={datasets}",
        f"offline.updates={OFFLINE_UPDATES}",
        f"offline.eval_every_updates={OFFLINE_UPDATES}",
        "train.total_env_steps=300",
        "train.eval_every_steps=300",
        "learner.learning_starts=64",
        "learner.best_of_n=4",
        "actors.insert_batch=64",
    ]
    output = qfleet("train", "configs/android_digiq.yaml", "--run-dir", str(run_dir), *[f"--set={s}" for s in settings])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    phases = [r for r in records if r["kind"] == "phase"]
    assert [r["phase"] for r in phases] == ["offline", "online"]
    assert phases[1]["updates"] == OFFLINE_UPDATES and phases[1]["env_steps"] == 0  # the dataset alone first
    final = next(r for r in records if r["kind"] == "progress" and r.get("final"))
    assert final["env_steps"] >= 300 and final["updates"] > OFFLINE_UPDATES and final["weights_version"] > 0
    assert any(r["kind"] == "eval" for r in records)
    checkpoint = torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    agent = checkpoint["agent"]
    assert "q1.embedding.weight" in agent["critic"]  # Q(s, a) with the action as an input
    assert agent["critic"]["q1.embedding.weight"].shape[0] == agent["policy"]["head.weight"].shape[0]
    assert agent["policy"]["kind_head.weight"].shape[0] == 5  # tap, swipe, type, key, complete: factored pi
    assert "qfleet train: finished at" in output
