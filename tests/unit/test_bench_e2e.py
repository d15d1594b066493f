"""The e2e benchmark's arithmetic on hand-made progress records, and its table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest

from system.bench.e2e import ENVS, ROOT, Budget, first_env_step_s, qfleet_command, ratios, run_rllib, table, window


def progress(wall_s, env_steps, updates, final=False, **staleness):
    record = {"kind": "progress", "wall_s": wall_s, "env_steps": env_steps, "updates": updates} | staleness
    return record | ({"final": True} if final else {})


def test_window_counts_from_the_first_update_to_the_last_record_before_the_final_one():
    records = [
        progress(1.0, 0, 0),
        progress(2.0, 800, 0),  # replay filling: not in the window
        progress(3.0, 1000, 10, policy_staleness=1.0, sample_age_s=0.5),
        progress(5.0, 2000, 1010, policy_staleness=3.0, sample_age_s=1.5, sample_staleness=2.0),
        progress(9.0, 2100, 1100, final=True),  # after the actors stopped: left out
    ]
    figures = window(records)
    assert figures["window"] == "training" and figures["window_s"] == 2.0
    assert figures["env_steps_per_s"] == 500.0  # (2000 - 1000) / 2
    assert figures["updates_per_s"] == 500.0  # (1010 - 10) / 2
    assert figures["achieved_utd"] == 1.0
    assert figures["policy_staleness"] == 2.0 and figures["sample_age_s"] == 1.0
    assert figures["sample_staleness"] == 2.0  # the mean of the records that have it


def test_window_counts_env_steps_as_the_transitions_the_shards_took_when_records_have_them():
    def record(wall_s, actors_reported, inserts, updates):
        return progress(wall_s, actors_reported, updates) | {"replay_inserts": inserts}

    # The actors' first chunk has not returned: the driver's env_steps is still 0, replay is not.
    figures = window([record(1.0, 0, 1000, 10), record(3.0, 0, 1600, 610), record(4.0, 2400, 2400, 900)])
    assert figures["env_steps_per_s"] == 466.7 and figures["updates_per_s"] == 296.7  # 1400 / 3, 890 / 3
    assert figures["achieved_utd"] == 0.6357 and figures["env_steps"] == 2400


def test_window_falls_back_to_the_fill_says_so_and_says_when_the_budget_was_too_short():
    figures = window([progress(1.0, 0, 0), progress(2.0, 100, 0), progress(4.0, 300, 5)])
    assert figures["env_steps_per_s"] == 100.0 and figures["updates_per_s"] == 2.5
    assert figures["window"] == "fill"  # measured while replay filled, not while training
    assert "too short" in window([progress(1.0, 0, 0), progress(2.0, 100, 0)])["error"]


@pytest.mark.parametrize(
    ("staleness", "reason"),
    [
        ({"policy_staleness": [3.0, 9.0], "sample_staleness": [2.0, 5.0], "sample_age_s": [1.0, 2.0]}, None),
        ({"policy_staleness": [4.0, 12.0]}, "the actors acted with the initial weights (v0)"),
        ({"policy_staleness": [1.0, 2.0], "sample_staleness": [4.0, 12.0]}, "every sample the learner drew"),
    ],
    ids=["actors-follow", "actors-at-v0", "samples-at-v0"],
)
def test_a_window_whose_actors_never_left_v0_is_flagged_invalid(staleness, reason):
    """The learner published v4 and v12, yet the actors (or every sample) stayed at v0: the figures
    measure nothing like a run (issue #22: weight pulls every 50 steps of a held-back actor)."""
    records = [progress(1.0, 1000, 0)]
    for i, (wall_s, version) in enumerate([(2.0, 4), (3.0, 12)]):
        fields = {key: values[i] for key, values in staleness.items()}
        records.append(progress(wall_s, 1000 + 100 * i, 400 * (i + 1), weights_version=version, **fields))
    figures = window(records)
    if reason is None:
        assert "invalid" not in figures
        return
    assert reason in figures["invalid"]
    row = {"system": "qfleet", "env": "breakout", "utd": 4.0} | figures
    single = {"system": "single-process", "env": "breakout", "utd": 4.0, "env_steps_per_s": 50, "updates_per_s": 200}
    text = table([row, single])
    assert "| qfleet (invalid) | breakout | 4 |" in text and reason in text
    assert ratios([row, single]) == [f"breakout UTD 4: no ratio, the qfleet row is invalid ({figures['invalid']})"]


def test_a_window_with_one_record_after_the_first_publish_is_not_flagged():
    # The record just after the first publish may come before any actor pulled it or inserted with it.
    acting_at_v0 = {"policy_staleness": 4.0, "sample_staleness": 4.0}
    records = [
        progress(1.0, 1000, 0),
        progress(2.0, 1100, 400),
        progress(3.0, 1200, 800, weights_version=4, **acting_at_v0),
    ]
    assert "invalid" not in window(records)
    records.append(progress(4.0, 1300, 1200, weights_version=8, policy_staleness=8.0, sample_staleness=8.0))
    assert "the actors acted with the initial weights (v0)" in window(records)["invalid"]  # a second: flagged


def test_table_and_ratios_compare_systems_of_the_same_case():
    rows = [
        {"system": "qfleet", "env": "cartpole", "utd": 4.0, "env_steps_per_s": 1000.0, "updates_per_s": 3600.0},
        {"system": "single-process", "env": "cartpole", "utd": 4.0, "env_steps_per_s": 500.0, "updates_per_s": 4000.0},
        {"system": "rllib", "env": "cartpole", "utd": 4.0, "skipped": "RLlib not installed: skipped"},
    ]
    text = table(rows)
    assert "| qfleet | cartpole | 4 | 1,000 | 3,600.0 | - | - | - |" in text
    assert "| rllib | cartpole | 4 | RLlib not installed: skipped | | | | |" in text
    assert ratios(rows) == ["cartpole UTD 4: qfleet updates/s = 0.90x the single-process loop's (target >= 0.9)"]


def test_progress_records_carry_staleness_once_known_and_leave_it_out_before():
    from test_fault_counts import record

    assert not {"policy_staleness", "sample_staleness", "sample_age_s"} & set(record().to_json())
    known = record(policy_staleness=1.5, sample_staleness=2.25, sample_age_s=0.8).to_json()
    assert (known["policy_staleness"], known["sample_staleness"], known["sample_age_s"]) == (1.5, 2.25, 0.8)


def test_policy_staleness_is_the_learner_version_minus_the_actors_mean():
    from actors import FleetStats
    from system.train.supervise import _policy_staleness

    assert _policy_staleness(10, None) is None
    fields = {name: 0 for name in FleetStats.__dataclass_fields__} | {"recent_return": None}
    fields |= {"policy_versions": {0: 7, 1: 9}, "inserted_by_actor": {}}
    assert _policy_staleness(10, FleetStats(**fields)) == 2.0
    assert _policy_staleness(10, FleetStats(**(fields | {"policy_versions": {}}))) is None
    # The driver's learner version is from its last poll; an actor may already act with a newer one
    # (published since): that version bounds the learner's from below, so never a negative staleness.
    assert _policy_staleness(8, FleetStats(**(fields | {"policy_versions": {0: 12, 1: 10}}))) == 1.0


def test_first_env_step_is_when_the_first_transition_reached_the_replay():
    # The driver's env_steps waits for the actors' first chunk; the shards had inserts a second earlier.
    records = [
        progress(1.0, 0, 0) | {"replay_inserts": 0},
        progress(2.0, 0, 0) | {"replay_inserts": 64},
        progress(3.0, 512, 0) | {"replay_inserts": 600},
    ]
    assert first_env_step_s(records) == 2.0
    assert first_env_step_s([progress(1.0, 0, 0), progress(2.5, 8, 0)]) == 2.5  # older records: env_steps


def test_qfleet_samples_like_the_others_and_the_users_overrides_come_last(tmp_path):
    budget = Budget(overrides=("env.num_envs=4", "actors.n_step=3"))
    command = qfleet_command(ENVS["cartpole"], 1.0, budget, tmp_path)
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert "replay.selector=uniform" in sets and "actors.n_step=1" in sets  # the config's are prioritized, 3-step
    assert sets[-2:] == ["env.num_envs=4", "actors.n_step=3"]  # after the benchmark's own: they win


def test_rllib_training_intensity_gives_the_asked_utd_under_rllibs_round_robin_weights():
    sys.path.insert(0, str(ROOT / "system" / "bench"))
    try:
        from rllib_peer import ROLLOUT_FRAGMENT_LENGTH, training_intensity
    finally:
        sys.path.pop(0)

    def achieved(utd, batch, runners, envs):
        """What RLlib 2.60 makes of it (ray/rllib/algorithms/dqn/dqn.py, calculate_rr_weights, without
        its rounding): it counts runners + 1 samplers; only the remote runners sample."""
        intensity = training_intensity(utd, batch, runners)
        native_ratio = batch / (ROLLOUT_FRAGMENT_LENGTH * envs * (runners + 1))
        updates_per_round = intensity / native_ratio  # train ops per sampling op, a batch each
        return updates_per_round / (ROLLOUT_FRAGMENT_LENGTH * envs * max(runners, 1))

    for utd, batch, runners, envs in ((1.0, 128, 2, 8), (4.0, 128, 2, 8), (0.25, 32, 3, 4), (1.0, 64, 0, 1)):
        assert achieved(utd, batch, runners, envs) == pytest.approx(utd)


def test_rllib_row_says_skipped_where_rllib_does_not_import(tmp_path):
    # This interpreter is the product's venv: RLlib is no dependency of qfleet.
    row = run_rllib(ENVS["cartpole"], 1.0, Budget(), sys.executable, tmp_path)
    assert row == {"system": "rllib", "log": str(tmp_path / "rllib-cartpole-utd1.log")} | {
        "skipped": "RLlib not installed: skipped"
    }


def test_single_process_loop_measures_training_on_one_torch_thread():
    from system.bench.dqn_baseline import throughput

    figures = throughput("CartPole-v1", 1.0, hidden_size=16, batch_size=16, learning_starts=100, env_steps=400)
    assert figures["env_steps"] == 400 and figures["updates"] == 301  # one per step from the 100th on
    assert figures["achieved_utd"] == pytest.approx(1.0, abs=0.01) and figures["torch_threads"] == 1


def test_update_cost_times_the_learner_e2e_runs_beside_the_loops_update_on_one_thread(tmp_path, monkeypatch):
    import json

    from system.bench.update_cost import qfleet_learner, run_update_cost_bench
    from system.cli.bench import E2E_ENVS

    config = qfleet_learner("breakout", Budget()).config  # the e2e run's learner, like for like
    assert (config.loss, config.batch_size, config.architecture.hidden_size) == ("dqn", 128, 256)
    assert config.architecture.num_layers == 2 and not config.architecture.layer_norm
    argv = ["qfleet", "bench", "update-cost", "--profile", "3", "--output", str(tmp_path / "cost.json")]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_update_cost_bench("cartpole", rounds=1, updates=2, output=str(tmp_path / "cost.json"), profile=3) == 0
    figures = json.loads((tmp_path / "cost.json").read_text())
    assert figures["torch_threads"] == 1 and figures["env"] == "cartpole"
    assert figures["command"] == f"qfleet bench update-cost --profile 3 --output {tmp_path / 'cost.json'}"
    assert (figures["commit"] is None) == (figures["dirty"] is None) and "CPUs" in figures["machine"]
    assert set(E2E_ENVS) == set(ENVS)  # --env's choices, copied for a torch-free --help
    assert set(figures["cases"]) == {
        "loop update (default Adam)",
        "loop update (fused Adam)",
        "qfleet agent.update (default Adam)",
        "qfleet agent.update",
        "qfleet Learner.step",
    }
    assert all(case["min_us"] > 0 for case in figures["cases"].values())
    assert (figures["device"], figures["clock"]) == ("cpu", "thread CPU time")
    profiled = figures["profile"]  # where the learner's step goes, by torch.profiler
    assert profiled["steps"] == 3 and "device_kernel_us_per_step" not in profiled  # no device on the CPU
    assert profiled["host reads of a tensor (.item(), float()) per step"] >= 1  # the loss, for the metrics
    assert "aten::addmm" in profiled["top_ops_by_host_time"]


@pytest.mark.parametrize("device", ["tpu", "cuda:7", "gpu0"])
def test_update_cost_refuses_a_device_it_cannot_run_on_before_building_anything(device):
    from system.bench.update_cost import bench_device
    from system.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--device {device}: "):
        bench_device(device)


def test_sample_age_is_a_mean_over_samples_and_leaves_version_zero_out():
    from learner.loop import Learner
    from learner.publish_times import PublishTimes

    learner = SimpleNamespace(_published_at=PublishTimes(1000))
    assert Learner.sample_age(learner, np.array([0, 0]), now=100.0) is None  # nothing published yet
    learner._published_at.record(5, 90.0)
    learner._published_at.record(6, 98.0)
    # Three samples of version 6 (2 s old), one of 5 (10 s old), version 0 (initial weights) left out.
    assert Learner.sample_age(learner, np.array([6, 6, 6, 5, 0, 0]), now=100.0) == 4.0
    assert Learner.sample_age(learner, np.array([0]), now=100.0) is None
    # A version older than those remembered: aged from the oldest remembered publication, a lower bound.
    assert Learner.sample_age(learner, np.array([2]), now=100.0) == 10.0


CHILD = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"

BENCH = textwrap.dedent(
    """
    import pathlib, signal, sys
    import system.bench.e2e as e2e

    e2e.qfleet_command = lambda *args: [sys.executable, "-c", {child!r}]
    from system.bench.children import interrupt_on_sigterm
    interrupt_on_sigterm()
    e2e.run_qfleet(e2e.ENVS["cartpole"], 1.0, e2e.Budget(stop_timeout_s=5), pathlib.Path(sys.argv[1]))
    """
)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_bench_stops_its_qfleet_train(tmp_path, how):
    bench = subprocess.Popen(
        [sys.executable, "-c", BENCH.format(child=CHILD), str(tmp_path)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    log = tmp_path / "qfleet-cartpole-utd1.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().strip()):
        assert bench.poll() is None and time.monotonic() < deadline, "the stand-in qfleet train did not start"
        time.sleep(0.1)
    child = int(log.read_text().split()[0])
    bench.send_signal(how)
    bench.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _alive(child):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"qfleet train outlived the bench stopped by {how.name}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
