"""`qfleet bench offline --online`'s arithmetic: the env steps of the first evaluation at the
threshold (offline-phase evaluations at env step 0), each arm's settings, and the table's ratios
and medians (a run that never reached the threshold counts as beyond every budget)."""

from __future__ import annotations

import pathlib

import pytest

from system.bench.offline import record_medium_dataset
from system.bench.offline_online import (
    ARMS,
    CONFIG,
    SCRATCH_CONFIG,
    ArmResult,
    Budget,
    offline_result,
    reached,
    settings,
    table,
)
from system.train import plan

BUDGET = Budget(total_env_steps=20_000, eval_every_steps=2500, eval_episodes=5, offline_updates=2000, threshold=475)


def test_the_figure_is_the_first_evaluation_at_the_threshold_and_an_offline_result_counts_at_step_zero():
    evals = [
        {"phase": "offline", "env_steps": 0, "mean_return": 300.0},
        {"phase": "online", "env_steps": 2500, "mean_return": 480.0},
        {"phase": "online", "env_steps": 5000, "mean_return": 500.0},
    ]
    assert reached(evals, 475) == 2500 and offline_result(evals) == 300.0
    assert reached([{"phase": "offline", "env_steps": 0, "mean_return": 500.0}], 475) == 0
    assert reached(evals, 501) is None
    assert offline_result([{"env_steps": 2500, "mean_return": 40.0}]) is None  # a run from scratch


def test_the_arms_differ_only_in_the_dataset():
    offon = settings(ARMS[0], 3, BUDGET, "cartpole/medium-v0", "/data")
    scratch = settings(ARMS[1], 3, BUDGET, "cartpole/medium-v0", "/data")
    assert offon["offline.dataset"] == "cartpole/medium-v0" and offon["offline.updates"] == 2000
    assert scratch["offline.dataset"] == "null" and scratch["replay.mix"] == "null"
    shared = {key: value for key, value in offon.items() if key.startswith("train.")}
    assert shared == {key: value for key, value in scratch.items() if key.startswith("train.")}
    assert shared["train.seed"] == 3 and shared["train.total_env_steps"] == 20_000


@pytest.mark.parametrize("scratch_config", [SCRATCH_CONFIG, CONFIG])
def test_each_arms_settings_are_a_run_qfleet_train_accepts(tmp_path, scratch_config):
    folder = tmp_path / "datasets"
    record_medium_dataset(str(folder), "cartpole/medium-v0", episodes=3, seed=0)
    budget = Budget(3000, 500, 2, 50, 1.0, ("env.num_envs=2",), scratch_config)
    for arm, config in ((ARMS[0], CONFIG), (ARMS[1], scratch_config)):
        overrides = [
            f"{key}={value}" for key, value in settings(arm, 0, budget, "cartpole/medium-v0", str(folder)).items()
        ]
        checked = plan(config, [*overrides, *budget.overrides], str(tmp_path / arm.replace(" ", "")), None)
        assert checked.config.train.total_env_steps == 3000 and checked.config.env.num_envs == 2
        assert (checked.offline_data is not None) == (arm == ARMS[0]), arm  # "null" reads as no dataset
        assert checked.config.replay.mix is None or arm == ARMS[0]


def result(arm: str, seed: int, steps: int | None, offline: float | None = None) -> ArmResult:
    return ArmResult(arm, seed, steps, offline, 480.0 if steps is not None else 200.0, 0, 1.0, 0, "log")


def test_the_table_gives_each_seeds_ratio_and_medians_counting_a_miss_as_beyond_the_budget():
    results = [
        result(ARMS[0], 0, 0, 490.0),
        result(ARMS[1], 0, 10_000),
        result(ARMS[0], 1, 2500, 300.0),
        result(ARMS[1], 1, 12_500),
        result(ARMS[0], 2, None, 100.0),
        result(ARMS[1], 2, None),
    ]
    text = table(results, BUDGET, "cartpole/medium-v0", 120.0)
    assert "| 0 | 0 | 490.0 | 10,000 | 0.00 |" in text
    assert "| 1 | 2,500 | 300.0 | 12,500 | 0.20 |" in text
    assert "| 2 | not within 20,000 (best 200.0) | 100.0 | not within 20,000 (best 200.0) | - |" in text
    assert "| median | 2,500 | | 12,500 | 0.10 |" in text


def test_online_only_options_without_online_are_refused_not_ignored(capsys):
    from system.cli import main

    assert main(["bench", "offline", "--set", "actors.num_actors=2", "--threshold", "400"]) == 2
    assert "--set, --threshold: only with --online" in capsys.readouterr().err


def test_another_config_is_the_offline_online_arms_recipe_and_no_scratch_leaves_that_arm_out():
    from system.bench.offline_online import train_command

    budget = Budget(125_000, 12_500, 10, 10_000, 16, (), None, "configs/minatar_breakout_offline_online.yaml")
    command = train_command(ARMS[0], 1, budget, "minatar/breakout-medium-v0", "/data", pathlib.Path("/r"))
    assert command[3:5] == ["train", "configs/minatar_breakout_offline_online.yaml"]
    text = table([result(ARMS[0], 0, 25_000, 9.5), result(ARMS[0], 1, None, 8.0)], budget, "minatar/b-v0", 4.5)
    assert "offline -> online: configs/minatar_breakout_offline_online.yaml, from scratch: not run" in text
    assert "| 0 | 25,000 | 9.5 | - | - |" in text
    assert "| 1 | not within 125,000 (best 200.0) | 8.0 | - | - |" in text


@pytest.mark.parametrize(("scratch_config", "arms"), [(None, ARMS[:1]), (SCRATCH_CONFIG, ARMS)])
def test_each_seed_runs_its_arms_and_the_json_holds_every_finished_run_before_the_next(
    scratch_config, arms, tmp_path, monkeypatch
):
    """--no-scratch runs only offline -> online; the results file is rewritten after every run, so
    a bench interrupted at seed 1 keeps seed 0's figures."""
    import json

    from system.bench import offline_online

    output, ran = tmp_path / "results.json", []

    def fake_run_arm(arm, seed, budget, dataset, datasets_dir, out_dir):
        written = json.loads(output.read_text())["results"] if output.exists() else []
        assert [(r["arm"], r["seed"]) for r in written] == ran  # every earlier run already on disk
        ran.append((arm, seed))
        return result(arm, seed, 2500)

    monkeypatch.setattr(offline_online, "run_arm", fake_run_arm)
    monkeypatch.setattr(offline_online, "interrupt_on_sigterm", lambda: None)
    budget = Budget(20_000, 2500, 5, 2000, 475, (), scratch_config)
    code = offline_online.run_offline_online_bench([0, 1], budget, "d-v0", "/data", 20.0, str(tmp_path), str(output))
    assert code == 0
    assert ran == [(arm, seed) for seed in (0, 1) for arm in arms]
    assert [(r["arm"], r["seed"]) for r in json.loads(output.read_text())["results"]] == ran
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
