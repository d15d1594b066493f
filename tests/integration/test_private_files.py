"""Checkpoints and the run folder are owner-only (files 0600, directories 0700) whatever the umask:
another user of the machine can't read a run's data, networks or addresses. A directory that
exists already keeps its mode (a group-shared checkpoint folder stays shared)."""

from __future__ import annotations

import logging
import os
import pathlib
import stat
import sys
import tempfile
import threading

import pytest
import torch

from conftest import CARTPOLE_SPEC, make_batch
from learner.checkpoint import save as save_learner_checkpoint
from replay import ReplayClient, ReplayServer
from system.config import load_config
from system.observe.discovery import write_targets
from system.observe.report import write_report
from system.train.run_dir import RunDir

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def open_umask():
    """umask 000: without explicit modes every file would be world-readable and writable."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def modes(top: pathlib.Path) -> dict[str, str]:
    """Path (relative to `top`'s parent) -> permission bits, for `top` and everything under it."""
    found = {top.name: oct(stat.S_IMODE(top.stat().st_mode))}
    for path in top.rglob("*"):
        found[path.relative_to(top.parent).as_posix()] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


def assert_owner_only(top: pathlib.Path) -> None:
    found = modes(top)
    wrong = {
        name: mode for name, mode in found.items() if mode != ("0o700" if (top.parent / name).is_dir() else "0o600")
    }
    assert not wrong, f"not owner-only: {wrong}"


def test_the_run_folders_files_are_owner_only(tmp_path):
    run = RunDir(tmp_path / "runs" / "r1")
    run.write_config(load_config(ROOT / "configs" / "cartpole.yaml", []))
    run.write_json("run.json", {"run": "r1", "redis_url": "redis://127.0.0.1:6379/0"})
    run.write_json("state.json", {"env_steps": 1})
    run.append_records([{"kind": "progress", "env_steps": 1}])
    run.write_json("run.json", {"run": "r1"})  # rewritten: still owner-only
    write_targets(run.path / "prometheus" / "targets.json", [{"targets": ["10.0.0.5:9100"], "labels": {}}])
    write_report(run)
    assert {
        "r1",
        "r1/config.yaml",
        "r1/run.json",
        "r1/state.json",
        "r1/metrics.jsonl",
        "r1/prometheus",
        "r1/prometheus/targets.json",
        "r1/summary.md",
        "r1/learning_curve.png",
    } == set(modes(run.path))
    assert_owner_only(run.path)


def test_writers_appending_to_a_new_metrics_file_at_once_lose_no_record():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: a check-then-create race shows in a few trials
    try:
        for _ in range(100):
            run = RunDir(pathlib.Path(tempfile.mkdtemp()))
            start = threading.Barrier(8)

            def append(writer: int, run=run, start=start) -> None:
                start.wait()
                run.append_records([{"kind": "progress", "writer": writer}])

            threads = [threading.Thread(target=append, args=(i,)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(r["writer"] for r in run.records()) == list(range(8))
            assert stat.S_IMODE(run.metrics_path.stat().st_mode) == 0o600
    finally:
        sys.setswitchinterval(previous)


def test_an_existing_shared_folder_keeps_its_mode_and_is_warned_about_once(tmp_path, caplog):
    shared = tmp_path / "team-checkpoints"
    shared.mkdir()
    os.chmod(shared, 0o2770)  # group-writable, setgid: the group's files land here
    with caplog.at_level(logging.WARNING, logger="replay.private_files"):
        save_learner_checkpoint(shared, {"weights": torch.zeros(3)}, updates=1)
        save_learner_checkpoint(shared, {"weights": torch.zeros(3)}, updates=2)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2770
    files = list(shared.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)  # the files stay private
    warnings = [r.getMessage() for r in caplog.records if str(shared) in r.getMessage()]
    assert len(warnings) == 1 and "writable by its group" in warnings[0], caplog.text


def test_an_existing_folder_only_its_owner_writes_keeps_its_mode_without_a_warning(tmp_path, caplog):
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chmod(runs, 0o755)
    with caplog.at_level(logging.WARNING, logger="replay.private_files"):
        RunDir(runs).write_config(load_config(ROOT / "configs" / "cartpole.yaml", []))  # runs/ exists
        RunDir(runs / "r1").write_config(load_config(ROOT / "configs" / "cartpole.yaml", []))
    assert stat.S_IMODE(runs.stat().st_mode) == 0o755
    assert stat.S_IMODE((runs / "r1").stat().st_mode) == 0o700  # created here: owner-only
    assert not caplog.records, caplog.text


def test_learner_checkpoints_are_owner_only(tmp_path):
    directory = tmp_path / "r1" / "checkpoints"
    saved = save_learner_checkpoint(directory, {"weights": torch.zeros(3)}, updates=7)
    assert saved.exists()
    assert_owner_only(tmp_path / "r1")


def test_replay_checkpoints_are_owner_only(tmp_path):
    directory = tmp_path / "r1" / "replay" / "shard-0"
    server = ReplayServer(CARTPOLE_SPEC, port=0, capacity=100, checkpoint_dir=str(directory)).start()
    try:
        with ReplayClient(server.address) as client:
            client.insert(make_batch(10))
            client.flush()
        path, _, size = server.checkpoint()
    finally:
        server.stop(grace=0.2, checkpoint=False)
    assert size == 10 and path.exists()
    assert_owner_only(tmp_path / "r1")
