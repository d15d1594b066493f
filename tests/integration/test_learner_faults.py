"""The learner survives its faults: checkpoints by time, a damaged newest checkpoint skipped for the
previous one, versions that only grow after a resume, a checkpoint that needs no Redis at stop,
and UTD counters that come back consistent (real shards, real Redis)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import threading
import time

import numpy as np
import pytest
import torch
from resume_child import as_batch

from actors import WeightSubscriber, transition_spec
from conftest import cartpole_transitions, shard_kwargs, wait_until
from learner import (
    ActionSpace,
    ArchitectureConfig,
    Learner,
    LearnerConfig,
    LearnerReached,
    LearnerStatus,
    PrefetchConfig,
    WeightStore,
    find_checkpoint,
    make_replay,
)
from learner.loop import VERSION_SAFETY_STEP
from replay import ShardedReplay
from system.config import ConfigError, load_config
from system.local.redis_server import free_port
from system.services.learner import LearnerService
from system.train.plan import learner_resume
from system.train.run_dir import RunDir

SMALL = LearnerConfig(
    batch_size=32,
    learning_starts=200,
    updates_per_env_step=0.25,
    publish_every=10,
    checkpoint_every=1_000_000,
    checkpoint_every_s=None,
    device="cpu",
    architecture=ArchitectureConfig(hidden_size=32),
    prefetch=PrefetchConfig(depth=2, batches_per_request=1),
)
SPACE = ActionSpace(num_actions=2)


def random_batch(rng: np.random.Generator):
    data = {
        "obs": torch.tensor(rng.normal(size=(32, 4)), dtype=torch.float32),
        "action": torch.tensor(rng.integers(0, 2, 32)),
        "reward": torch.tensor(rng.normal(size=32), dtype=torch.float32),
        "next_obs": torch.tensor(rng.normal(size=(32, 4)), dtype=torch.float32),
        "discount": torch.full((32,), 0.97),
    }
    return as_batch(data, torch.ones(32))


def checkpointed_learner(directory, updates_at: list[int]) -> Learner:
    """A learner (no replay) that wrote a checkpoint at each of `updates_at`."""
    learner = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=directory)
    rng = np.random.default_rng(0)
    for target in updates_at:
        while learner.updates < target:
            learner.step(random_batch(rng))
        learner.version = target // 10
        learner.checkpoint()
    return learner


@pytest.fixture
def shards(start_server, redis_server):
    spec = transition_spec("CartPole-v1")
    for shard_id in (0, 1):
        start_server(spec, shard_id=shard_id, capacity=20_000, **shard_kwargs(redis_server, run="faults"))
    writer = ShardedReplay(redis_server.url, "faults")
    writer.wait_for_shards(2)
    yield writer
    writer.close()


def test_a_learner_checkpoints_by_time_as_well_as_by_updates(tmp_path):
    config = dataclasses.replace(SMALL, checkpoint_every_s=0.3)
    learner = Learner(config, None, (4,), SPACE, checkpoint_dir=tmp_path)
    rng = np.random.default_rng(0)
    learner.step(random_batch(rng))
    assert not list(tmp_path.glob("learner-*.pt"))  # not due yet: 1 update, well under 0.3 s
    time.sleep(0.35)
    learner.step(random_batch(rng))
    assert [p.name for p in tmp_path.glob("learner-*.pt")] == ["learner-000000000002.pt"]


@pytest.mark.parametrize("checkpoint_every_s", [0.0, -1.0])
def test_checkpoint_every_s_must_be_positive(checkpoint_every_s):
    with pytest.raises(ValueError, match="checkpoint_every_s"):
        dataclasses.replace(SMALL, checkpoint_every_s=checkpoint_every_s)


def test_a_truncated_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    checkpointed_learner(tmp_path, [20, 40])
    newest = tmp_path / "learner-000000000040.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash while copying, a full disk

    with caplog.at_level(logging.WARNING, logger="learner.checkpoint"):
        resumed = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=tmp_path)
    assert resumed.updates == 20 and resumed.resumed_from == tmp_path / "learner-000000000020.pt"
    assert len(resumed.refused_checkpoints) == 1 and str(newest) in resumed.refused_checkpoints[0]
    assert "refused learner checkpoint" in caplog.text and str(newest) in caplog.text


def test_a_resumed_learner_publishes_above_every_version_published_before(tmp_path, redis_server):
    store = WeightStore(redis_server.url, "faults")
    first = Learner(SMALL, None, (4,), SPACE, run="faults", weight_store=store, checkpoint_dir=tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(30):  # publishes v1..v3, checkpoints at v3 ...
        first.step(random_batch(rng))
    first.checkpoint()
    seen = [store.version()]
    for _ in range(50):  # ... and goes on to v8 before it dies
        first.step(random_batch(rng))
        seen.append(store.version())
    assert store.version() == 8

    restarted = Learner(SMALL, None, (4,), SPACE, run="faults", weight_store=store, checkpoint_dir=tmp_path)
    assert restarted.updates == 30  # the checkpoint's training ...
    assert restarted.publish() == 9  # ... published above what actors may hold already
    for _ in range(10):
        restarted.step(random_batch(rng))
        seen.append(store.version())
    assert seen == sorted(seen) and seen[-1] == 10  # an actor polling the store never sees it go down
    store.close()


def test_the_stop_checkpoint_comes_first_so_a_dead_redis_cannot_prevent_it(shards, redis_server, tmp_path):
    shards.insert(cartpole_transitions(2000))
    shards.flush()
    dead_store = WeightStore(f"redis://127.0.0.1:{free_port()}/0", "faults")  # nothing listens there
    replay = make_replay(SMALL, redis_server.url, "faults", credentials=None)
    learner = Learner(SMALL, replay, (4,), SPACE, run="faults", weight_store=dead_store, checkpoint_dir=tmp_path)

    summary = learner.run(max_updates=25)  # publishes fail (logged), training goes on

    assert summary.updates == 25
    assert summary.checkpoint == tmp_path / "learner-000000000025.pt" and summary.checkpoint.exists()
    replay.close()


def test_utd_counters_come_back_consistent_when_shards_come_back_empty(shards, redis_server, tmp_path):
    shards.insert(cartpole_transitions(2000))
    shards.flush()
    replay = make_replay(SMALL, redis_server.url, "faults", credentials=None)
    learner = Learner(SMALL, replay, (4,), SPACE, run="faults", checkpoint_dir=tmp_path)
    learner.run(max_updates=40)
    assert learner.inserts() == 2000
    replay.close()

    # The shards restarted empty (no replay checkpoint): the restored updates were made against
    # 2,000 inserts, and the UTD goes on from 40 / 2,000, not 40 / (whatever came in since).
    restarted = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=tmp_path)
    restarted.align_inserts(0)
    assert (restarted.updates, restarted.inserts()) == (40, 2000)
    # The shards kept their data (a learner restart mid-run): their count is the truth.
    again = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=tmp_path)
    again.align_inserts(2600)
    assert again.inserts_offset == 0


def test_updates_beyond_the_checkpoint_are_counted_as_lost(tmp_path):
    checkpointed_learner(tmp_path, [20])
    resumed = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=tmp_path, reached=LearnerReached(updates=57))
    assert (resumed.updates, resumed.updates_lost) == (20, 37)


def run_dir_with(tmp_path, updates: int) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    progress = {"kind": "progress", "updates": updates, "weights_version": 9, "replay_inserts": 3000}
    (run.path / "metrics.jsonl").write_text(json.dumps(progress) + "\n")
    return run


def test_resume_falls_back_to_an_older_checkpoint(tmp_path):
    run = run_dir_with(tmp_path, updates=45)
    checkpointed_learner(run.checkpoints, [20, 40])
    newest = run.checkpoints / "learner-000000000040.pt"
    newest.write_bytes(b"")

    reached, fresh, _ = learner_resume(run, fresh_learner=False)
    assert (reached.updates, reached.version, fresh) == (45, 9, False)
    assert find_checkpoint(run.checkpoints).path == run.checkpoints / "learner-000000000020.pt"


def test_resume_without_a_good_checkpoint_refuses_unless_a_fresh_learner_is_asked_for(tmp_path):
    run = run_dir_with(tmp_path, updates=45)
    checkpointed_learner(run.checkpoints, [40])
    only = run.checkpoints / "learner-000000000040.pt"
    only.write_bytes(only.read_bytes()[:500])

    with pytest.raises(ConfigError) as refused:
        learner_resume(run, fresh_learner=False)
    message = str(refused.value)
    assert "no good learner checkpoint" in message and str(only) in message
    assert not only.exists() and only.with_name(only.name + ".refused").exists()  # out of pruning's way
    assert "update 45" in message and f"qfleet train --resume {run.path} --fresh-learner" in message

    reached, fresh, _ = learner_resume(run, fresh_learner=True)
    # The driver records the fresh start: the fresh learner counts no loss of its own again.
    assert fresh and reached == LearnerReached(updates=45, version=9, inserts=3000, fresh_from=45)
    # A fresh learner's counters go on from there: the UTD and the checkpoints' numbers continue.
    learner = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=run.checkpoints, reached=reached)
    learner.align_inserts(0)
    assert (learner.updates, learner.version, learner.inserts(), learner.resumed_from) == (45, 9, 3000, None)


def test_resume_of_a_run_whose_learner_never_trained_needs_no_checkpoint(tmp_path):
    run = run_dir_with(tmp_path, updates=0)
    assert learner_resume(run, fresh_learner=False) == (LearnerReached(0, 9, 3000), False, None)


def test_a_checkpoint_written_below_damaged_ones_is_kept(tmp_path):
    for updates in (40, 50, 60):  # damaged checkpoints with higher numbers than the new learner's
        (tmp_path / f"learner-{updates:012d}.pt").write_bytes(b"damaged")
    fresh = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=tmp_path, reached=LearnerReached(updates=5))
    # Refused at the resume, they are set aside: kept for inspection, out of the resume and pruning.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"learner-{updates:012d}.pt.refused" for updates in (40, 50, 60)
    ]
    first = fresh.checkpoint()
    for updates in (70, 80, 90):  # damaged ones that appear later are still never preferred to it
        (tmp_path / f"learner-{updates:012d}.pt").write_bytes(b"damaged")
    fresh.step(random_batch(np.random.default_rng(0)))
    newest = fresh.checkpoint()

    assert first.exists() is False and newest.exists()  # pruned as the oldest, not before
    assert find_checkpoint(tmp_path).path == newest


def test_temporary_files_of_a_killed_save_are_removed_once_their_writer_is_gone(tmp_path):
    checkpointed_learner(tmp_path, [10])
    writer = subprocess.Popen(["true"])
    writer.wait()
    stale = tmp_path / f".learner-000000000020.pt.tmp-{writer.pid}"
    live = tmp_path / f".learner-000000000030.pt.tmp-{os.getpid()}"  # a save still under way
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"half a checkpoint")

    assert find_checkpoint(tmp_path).path == tmp_path / "learner-000000000010.pt"
    assert not stale.exists() and live.exists()


def test_a_loss_reported_by_an_earlier_session_is_not_counted_again(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    records = [
        {"kind": "progress", "updates": 60, "weights_version": 6, "replay_inserts": 2400},  # killed at 60
        {"kind": "learner", "event": "resumed", "updates": 40, "updates_lost": 20},  # resumed from 40
        {"kind": "progress", "updates": 40, "weights_version": 8, "replay_inserts": 2600},  # a clean stop
    ]
    (run.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    checkpointed_learner(run.checkpoints, [40])

    reached, fresh, _ = learner_resume(run, fresh_learner=False)
    assert reached == LearnerReached(updates=40, version=8, inserts=2600) and not fresh
    resumed = Learner(SMALL, None, (4,), SPACE, checkpoint_dir=run.checkpoints, reached=reached)
    assert resumed.updates_lost == 0 and resumed.version == 8


def test_a_learner_without_a_good_checkpoint_counts_its_network_lost(tmp_path):
    (tmp_path / "learner-000000000040.pt").write_bytes(b"damaged")
    # A Ray restart of a run whose network started fresh at update 30 (--fresh-learner) and got to 75.
    restarted = Learner(
        SMALL, None, (4,), SPACE, checkpoint_dir=tmp_path, reached=LearnerReached(updates=75, fresh_from=30)
    )
    assert restarted.fresh and (restarted.updates, restarted.updates_lost) == (75, 45)
    assert restarted.resumed_from is None


def test_a_continued_learner_never_reuses_a_version_when_redis_is_unreadable(tmp_path, monkeypatch):
    monkeypatch.setattr("learner.loop.VERSION_READ_S", 1.0)
    checkpointed_learner(tmp_path, [30])  # version 3 in the checkpoint; later ones were published
    dead_store = WeightStore(f"redis://127.0.0.1:{free_port()}/0", "faults")  # nothing listens there
    started = time.monotonic()
    resumed = Learner(SMALL, None, (4,), SPACE, weight_store=dead_store, checkpoint_dir=tmp_path)
    assert time.monotonic() - started >= 1.0  # it tried for a while before giving up
    assert resumed.version == 3 + VERSION_SAFETY_STEP

    brand_new = Learner(SMALL, None, (4,), SPACE, weight_store=dead_store, checkpoint_dir=tmp_path / "new")
    assert brand_new.version == 0  # nothing was published before it: nothing to step over


def test_actors_ignore_a_version_below_the_one_they_hold(redis_server, caplog):
    store = WeightStore(redis_server.url, "lower")
    weights = {"w": torch.ones(2)}
    store.publish(weights, 7)
    subscriber = WeightSubscriber(WeightStore(redis_server.url, "lower"), poll_s=0.02)
    try:
        assert subscriber.fetch_now()[0] == 7
        with caplog.at_level(logging.WARNING, logger="learner.weights"):
            store.publish({"w": torch.zeros(2)}, 3)  # a learner that reused a lower number
            assert wait_until(lambda: "below the v7 held" in caplog.text, timeout=5)
            assert subscriber.fetch_now() is None and subscriber.take() is None
            store.publish({"w": torch.full((2,), 2.0)}, 8)
            taken = []
            assert wait_until(lambda: taken.append(subscriber.take()) or taken[-1] is not None, timeout=5)
            assert taken[-1][0] == 8 and torch.equal(taken[-1][1]["w"], torch.full((2,), 2.0))
        assert caplog.text.count("below the v7 held") == 1  # said once, however often it is polled
    finally:
        subscriber.close()
        store.close()


def small_service(redis_server, checkpoint_dir, **kwargs) -> LearnerService:
    config = load_config(None, ["learner.device=cpu", "learner.architecture.hidden_size=32"])
    return LearnerService(
        config,
        (4,),
        SPACE,
        redis_server.url,
        "faults",
        str(checkpoint_dir),
        metrics_host=None,
        replay_credentials=None,
        **kwargs,
    )


def test_a_new_run_forgets_the_counters_redis_kept_of_an_earlier_run_of_its_name(shards, redis_server, tmp_path):
    status = LearnerStatus(redis_server.url, "faults")
    status.write({"updates": 500, "weights_version": 50})  # an earlier run with this name

    new = small_service(redis_server, tmp_path / "new")
    assert (new.learner.updates, new.learner.updates_lost, new.learner.fresh) == (0, 0, False)
    assert status.reached() == {}
    new.stop()

    # This run's learner dies before its first checkpoint and Ray restarts it: Redis tells how far
    # it got, and the new network counts all of that as lost.
    status.write({"updates": 120, "weights_version": 12})
    restarted = small_service(redis_server, tmp_path / "new", restarted=True)
    described = restarted.describe()
    assert (described.updates, described.updates_lost, described.fresh) == (120, 120, True)
    assert described.version >= 12
    restarted.stop()
    status.close()


def test_within_a_session_the_counters_redis_kept_are_preferred_to_the_records(shards, redis_server, tmp_path):
    checkpointed_learner(tmp_path, [40])
    status = LearnerStatus(redis_server.url, "faults")
    status.write({"updates": 90, "weights_version": 4})  # the latest report, after the records' last one

    resumed = small_service(redis_server, tmp_path, reached=LearnerReached(updates=60, version=9))
    assert (resumed.learner.updates, resumed.learner.updates_lost, resumed.learner.version) == (40, 50, 9)
    resumed.stop()
    status.close()


def test_a_resumed_learner_aligns_its_inserts_once_every_shard_of_the_run_is_live(start_server, redis_server, tmp_path):
    """Shard 1 re-registers a moment after the learner resumes (restarted from its checkpoint):
    aligning on shard 0 alone would count shard 1's inserts twice (once in the offset for the
    inserts the shards seemed to have lost, once from shard 1 itself)."""
    spec = transition_spec("CartPole-v1")
    shard_dirs = [tmp_path / f"shard-{i}" for i in (0, 1)]
    live = [
        start_server(
            spec,
            shard_id=i,
            capacity=20_000,
            checkpoint_dir=str(shard_dirs[i]),
            **shard_kwargs(redis_server, run="faults"),
        )
        for i in (0, 1)
    ]
    writer = ShardedReplay(redis_server.url, "faults")
    writer.wait_for_shards(2)
    writer.insert(cartpole_transitions(2000))
    writer.flush()
    writer.close()
    replay = make_replay(SMALL, redis_server.url, "faults", credentials=None)
    learner = Learner(SMALL, replay, (4,), SPACE, run="faults", checkpoint_dir=tmp_path / "learner")
    learner.run(max_updates=40)
    assert learner.inserts() == 2000
    replay.close()
    live[1].stop(grace=0, checkpoint=True)  # it keeps its inserts in its checkpoint

    def restart_shard_1():
        time.sleep(1.0)
        start_server(
            spec,
            shard_id=1,
            capacity=20_000,
            checkpoint_dir=str(shard_dirs[1]),
            **shard_kwargs(redis_server, run="faults"),
        )

    restarter = threading.Thread(target=restart_shard_1)
    restarter.start()
    config = load_config(None, ["learner.device=cpu", "learner.architecture.hidden_size=32", "train.num_shards=2"])
    service = LearnerService(
        config,
        (4,),
        SPACE,
        redis_server.url,
        "faults",
        str(tmp_path / "learner"),
        metrics_host=None,
        replay_credentials=None,
    )
    try:
        restarter.join()
        assert service.learner.updates == 40
        service.replay.wait_for_shards(2)
        service.replay.info()
        assert service.learner.inserts() == 2000
    finally:
        service.stop()
