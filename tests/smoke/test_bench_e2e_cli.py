"""`qfleet bench e2e` run as a user runs it (a subprocess), on one tiny CartPole case of qfleet alone
(the single-process loop and the skipped RLlib row are unit tests: tests/unit/test_bench_e2e.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_train import SETTINGS, overrides

QFLEET = [sys.executable, "-m", "system.cli"]

# test_train's small run, less what the benchmark itself sets (its --set would win over the case's).
SMALL = overrides({key: value for key, value in SETTINGS.items() if key.split(".")[0] not in ("learner", "train")})
SMALL += overrides({"learner.publish_every": 20, "train.log_every_s": 1})


@pytest.mark.slow
@pytest.mark.timeout(300)  # about 30 s on an idle machine; a `qfleet train` start takes minutes on a loaded one
def test_bench_e2e_trains_qfleet_for_its_seconds_and_stops_it_in_order(tmp_path):
    out = tmp_path / "e2e.json"
    # 5 s: the window starts at the first update, when a fresh run's actors (stepping before their
    # policy is built) may be held back with their first, v0 data; their next reports, with
    # published weights, must fall inside the window (a 2 s one could end before them).
    tiny = ["--envs", "cartpole", "--utd", "1", "--seconds", "5", "--learning-starts", "200", "--systems", "qfleet"]
    tiny += ["--hidden-size", "32", "--batch-size", "32", "--out-dir", str(tmp_path / "runs"), "--output", str(out)]
    result = subprocess.run([*QFLEET, "bench", "e2e", *tiny, *SMALL], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (
        "| system | env | UTD | env steps/s | updates/s | achieved UTD | staleness (versions) | sample age (s) |"
        in result.stdout
    )
    assert "| qfleet | cartpole | 1 |" in result.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["system"] == "qfleet" and row["window"] == "training"  # stopped by `_spent`, not the fill
    assert row["exit_code"] == 0  # stopped in order (SIGTERM) by the benchmark
    assert row["window_s"] >= 2 and row["env_steps"] > 200 and row["updates"] > 0
    assert 0.5 <= row["achieved_utd"] <= 1.5  # the learner kept to the asked UTD
    assert row["policy_staleness"] is None or row["policy_staleness"] >= 0
    assert row["first_env_step_s"] is not None and row["torch_threads"] == 1
