"""Offline-only runs (train.total_env_steps 0) and what filtered BC needs from a dataset: each
transition's `episode_return`, hand-computed; loaded rows at policy_version -1; the plan of an
offline-only run; the summary's phase column."""

from __future__ import annotations

import numpy as np
import pytest

from actors import spec_for_spaces
from learner import ActionSpace
from system.bench.offline import record_medium_dataset
from system.config import load_config
from system.datasets import DatasetSource, Episodes, load_transitions, nstep_transitions, with_episode_return
from system.errors import ConfigError
from system.observe.report import summary_table
from system.train import plan
from system.train.records import EvalRecord
from system.train.run_dir import RunDir

OFFLINE_ONLY = "configs/cartpole_offline_online.yaml"
DATASET = "cartpole/medium-v0"


def hand_made_episodes() -> Episodes:
    """Episode 0: rewards 1, 2, 3, terminated; episode 1: rewards 0.5, 4, truncated (time limit)."""
    return Episodes(
        observations=np.arange(7, dtype=np.float32).reshape(7, 1),  # 3 + 1, then 2 + 1 observations
        actions=np.zeros(5, np.int64),
        rewards=np.array([1.0, 2.0, 3.0, 0.5, 4.0]),
        terminations=np.array([False, False, True, False, False]),
        truncations=np.array([False, False, False, False, True]),
        lengths=np.array([3, 2]),
        metadata=[{"policy_version": 7}, {}],
        dataset_metadata={},
    )


def test_each_transition_carries_its_whole_episodes_undiscounted_return_however_the_episode_ended():
    out = nstep_transitions(hand_made_episodes(), n_step=2, gamma=0.5)
    # Every step of an episode, its first and its last included, carries the same sum: 1+2+3, 0.5+4.
    np.testing.assert_array_equal(out["episode_return"], np.array([6.0, 6.0, 6.0, 4.5, 4.5], np.float32))
    assert out["episode_return"].dtype == np.float32
    # The n-step reward stays discounted and windowed (the return is a column beside it).
    np.testing.assert_allclose(out["reward"], [1 + 0.5 * 2, 2 + 0.5 * 3, 3, 0.5 + 0.5 * 4, 4])
    np.testing.assert_allclose(out["discount"], [0.25, 0.0, 0.0, 0.25, 0.5])  # terminated: 0; truncated: bootstraps


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("datasets")
    returns = record_medium_dataset(str(folder), DATASET, episodes=6, seed=0)
    return folder, returns


def test_loaded_rows_carry_episode_return_only_when_asked_and_no_policy_version_of_this_run(datasets):
    import gymnasium as gym

    folder, returns = datasets
    env = gym.make("CartPole-v1")
    spec = spec_for_spaces("CartPole-v1", env.observation_space, env.action_space)
    source = DatasetSource(DATASET, datasets_dir=str(folder))
    loaded = load_transitions(source, with_episode_return(spec), ActionSpace(num_actions=2), n_step=3, gamma=0.99)
    columns = loaded.transitions
    assert sorted(set(columns["episode_return"].tolist())) == sorted(set(returns))
    assert len(columns["episode_return"]) == sum(returns)  # CartPole: one reward per step
    assert (columns["policy_version"] == -1).all()  # the recording run's versions, not this learner's
    plain = load_transitions(source, spec, ActionSpace(num_actions=2), n_step=3, gamma=0.99).transitions
    assert "episode_return" not in plain and set(plain) == set(spec.columns)


WARMUP = ("learner.loss=iql", "learner.policy_warmup=filtered_bc", "learner.policy_starts=200")
"""pi clones the best transitions, ranked by episode_return, during the first 200 updates."""


def offline_only(folder, *extra: str) -> list[str]:
    return ["train.total_env_steps=0", f"offline.dataset={DATASET}", f"offline.datasets_dir={folder}", *extra]


def test_an_offline_only_plan_starts_no_actors_and_gives_filtered_bc_its_episode_returns(datasets, tmp_path):
    folder, returns = datasets
    checked = plan(OFFLINE_ONLY, offline_only(folder, "learner.loss=filtered_bc"), str(tmp_path / "bc"), None)
    assert checked.offline_only
    assert "episode_return" in checked.offline_spec.columns and "episode_return" not in checked.spec.columns
    assert set(checked.offline_data.transitions["episode_return"].tolist()) == set(returns)
    iql = plan(OFFLINE_ONLY, offline_only(folder), str(tmp_path / "iql"), None)
    assert iql.offline_only and iql.offline_spec == iql.spec  # iql needs no returns: same columns as online
    online = plan(OFFLINE_ONLY, [f"offline.datasets_dir={folder}", f"offline.dataset={DATASET}"], None, None)
    assert not online.offline_only


def test_an_offline_only_iql_plan_with_a_filtered_bc_warmup_gives_its_offline_rows_episode_returns(datasets, tmp_path):
    folder, returns = datasets
    warmup = ["learner.policy_warmup=filtered_bc", "learner.policy_starts=100"]
    offline = plan(OFFLINE_ONLY, offline_only(folder, *warmup), str(tmp_path / "warm"), None)
    assert "episode_return" in offline.offline_spec.columns
    assert set(offline.offline_data.transitions["episode_return"].tolist()) == set(returns)
    # Online, mixed batches need the same columns from both sources (actors' rows have no returns):
    # a fresh offline -> online run with the warm-up is refused before it starts, naming the two commands.
    mixed = [f"offline.datasets_dir={folder}", f"offline.dataset={DATASET}", *warmup]
    with pytest.raises(ConfigError, match=r"policy_warmup.*total_env_steps=0.*--resume"):
        plan(OFFLINE_ONLY, mixed, None, None)
    online = plan(OFFLINE_ONLY, [*mixed, "learner.policy_warmup=none"], None, None)
    assert not online.offline_only and online.offline_spec == online.spec


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.total_env_steps=0"], "offline-only run: it needs offline.dataset"),
        (["train.total_env_steps=0", "offline.dataset=d", "offline.updates=0"], "offline.updates > 0"),
        (["learner.loss=filtered_bc"], "filtered_bc.*actors' online transitions lack"),
        (["offline.dataset=d", "learner.loss=filtered_bc"], "filtered_bc.*runs offline only"),
        (["train.total_env_steps=-1"], "total_env_steps=-1"),
        (  # the offline phase would be all warm-up: Best-of-N never runs, an online resume warms up again
            [*WARMUP, "train.total_env_steps=0", "offline.dataset=d", "offline.updates=200"],
            "offline.updates=200.*learner.policy_starts=200",
        ),
    ],
)
def test_runs_that_cannot_be_offline_only_or_filtered_bc_are_refused_naming_why(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named):
        plan("configs/cartpole.yaml", overrides, str(tmp_path / "run"), None)
    assert not (tmp_path / "run").exists()


def test_the_summary_puts_each_evaluations_phase_in_its_own_cell_and_names_an_offline_only_run(tmp_path):
    run = RunDir(tmp_path / "run")
    config = load_config(OFFLINE_ONLY, ["train.total_env_steps=0"])
    run.write_config(config)
    run.write_json("state.json", {"phase": "offline", "online_from": None, "env_steps": 0})
    evals = [
        EvalRecord(0, 1.0, 3, False, 120.0, 10.0, [120.0], [120], 0.5, phase="offline", updates=500),
        EvalRecord(0, 2.0, 5, True, 200.0, 0.0, [200.0], [200], 0.5, phase="offline", updates=1000),
    ]
    run.append_records([e.to_json() for e in evals])
    summary = summary_table(run)
    assert "| phase | offline (offline only: no actors) |" in summary
    assert "| env steps | wall time (min) | weights | phase | eval return (mean +- std) |" in summary
    assert "| 0 | 0.0 | v5 | offline, update 1,000 | 200.0 +- 0.0 |" in summary
    for row in summary.splitlines():  # every table row closes its last cell: nothing trails the table
        assert not row.startswith("|") or row.endswith("|"), row


def test_an_offline_only_run_stopped_mid_phase_resumes_to_finish_it_and_a_finished_one_is_refused(datasets, tmp_path):
    from learner import PhaseMark
    from learner.checkpoint import save

    folder, _ = datasets
    fresh = plan(OFFLINE_ONLY, offline_only(folder, "offline.updates=300"), str(tmp_path / "run"), None)
    run = fresh.run
    run.write_config(fresh.config)
    run.write_json("state.json", {"phase": "offline", "online_from": None, "env_steps": 0})
    counters = {"updates": 120, "version": 3, "inserts": 0}
    save(
        run.checkpoints,
        {"agent": {}, "counters": counters, "rng": {}, "phase": PhaseMark("offline", 120).to_state()},
        120,
    )

    resumed = plan(None, [], None, str(run.path))  # total_env_steps 0 is not "done" for an offline-only run
    assert resumed.offline_only and resumed.learner_reached.phase == "offline"

    counters["updates"] = 300
    save(
        run.checkpoints,
        {"agent": {}, "counters": counters, "rng": {}, "phase": PhaseMark("offline", 300).to_state()},
        300,
    )
    with pytest.raises(ConfigError, match="already made 300 offline updates; go further with --set offline.updates"):
        plan(None, [], None, str(run.path))
    assert plan(None, ["offline.updates=500"], None, str(run.path)).offline_only


def test_an_offline_only_run_is_finished_where_its_learner_says_its_offline_phase_ends(tmp_path):
    from types import SimpleNamespace

    from system.train.driver import end_line
    from system.train.records import RunCounters

    config = load_config(OFFLINE_ONLY, ["train.total_env_steps=0", "offline.updates=300"])
    checked = SimpleNamespace(config=config, run=RunDir(tmp_path / "run"), offline_only=True)
    counters = RunCounters({"phase": "offline"}, 0, 0)
    counters.updates, counters.offline_until = 350, 450  # a fresh learner continued from update 150
    line = end_line(checked, counters)
    assert line.startswith("qfleet train: stopped at update 350 of the offline phase (ends at update 450)")
    assert "continue it with: qfleet train --resume" in line
    counters.updates = 450
    assert end_line(checked, counters).startswith("qfleet train: finished at update 450")
    assert "--resume" not in end_line(checked, counters)


@pytest.mark.parametrize(
    "state",
    [
        {"phase": "online", "online_from": {"updates": 300}, "env_steps": 5000},
        {"phase": "online", "online_from": {"updates": 300}, "env_steps": 0},  # killed as it went online
    ],
)
def test_a_run_that_went_online_is_refused_as_offline_only_with_advice_that_works(datasets, tmp_path, state):
    from learner import PhaseMark
    from learner.checkpoint import save

    folder, _ = datasets
    fresh = plan(
        OFFLINE_ONLY, [f"offline.dataset={DATASET}", f"offline.datasets_dir={folder}"], str(tmp_path / "r"), None
    )
    run = fresh.run
    run.write_config(fresh.config)
    run.write_json("state.json", state)
    mark = PhaseMark("online", 300, 300).to_state()
    save(
        run.checkpoints,
        {"agent": {}, "counters": {"updates": 400, "version": 5, "inserts": 0}, "rng": {}, "phase": mark},
        400,
    )
    with pytest.raises(ConfigError, match="went online at update 300.*cannot become offline-only") as refused:
        plan(None, ["train.total_env_steps=0"], None, str(run.path))
    assert "--set train.total_env_steps=N" in str(refused.value) and "offline.updates=N" not in str(refused.value)


def test_an_offline_only_run_stopped_inside_its_warmup_cannot_resume_online_until_its_offline_phase_is_past_it(
    datasets, tmp_path
):
    """Online, batches are mixed and hold no episode_return: a learner that would still be warming
    up (checkpointed at update 120 of policy_starts 200, or starting fresh) is refused, with the
    command that finishes the offline phase first; one checkpointed past the warm-up goes online."""
    from learner import PhaseMark
    from learner.checkpoint import save

    folder, _ = datasets
    fresh = plan(OFFLINE_ONLY, offline_only(folder, *WARMUP, "offline.updates=300"), str(tmp_path / "run"), None)
    run = fresh.run
    run.write_config(fresh.config)
    run.write_json("state.json", {"phase": "offline", "online_from": None, "env_steps": 0})

    def checkpoint(updates: int) -> None:
        state = {"agent": {}, "counters": {"updates": updates, "version": 3, "inserts": 0}, "rng": {}}
        save(run.checkpoints, state | {"phase": PhaseMark("offline", updates).to_state()}, updates)

    checkpoint(120)
    with pytest.raises(
        ConfigError, match=r"update 120, inside the warm-up.*--resume RUN_DIR --set train.total_env_steps=0"
    ):
        plan(None, ["train.total_env_steps=5000"], None, str(run.path))
    assert plan(None, [], None, str(run.path)).offline_only  # finishing the offline phase offline-only is allowed
    checkpoint(200)
    online = plan(None, ["train.total_env_steps=5000"], None, str(run.path))
    assert not online.offline_only and online.learner_checkpoint[0] == 200


def test_an_online_resume_of_a_warmup_run_whose_learner_starts_fresh_is_refused(datasets, tmp_path):
    folder, _ = datasets
    fresh = plan(OFFLINE_ONLY, offline_only(folder, *WARMUP, "offline.updates=300"), str(tmp_path / "run"), None)
    run = fresh.run
    run.write_config(fresh.config)
    run.write_json("state.json", {"phase": "offline", "online_from": None, "env_steps": 0})
    run.append_records([{"kind": "progress", "updates": 250, "weights_version": 4}])  # trained, no checkpoint left
    with pytest.raises(ConfigError, match="start the warm-up afresh on mixed batches"):
        plan(None, ["train.total_env_steps=5000"], None, str(run.path), fresh_learner=True)
