"""The learner through real shards, real Redis and a real child process."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import generate_latest
from resume_child import as_batch, learned_parameters
from safetensors.torch import load_file

from actors import transition_spec
from conftest import cartpole_transitions, shard_kwargs, wait_until
from learner import (
    ActionSpace,
    ArchitectureConfig,
    CheckpointLossError,
    CheckpointShapeError,
    CheckpointSupportError,
    DistributionalConfig,
    FilteredBCConfig,
    IQLConfig,
    Learner,
    LearnerConfig,
    Policy,
    PrefetchConfig,
    SACConfig,
    WeightStore,
    make_replay,
)
from replay import ShardedReplay, Spec
from system.config.dataclass_args import as_mapping

SMALL = LearnerConfig(
    batch_size=32,
    learning_starts=200,
    updates_per_env_step=0.25,
    publish_every=10,
    checkpoint_every=25,
    device="cpu",
    architecture=ArchitectureConfig(hidden_size=32),
    prefetch=PrefetchConfig(depth=2, batches_per_request=1),
)


@pytest.fixture
def shards(start_server, redis_server):
    spec = transition_spec("CartPole-v1")
    for shard_id in (0, 1):
        start_server(spec, shard_id=shard_id, capacity=20_000, **shard_kwargs(redis_server, run="learn"))
    writer = ShardedReplay(redis_server.url, "learn")
    writer.wait_for_shards(2)
    yield writer
    writer.close()


def test_learner_trains_from_shards_publishes_weights_and_sends_priorities(shards, redis_server, tmp_path):
    shards.insert(cartpole_transitions(2000))
    shards.flush()
    store = WeightStore(redis_server.url, "learn")
    replay = make_replay(SMALL, redis_server.url, "learn", credentials=None)
    learner = Learner(
        SMALL, replay, (4,), ActionSpace(num_actions=2), run="learn", weight_store=store, checkpoint_dir=tmp_path
    )
    summary = learner.run(max_updates=40)

    assert summary.updates == 40
    assert store.version() == summary.version == 5  # every 10 updates, plus the final publish
    version, weights = store.fetch(known_version=0)
    assert version == 5
    for name, tensor in learner.agent.policy_state().items():
        torch.testing.assert_close(weights[name], tensor)
    assert store.fetch(known_version=5) is None  # nothing new: no download

    info = shards.info()  # new priorities (|td| + eps) replaced the initial 1.0s of sampled items
    assert info.priority_mass != pytest.approx(info.size)
    assert summary.checkpoint is not None and summary.checkpoint.exists()

    text = generate_latest(learner.metrics.registry).decode()
    assert 'qfleet_learner_updates_total{run="learn"} 40.0' in text
    assert 'qfleet_learner_weight_version{run="learn"} 5.0' in text
    assert 'qfleet_learner_target_utd{run="learn"} 0.25' in text
    assert f'qfleet_learner_learning_rate{{run="learn"}} {SMALL.optimizer.lr}' in text
    for series in ("loss", "q_mean", "td_error", "grad_norm", "achieved_utd", "policy_staleness", "sample_age_seconds"):
        assert f"qfleet_learner_{series}{{" in text
    for series in ("policy_loss", "imitation_weight"):  # DQN has no policy: NaN ("no value"), not a 0
        assert f'qfleet_learner_{series}{{run="learn"}} NaN' in text
    replay.close()
    store.close()


def test_an_iql_learner_publishes_its_policy_and_actors_act_greedily_in_it(shards, redis_server):
    shards.insert(cartpole_transitions(1000))
    shards.flush()
    config = dataclasses.replace(SMALL, loss="iql")
    store = WeightStore(redis_server.url, "learn")
    replay = make_replay(config, redis_server.url, "learn", credentials=None)
    learner = Learner(config, replay, (4,), ActionSpace(num_actions=2), run="learn", weight_store=store)
    assert learner.run(max_updates=20).updates == 20

    version, weights = store.fetch(known_version=0)
    policy = Policy(config, (4,), ActionSpace(num_actions=2), seed=7)
    policy.load(weights, version)
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with torch.no_grad():
        expected = learner.agent.policy(torch.from_numpy(obs)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(policy.act(obs, epsilon=0.0, rng=np.random.default_rng(0)), expected)
    info = shards.info()  # |TD error| + eps of the Q networks went back as priorities
    assert info.priority_mass != pytest.approx(info.size)
    replay.close()
    store.close()


def test_a_filtered_bc_learner_sends_no_priorities_and_exports_its_policy_figures(start_server, redis_server, tmp_path):
    spec = transition_spec("CartPole-v1")
    spec = Spec({**spec.columns, "episode_return": ((), "float32")})
    start_server(spec, shard_id=0, capacity=5_000, **shard_kwargs(redis_server, run="bc"))
    writer = ShardedReplay(redis_server.url, "bc")
    writer.wait_for_shards(1)
    transitions = cartpole_transitions(1000)
    transitions["episode_return"] = np.repeat(np.arange(10, dtype=np.float32), 100)  # ten episodes
    writer.insert(transitions)
    writer.flush()
    config = dataclasses.replace(SMALL, loss="filtered_bc", filtered_bc=FilteredBCConfig(top_k_percent=20))
    replay = make_replay(config, redis_server.url, "bc", credentials=None)
    learner = Learner(config, replay, (4,), ActionSpace(num_actions=2), run="bc", log_every_s=0.0)
    assert learner.run(max_updates=20).updates == 20

    info = writer.info()  # every item kept the priority (1.0) it was inserted with
    assert info.priority_mass == pytest.approx(info.size)
    assert learner.last_result.td_abs is None
    text = generate_latest(learner.metrics.registry).decode()
    for series in ("policy_loss", "imitation_weight", "loss"):
        assert f'qfleet_learner_{series}{{run="bc"}}' in text
    assert 0 < learner.metrics.imitation_weight._value.get() <= 1
    replay.close()
    writer.close()


def test_a_checkpoint_is_not_resumed_under_another_loss(tmp_path):
    iql = dataclasses.replace(SMALL, loss="iql")
    learner = Learner(iql, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    path = learner.checkpoint()
    with pytest.raises(CheckpointLossError, match="written under learner.loss='iql'; this run's is learner.loss='dqn'"):
        Learner(SMALL, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    assert path.exists()  # not damaged: left in place, not renamed aside
    assert Learner(iql, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path).resumed_from == path


def test_a_resumed_learner_steps_with_the_configured_rate_and_shows_it(tmp_path):
    space = ActionSpace(num_actions=2)
    first = Learner(SMALL, None, (4,), space, checkpoint_dir=tmp_path)
    first.checkpoint()
    changed = dataclasses.replace(SMALL, optimizer=dataclasses.replace(SMALL.optimizer, lr=SMALL.optimizer.lr / 4))
    resumed = Learner(changed, None, (4,), space, checkpoint_dir=tmp_path)
    assert resumed.resumed_from is not None
    assert {float(group["lr"]) for group in resumed.agent.optimizer.param_groups} == {changed.optimizer.lr}
    text = generate_latest(resumed.metrics.registry).decode()
    assert f'qfleet_learner_learning_rate{{run="{resumed.run_name}"}} {changed.optimizer.lr}' in text


def test_a_checkpoint_of_other_network_sizes_is_refused_naming_the_settings(tmp_path):
    # A SAC run from when the default was 10 critics, resumed under today's default of 2.
    ten = dataclasses.replace(SMALL, loss="sac", sac=SACConfig(ensemble_size=10))
    space = ActionSpace(low=(-1.0,), high=(1.0,))
    path = Learner(ten, None, (3,), space, checkpoint_dir=tmp_path).checkpoint()
    with pytest.raises(CheckpointShapeError, match="other sizes than this run's learner settings.*ensemble_size"):
        Learner(dataclasses.replace(ten, sac=SACConfig()), None, (3,), space, checkpoint_dir=tmp_path)
    assert path.exists()  # left in place
    assert Learner(ten, None, (3,), space, checkpoint_dir=tmp_path).resumed_from == path


def test_a_clamping_support_is_warned_about_once_and_a_derived_one_asks_for_numbers(shards, redis_server, caplog):
    shards.insert(cartpole_transitions(1000))  # reward 1 per step: targets near 1, outside [-0.5, 0.5]
    shards.flush()
    narrow = DistributionalConfig(v_min=-0.5, v_max=0.5, num_bins=11, derived=True)
    config = dataclasses.replace(SMALL, loss="hl_gauss", distributional=narrow)
    replay = make_replay(config, redis_server.url, "learn", credentials=None)
    learner = Learner(config, replay, (4,), ActionSpace(num_actions=2), run="learn")
    with caplog.at_level(logging.WARNING, logger="learner.loop"):
        assert learner.run(max_updates=2).updates == 2
    assert learner.last_result.clamped_fraction > 0.5
    warnings = [record.getMessage() for record in caplog.records if "clamped onto it" in record.getMessage()]
    assert len(warnings) == 1
    assert "random play did not see these returns" in warnings[0] and "to auto" not in warnings[0]
    replay.close()


def test_a_checkpoint_is_not_resumed_on_another_value_support(tmp_path):
    # A re-probed or edited support would read every trained bin as another value.
    support = DistributionalConfig(v_min=-10.0, v_max=10.0, num_bins=21)
    trained = dataclasses.replace(SMALL, loss="hl_gauss", distributional=support)
    path = Learner(trained, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path).checkpoint()
    wider = dataclasses.replace(trained, distributional=dataclasses.replace(support, v_max=12.5))
    with pytest.raises(CheckpointSupportError, match=r"learner.v_max=10.0 \(configured 12.5\)") as raised:
        Learner(wider, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    assert "v_min" not in str(raised.value) and path.exists()
    assert Learner(trained, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path).resumed_from == path


def test_a_checkpoint_from_before_losses_were_recorded_that_does_not_fit_is_refused_clearly(tmp_path):
    c51 = dataclasses.replace(SMALL, loss="c51", distributional=DistributionalConfig(v_min=-10.0, v_max=10.0))
    learner = Learner(c51, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    path = learner.checkpoint()
    state = torch.load(path, weights_only=True)
    del state["loss"]  # as written before the loss was stored
    torch.save(state, path)
    with pytest.raises(CheckpointLossError, match="written under another learner.loss.*'dqn'") as raised:
        Learner(SMALL, None, (4,), ActionSpace(num_actions=2), checkpoint_dir=tmp_path)
    assert raised.value.saved_loss is None and raised.value.configured_loss == "dqn"


def test_learner_waits_for_data_instead_of_over_training(shards, redis_server):
    shards.insert(cartpole_transitions(1000))
    shards.flush()
    replay = make_replay(SMALL, redis_server.url, "learn", credentials=None)
    learner = Learner(SMALL, replay, (4,), ActionSpace(num_actions=2), run="learn")
    stop = threading.Event()
    runner = threading.Thread(target=learner.run, kwargs={"stop": stop})
    runner.start()
    # spi = 0.25 * 32 = 8 samples per insert; after min_size 200, Reverb's window allows
    # 8 * (1000 - 200) + error_buffer (1024) samples: at most 232 batches of 32, prefetch included.
    budget = (8 * (1000 - 200) + 1024) // 32
    assert wait_until(lambda: learner.updates >= budget - 2 * SMALL.prefetch.depth, timeout=60)
    time.sleep(1.0)
    stalled = learner.updates
    assert stalled <= budget
    time.sleep(1.0)
    assert learner.updates == stalled, "the learner kept updating without new data"

    shards.insert(cartpole_transitions(500, start=1000))  # 500 transitions buy 125 more updates
    shards.flush()
    assert wait_until(lambda: learner.updates >= stalled + 120, timeout=60)
    stop.set()
    runner.join(30)
    assert learner.updates <= (8 * (1500 - 200) + 1024) // 32
    replay.close()


@pytest.mark.parametrize("loss", ["dqn", "sac", "iql"])
def test_checkpoint_then_new_process_resume_gives_identical_next_update(tmp_path, loss):
    best_of_n = IQLConfig(extraction="best_of_n", n=4)  # samples from pi: the RNG must be restored too
    config = dataclasses.replace(SMALL, loss=loss, sac=SACConfig(ensemble_size=4), iql=best_of_n, seed=5)
    space = ActionSpace(low=(-1.0,), high=(1.0,)) if loss == "sac" else ActionSpace(num_actions=2)
    rng = np.random.default_rng(0)

    def make_batch():
        batch = {
            "obs": torch.tensor(rng.normal(size=(32, 4)), dtype=torch.float32),
            "action": torch.tensor(rng.uniform(-1, 1, (32, 1)), dtype=torch.float32)
            if loss == "sac"
            else torch.tensor(rng.integers(0, 2, 32)),
            "reward": torch.tensor(rng.normal(size=32), dtype=torch.float32),
            "next_obs": torch.tensor(rng.normal(size=(32, 4)), dtype=torch.float32),
            "discount": torch.full((32,), 0.97),
        }
        return batch, torch.tensor(rng.uniform(0.5, 1.0, 32), dtype=torch.float32)

    learner = Learner(config, None, (4,), space, checkpoint_dir=tmp_path / "ckpt")
    for _ in range(5):
        learner.step(as_batch(*make_batch()))
    assert learner.updates == 5
    learner.version = 3
    learner.checkpoint()

    batch, weights = make_batch()
    np.savez(tmp_path / "batch.npz", weights=weights.numpy(), **{k: v.numpy() for k, v in batch.items()})
    learner.step(as_batch(batch, weights))  # the next step, in this process
    here = learned_parameters(learner)

    child = Path(__file__).with_name("resume_child.py")
    out = tmp_path / "child"
    subprocess.run(
        [
            sys.executable,
            str(child),
            json.dumps(as_mapping(config)),
            str(tmp_path / "ckpt"),
            str(tmp_path / "batch.npz"),
            str(out),
        ],
        check=True,
        timeout=120,
    )
    there = load_file(str(out) + ".safetensors")
    assert set(there) == set(here)
    for name, tensor in here.items():
        assert torch.equal(there[name], tensor), f"{name} differs after resume"
    assert json.loads(Path(str(out) + ".json").read_text()) == {"updates": 6, "version": 3}


def test_sample_age_survives_more_publications_than_it_remembers(shards, redis_server):
    """Regression: at weights version PUBLISH_MEMORY the learner forgot the publish time that old
    data is aged against, and died with a KeyError. Data of version 1 (its first publication) is
    then aged from the oldest publication it remembers."""
    from learner.loop import PUBLISH_MEMORY

    shards.insert(cartpole_transitions(6000, version=1))
    shards.flush()
    config = dataclasses.replace(SMALL, publish_every=1, checkpoint_every=10**6)
    store = WeightStore(redis_server.url, "learn")
    replay = make_replay(config, redis_server.url, "learn", credentials=None)
    learner = Learner(config, replay, (4,), ActionSpace(num_actions=2), run="learn", weight_store=store)
    summary = learner.run(max_updates=PUBLISH_MEMORY + 10)
    assert summary.version > PUBLISH_MEMORY
    assert learner.metrics.sample_age._value.get() > 0
    replay.close()
    store.close()


def test_a_learner_with_the_same_host_feed_trains_from_shards_through_its_regions(shards, redis_server):
    shards.insert(cartpole_transitions(2000))
    shards.flush()
    config = dataclasses.replace(SMALL, prefetch=PrefetchConfig(depth=2, batches_per_request=2, same_host_feed="auto"))
    replay = make_replay(config, redis_server.url, "learn", credentials=None)
    learner = Learner(config, replay, (4,), ActionSpace(num_actions=2), run="learn")
    summary = learner.run(max_updates=30)

    assert summary.updates == 30
    counts = replay.same_host_feed_counts()
    # One writer's items land on one shard (rendezvous routing): the learner samples that one.
    assert sum(c.in_region for c in counts.values()) >= 10 and not any(c.refused for c in counts.values())
    info = shards.info()  # priorities of keys that came through the regions went back to their shards
    assert info.priority_mass != pytest.approx(info.size)
    replay.close()
