"""`qfleet bench learning` run as a user runs it (a subprocess): a tiny CartPole run of qfleet, and an
SB3 peer whose interpreter is missing, skipped with a line (the figures, tables, PNGs and --resume
are unit tests: tests/unit/test_bench_learning.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_train import SETTINGS, overrides

QFLEET = [sys.executable, "-m", "system.cli"]

# test_train's small run, less the budget and evaluation schedule the suite sets itself.
SMALL = overrides({key: value for key, value in SETTINGS.items() if not key.startswith("train.")})


@pytest.mark.slow
@pytest.mark.timeout(300)  # under 30 s on an idle machine; a `qfleet train` start takes minutes on a loaded one
def test_bench_learning_runs_qfleet_on_cartpole_and_skips_a_missing_peer(tmp_path):
    out, missing = tmp_path / "learning.json", tmp_path / "no-venv" / "python"
    tiny = ["--tasks", "cartpole", "--systems", "qfleet,sb3", "--seeds", "0", "--steps", "cartpole=1500"]
    tiny += ["--sb3-python", str(missing), "--out-dir", str(tmp_path / "runs"), "--output", str(out)]
    result = subprocess.run([*QFLEET, "bench", "learning", *tiny, *SMALL], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"skipped: sb3: --sb3-python {missing}: no such interpreter" in result.stdout
    assert "| cartpole: system | seed | first eval >= 475 (env steps) |" in result.stdout
    runs = json.loads(out.read_text())["runs"]
    qfleet = next(r for r in runs if r["system"] == "qfleet")
    assert qfleet["exit_code"] == 0 and qfleet["env_steps"] == 1500
    assert qfleet["evals"] and qfleet["evals"][-1]["env_steps"] >= 1500  # the final evaluation, at the end
    assert "--env" in qfleet["config"]["command"]  # the default recipe, not a config file
    assert (tmp_path / "runs" / "cartpole.png").stat().st_size > 0
