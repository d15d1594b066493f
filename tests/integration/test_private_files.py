"""Checkpoints and the run folder are owner-only (files 0600, directories 0700) whatever the umask:
another user of the machine can't read a run's data, networks or addresses."""

from __future__ import annotations

import os
import pathlib
import stat

import pytest
import torch

from conftest import CARTPOLE_SPEC, make_batch
from learner.checkpoint import save as save_learner_checkpoint
from replay import ReplayClient, ReplayServer
from system.config import load_config
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
    assert {"r1", "r1/config.yaml", "r1/run.json", "r1/state.json", "r1/metrics.jsonl"} == set(modes(run.path))
    assert_owner_only(run.path)


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
