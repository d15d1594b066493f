"""`qfleet train configs/android_fake.yaml`: Android actors on android_env's FakeSimulator feed the
replay and the learner publishes weights, end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_android_fake_config_trains_end_to_end(tmp_path):
    run_dir = tmp_path / "android"
    command = [sys.executable, "-m", "system.cli", "train", "configs/android_fake.yaml", "--run-dir", str(run_dir)]
    result = subprocess.run(
        [*command, "--set", "train.total_env_steps=2000", "--set", "train.eval_every_steps=1000"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in records if r["kind"] == "progress" and r.get("final"))
    assert (
        final["env_steps"] == 2000 and final["updates"] > 0
    )  # not a chunk past the target and final["weights_version"] > 0
    assert max(r["replay_size"] for r in records if r["kind"] == "progress") > 500  # transitions arrived
    assert any(r["kind"] == "episodes" for r in records)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and all(len(r["returns"]) == 2 for r in evals)
    assert "qfleet train: finished at" in output and "Cleaning up AndroidEnv" not in output
