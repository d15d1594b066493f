"""`qfleet bench e2e` run as a user runs it (a subprocess), on one tiny CartPole case."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

QFLEET = [sys.executable, "-m", "system.cli"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 40 s on an idle machine; a `qfleet train` start takes minutes on a loaded one
def test_bench_e2e_runs_one_tiny_case_and_says_when_rllib_is_skipped(tmp_path):
    out = tmp_path / "e2e.json"
    tiny = ["--envs", "cartpole", "--utd", "1", "--env-steps", "1200", "--learning-starts", "300"]
    tiny += ["--hidden-size", "32", "--batch-size", "32", "--out-dir", str(tmp_path / "runs"), "--output", str(out)]
    # This interpreter is the product's venv, where RLlib is not installed (it is no product dependency).
    result = subprocess.run(
        [*QFLEET, "bench", "e2e", *tiny, "--peer-python", sys.executable],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (
        "| system | env | UTD | env steps/s | updates/s | achieved UTD | staleness (versions) | sample age (s) |"
        in (result.stdout)
    )
    assert "| rllib | cartpole | 1 | RLlib not installed: skipped |" in result.stdout
    rows = {row["system"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"qfleet", "single-process", "rllib"}
    for system in ("qfleet", "single-process"):
        assert f"| {system} | cartpole | 1 |" in result.stdout
        assert rows[system]["env_steps"] > 300 and rows[system]["updates"] > 0  # past learning_starts
        assert rows[system]["env_steps_per_s"] > 0 and rows[system]["updates_per_s"] > 0
    assert rows["qfleet"]["exit_code"] == 0  # stopped in order by the benchmark
    assert rows["qfleet"]["policy_staleness"] is not None and rows["qfleet"]["policy_staleness"] >= 0
    assert rows["rllib"] == {"system": "rllib", "env": "cartpole", "utd": 1.0, "log": rows["rllib"]["log"]} | {
        "skipped": "RLlib not installed: skipped"
    }
