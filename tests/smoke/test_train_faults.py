"""The learner's faults in a live `qfleet train` (subprocesses, real processes): a killed learner
resumes from its checkpoint and the run finishes; a killed driver leaves nothing behind (its
children get a parent-death signal) and `--resume` completes; a resume without a good learner
checkpoint refuses, or with --fresh-learner continues and says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_train import QFLEET, SETTINGS, alive, assert_fault_in_time, descendants, overrides, qfleet, records

from conftest import wait_until

FAULTS = overrides({**SETTINGS, "learner.checkpoint_every_s": 3, "train.eval_every_steps": 4000})

LEARNER_KILL_STEPS, LEARNER_KILL_UPDATES = 16_000, 1_000
"""The killed-learner run's length, and the updates (with a checkpoint) at which its learner is
killed: about 2,500 env steps (the replay's ratio keeps env steps within a window of the updates),
so the restarted learner trains on for thousands of env steps more. The fault is seen up to ~2.5 s
after that (polls, progress cadence, the sleep past a checkpoint): on an idle machine, with the
learner's fused Adam, 5,700 env steps were seen."""

DRIVER_KILL_STEPS = 12_000
"""The killed-driver run's length. The kill comes at 300 updates and a checkpoint (every 3 s), about
1,100 env steps; on a fast machine the first checkpoint may come a few thousand later, still well
short of the end."""

RESUME_STEPS, FRESH_STEPS = 2_000, 1_000
"""Env steps the resume of the killed run goes on for (from what its state.json recorded: 0 when
the driver died before its first write), then the --fresh-learner resume (whole numbers of vector
steps). The resume re-runs what the shards lost, so its own budget, not the killed run's, keeps it
short."""


def start_train(run_dir: Path, log_path: Path, total_env_steps: int) -> subprocess.Popen:
    command = [*QFLEET, "train", "configs/cartpole.yaml", "--run-dir", str(run_dir), *FAULTS]
    return subprocess.Popen(
        [*command, *overrides({"train.total_env_steps": total_env_steps})],
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def learner_checkpointed(proc: subprocess.Popen, run_dir: Path, log_path: Path, updates: int) -> bool:
    """True once the learner made `updates` updates and wrote a checkpoint."""
    assert proc.poll() is None, log_path.read_text()[-3000:]
    progress = records(run_dir, "progress") if (run_dir / "metrics.jsonl").exists() else []
    return bool(progress) and progress[-1]["updates"] >= updates and any(run_dir.glob("checkpoints/learner-*.pt"))


@pytest.mark.timeout(360)
def test_a_killed_learner_resumes_from_its_checkpoint_and_the_run_finishes(tmp_path):
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    proc = start_train(run_dir, log_path, total_env_steps=LEARNER_KILL_STEPS)
    try:
        assert wait_until(
            lambda: learner_checkpointed(proc, run_dir, log_path, LEARNER_KILL_UPDATES), timeout=240, step=0.5
        )
        learner_pid = json.loads((run_dir / "run.json").read_text())["learner"]["pid"]
        time.sleep(1.0)  # a few updates beyond the newest checkpoint
        assert_fault_in_time(records(run_dir, "progress")[-1]["env_steps"], LEARNER_KILL_STEPS)
        os.kill(learner_pid, signal.SIGKILL)
        killed_at = time.time()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert f"finished at {LEARNER_KILL_STEPS:,} env steps" in output
    assert "the learner was restarted" in output and "updates lost" in output

    progress = records(run_dir, "progress")
    versions = [r["weights_version"] for r in progress]
    assert versions == sorted(versions), "weights versions went down"
    acted_with: dict[int, list[int]] = {}  # each actor's weights versions, episode by episode
    for batch in records(run_dir, "episodes"):
        for actor, version in zip(batch["actors"], batch["policy_versions"], strict=True):
            acted_with.setdefault(actor, []).append(version)
    assert acted_with and all(seen == sorted(seen) for seen in acted_with.values()), "an actor saw it go down"
    after = [r for r in progress if r["time"] > killed_at]
    assert after and after[-1]["updates"] > after[0]["updates"]  # it trained on after the kill
    (event,) = records(run_dir, "learner")
    assert event["event"] == "restarted" and event["resumed_from"].endswith(".pt")
    # What the dead learner had reached (it reports each second, so every record older than 2 s
    # is covered) = where it resumed + what it lost; 0 lost when a checkpoint fell just before the kill.
    reached = max(r["updates"] for r in progress if r["time"] < killed_at - 2.0)
    assert event["updates_lost"] >= 0 and event["updates"] + event["updates_lost"] >= reached
    state = json.loads((run_dir / "state.json").read_text())
    assert state["learner_restarts"] == 1 and state["learner_updates_lost"] == event["updates_lost"]
    assert state["faults"]["learner_restarts"] == 1  # one count of the one restart, everywhere
    assert (
        f"| learner restarts (updates lost) | 1 ({event['updates_lost']:,}) |" in (run_dir / "summary.md").read_text()
    )
    assert 0.3 < progress[-1]["achieved_utd"] <= 0.55  # the UTD counted on, not reset


@pytest.mark.timeout(600)
def test_a_killed_driver_leaves_nothing_behind_and_the_run_resumes(tmp_path):
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    proc = start_train(run_dir, log_path, total_env_steps=DRIVER_KILL_STEPS)
    started: set[int] = set()
    try:

        def ready() -> bool:
            started.update(descendants(proc.pid))
            return learner_checkpointed(proc, run_dir, log_path, 300)

        assert wait_until(ready, timeout=240, step=0.5)
        started.update(descendants(proc.pid))
        info = json.loads((run_dir / "run.json").read_text())
        assert {info["watchdog_pid"], info["redis_pid"], info["learner"]["pid"]} <= started
        assert_fault_in_time(records(run_dir, "progress")[-1]["env_steps"], DRIVER_KILL_STEPS)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_until(lambda: not [pid for pid in started if alive(pid)], timeout=60, step=0.2), [
            Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in started if alive(pid)
        ]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(started) >= 8  # redis, Ray's own processes and agents, the shard, learner and actor

    recorded = json.loads((run_dir / "state.json").read_text())["env_steps"] if (run_dir / "state.json").exists() else 0
    resume_to = recorded + RESUME_STEPS
    resumed = qfleet("train", "--resume", str(run_dir), *overrides({"train.total_env_steps": resume_to}), timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming at {recorded:,} env steps" in resumed.stdout
    assert f"finished at {resume_to:,} env steps" in resumed.stdout
    assert "learner on cpu (resumed at update" in resumed.stderr + resumed.stdout
    versions = [r["weights_version"] for r in records(run_dir, "progress")]
    assert versions == sorted(versions), "weights versions went down across the resume"

    # No good learner checkpoint: a resume refuses and says how to go on ...
    for checkpoint in run_dir.glob("checkpoints/learner-*.pt"):
        checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    further = overrides({"train.total_env_steps": resume_to + FRESH_STEPS})
    refused = qfleet("train", "--resume", str(run_dir), *further, timeout=120)
    assert refused.returncode != 0
    assert "no good learner checkpoint" in refused.stderr and "--fresh-learner" in refused.stderr
    # ... and with --fresh-learner a fresh learner continues the run's counters, recorded.
    updates_before = records(run_dir, "progress")[-1]["updates"]
    fresh = qfleet("train", "--resume", str(run_dir), "--fresh-learner", *further, timeout=300)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    assert f"fresh, counting on from update {updates_before:,}" in fresh.stderr + fresh.stdout
    assert records(run_dir, "learner")[-1]["event"] == "fresh"
    assert json.loads((run_dir / "state.json").read_text())["fresh_learners"] == [resume_to]
    fresh_row = f"| fresh learner (no good checkpoint) | at {resume_to:,} env steps |"
    assert fresh_row in (run_dir / "summary.md").read_text()
    progress = records(run_dir, "progress")
    assert progress[-1]["updates"] > updates_before
    assert [r["weights_version"] for r in progress] == sorted(r["weights_version"] for r in progress)
