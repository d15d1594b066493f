"""The `offline` section and the phase bookkeeping of a run with an offline dataset: config keys
and their errors, the cross-section checks, the online shards' UTD on the online share of a
batch, and how phases go into records and state.json (and come back on --resume)."""

from __future__ import annotations

import pytest

from replay.rate_limiter import RateLimiter
from system.config import DEFAULT_MIX, batch_mix, describe, load_config, offline_run_name, online_batch_items
from system.config.offline import OfflineConfig
from system.errors import ConfigError, DatasetError
from system.train import plan, shard_config
from system.train.records import EvalRecord, ProgressRecord, RunCounters
from system.train.run_dir import RunDir


def test_the_offline_section_is_read_from_yaml_and_listed_with_its_meaning(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("offline:\n  dataset: cartpole/random-v0\n  num_shards: 2\n  updates: 0\n")
    offline = load_config(path).offline
    assert (offline.dataset, offline.num_shards, offline.updates, offline.selector) == (
        "cartpole/random-v0",
        2,
        0,
        "uniform",
    )
    assert not load_config(None).offline.enabled  # no dataset: an online-only run
    reference = describe(OfflineConfig, "offline")
    for key in ("dataset", "datasets_dir", "num_shards", "selector", "updates", "eval_every_updates"):
        assert f"  {key}: " in reference


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("offline.num_shards=0", "offline.num_shards: num_shards=0: must be in"),
        ("offline.updates=-1", "offline.updates: updates=-1: must be >= 0"),
        ("offline.selector=lifo", "offline.selector: 'lifo' is not one of"),
        ("offline.dataset=''", "offline.dataset"),
        ("offline.eval_every_updates=-5", "offline.eval_every_updates"),
        ("offline.datasets=x", "offline.datasets: unknown key"),
    ],
)
def test_bad_offline_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named):
        load_config(None, [override])


def test_the_mix_defaults_to_rlpds_half_and_half_and_sets_the_online_share_of_a_batch():
    offline = OfflineConfig(dataset="d")
    assert batch_mix(offline, None) == DEFAULT_MIX == {"offline": 0.5, "online": 0.5}
    assert batch_mix(OfflineConfig(), None) is None
    assert online_batch_items(128, None) == 128
    assert online_batch_items(128, {"offline": 0.25, "online": 0.75}) == 96
    assert offline_run_name("cartpole") == "cartpole.offline"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["replay.mix={offline: 0.5, online: 0.5}"], "replay.mix=.*set offline.dataset"),
        (["offline.dataset=d", "replay.mix={online: 1.0}"], "replay.mix=.*both sources"),
        (["offline.dataset=d", "replay.mix={offline: 0.999, online: 0.001}"], "each needs at least one"),
        (["offline.dataset=d", "learner.loss=filtered_bc"], "learner.loss='filtered_bc' needs"),
    ],
)
def test_offline_combinations_that_cannot_run_fail_before_anything_starts(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named):
        plan("configs/cartpole.yaml", overrides, str(tmp_path / "run"), None)
    assert not (tmp_path / "run").exists()


def test_a_run_name_that_would_share_another_runs_offline_shard_registry_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"run name 'cartpole.offline'.*offline shards of run 'cartpole'"):
        plan("configs/cartpole.yaml", ["train.run_name=cartpole.offline"], str(tmp_path / "run"), None)
    with pytest.raises(ConfigError, match="ending in '.offline'"):
        plan("configs/cartpole.yaml", [], str(tmp_path / "mine.offline"), None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "mine.offline").exists()


def test_a_missing_dataset_fails_the_plan_naming_it(tmp_path):
    settings = ["offline.dataset=cartpole/none-v0", f"offline.datasets_dir={tmp_path}"]
    with pytest.raises(DatasetError, match="dataset 'cartpole/none-v0'.*no dataset"):
        plan("configs/cartpole.yaml", settings, str(tmp_path / "run"), None)


def test_online_shards_hold_the_utd_on_the_online_share_of_each_batch(tmp_path):
    settings = ["offline.dataset=d", "replay.mix={offline: 0.25, online: 0.75}", "learner.batch_size=128"]
    config = load_config("configs/cartpole.yaml", settings)
    shard = shard_config(config, 0, "redis://127.0.0.1:1/0", "run", RunDir(tmp_path / "run"))
    learner = config.learner
    assert shard.samples_per_insert == learner.updates_per_env_step * 96
    # After the warm-up, one inserted item per 96 * UTD sampled online items: UTD updates per env step.
    limiter = RateLimiter(shard.min_size, shard.samples_per_insert, shard.error_buffer)
    inserts = limiter.insertable(10**9, inserts=0, samples=0)
    assert limiter.insertable(10**9, inserts, samples=int(10 * 96 * learner.updates_per_env_step)) == 10


def test_phases_go_into_state_json_and_come_back_on_resume():
    counters = RunCounters({}, eval_every_steps=1000, eval_every_updates=500)
    assert counters.phase is None and "phase" not in counters.state()  # an online-only run's state is unchanged
    counters.phase = "offline"
    counters.next_offline_eval = 1500
    state = counters.state()
    assert state["phase"] == "offline" and state["online_from"] is None
    resumed = RunCounters(state, 1000, 500)  # stopped in the offline phase
    assert (resumed.phase, resumed.online_from, resumed.next_offline_eval) == ("offline", None, 1500)

    resumed.env_steps = 0
    record = resumed.start_online(updates=2000).to_json()
    assert record["kind"] == "phase" and record["phase"] == "online"
    assert (record["updates"], record["env_steps"]) == (2000, 0)
    again = RunCounters(resumed.state(), 1000, 500)  # stopped in the online phase: no offline phase again
    assert again.phase == "online" and again.online_from["updates"] == 2000


def test_records_name_their_phase_only_in_runs_with_an_offline_dataset():
    progress = ProgressRecord(1.0, 2.0, 0, 0.0, 0, None, None, 10, 5.0, 0.0, 0, 0.5, 1, 0, 0, 0, 0, 0, 0)
    assert "phase" not in progress.to_json()
    offline = ProgressRecord(
        1.0, 2.0, 0, 0.0, 0, None, None, 10, 5.0, 0.0, 0, 0.5, 1, 0, 0, 0, 0, 0, 0, phase="offline"
    )
    assert offline.to_json()["phase"] == "offline"
    evaluation = EvalRecord(0, 1.0, 3, False, 200.0, 10.0, [200.0], [200], 0.5)
    assert "phase" not in evaluation.to_json() and "updates" not in evaluation.to_json()
    tagged = EvalRecord(0, 1.0, 3, False, 200.0, 10.0, [200.0], [200], 0.5, phase="offline", updates=1500)
    assert (tagged.to_json()["phase"], tagged.to_json()["updates"]) == ("offline", 1500)
