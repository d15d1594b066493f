"""The actors' insert settings derived from the run, and the plan's warning about explicit ones."""

from __future__ import annotations

import logging
import pathlib

import pytest

from system.config import load_config
from system.config.insert_settings import InsertSettings, derive_insert_settings
from system.train import plan
from system.train.plan import insert_lead_warning

CONFIG_DIR = pathlib.Path(__file__).parents[2] / "configs"
CONFIGS = sorted(str(path) for path in CONFIG_DIR.glob("*.yaml"))
LEAD_WARNING = "ahead of the learner"


@pytest.mark.parametrize(
    ("total_env_steps", "utd", "num_actors", "expected"),
    [
        (20_000, 1.0, 2, InsertSettings(100, 1)),  # issue #23's Pendulum: 2% of the run is 400 transitions
        (50_000, 0.5, 2, InsertSettings(250, 1)),  # configs/cartpole.yaml: 1,000 transitions
        (1_000_000, 0.5, 2, InsertSettings(256, 1)),  # 512 updates at UTD 0.5: cartpole.yaml's tuned 256
        (2_000_000, 0.25, 4, InsertSettings(256, 1)),  # 512 updates / UTD 0.25 = 2,048 caps 2% (40,000)
        (2_000_000, 4.0, 4, InsertSettings(16, 1)),  # a high UTD: 512 updates are 128 env steps
        (10_000_000, 0.001, 2, InsertSettings(4096, 23)),  # the batch at its largest, then more in flight
        (10**9, 1e-4, 1, InsertSettings(4096, 32)),  # ... up to the fixed default's 32
        (50, 1.0, 2, InsertSettings(1, 1)),  # a tiny run: the smallest settings
        (0, 1.0, 2, InsertSettings(1, 1)),  # offline only: no actor runs
    ],
)
def test_insert_settings_keep_the_lead_within_two_percent_of_the_run_and_512_updates(
    total_env_steps, utd, num_actors, expected
):
    settings = derive_insert_settings(total_env_steps, utd, num_actors)
    assert settings == expected
    if total_env_steps > 1000:  # above the floor of one transition per message
        assert settings.lead(num_actors) <= min(0.02 * total_env_steps, 512 / utd)


def test_a_setting_given_is_kept_and_the_other_derived_around_it():
    assert derive_insert_settings(50_000, 0.5, 2, insert_batch=100) == InsertSettings(100, 4)  # 500 per actor
    assert derive_insert_settings(50_000, 0.5, 2, max_inserts_in_flight=4) == InsertSettings(100, 4)
    assert derive_insert_settings(50_000, 0.5, 2, 4096, 32) == InsertSettings(4096, 32)


def test_a_config_without_insert_settings_gets_derived_ones_and_explicit_ones_win():
    derived = load_config(None, ["train.total_env_steps=20000", "learner.updates_per_env_step=1"]).actors
    assert (derived.insert_batch, derived.max_inserts_in_flight) == (100, 1)
    explicit = load_config(None, ["train.total_env_steps=20000", "actors.insert_batch=4096"]).actors
    assert (explicit.insert_batch, explicit.max_inserts_in_flight) == (4096, 1)
    both = load_config(None, ["actors.insert_batch=4096", "actors.max_inserts_in_flight=32"]).actors
    assert (both.insert_batch, both.max_inserts_in_flight) == (4096, 32)
    standalone = load_config(None, ["train.total_env_steps=20000"], derive_inserts=False).actors  # no derivation asked
    assert (standalone.insert_batch, standalone.max_inserts_in_flight) == (4096, 32)


def test_the_shipped_configs_are_found_from_any_working_directory():
    assert len(CONFIGS) >= 3 and any(path.endswith("cartpole.yaml") for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS)
def test_no_shipped_config_lets_actors_run_out_of_proportion_ahead(path):
    assert insert_lead_warning(load_config(path)) is None


def test_the_lead_counts_a_vector_step_of_more_envs_than_insert_batch():
    settings = InsertSettings(insert_batch=15, max_inserts_in_flight=1)
    assert settings.lead(2) == settings.lead(2, num_envs=15) == 2 * 15 * 2
    assert settings.lead(2, num_envs=64) == 2 * 64 * 2  # one vector step is the smallest hand-over


def test_explicit_settings_out_of_proportion_are_still_warned_about_with_the_derived_ones():
    config = load_config(
        None, ["train.total_env_steps=20000", "actors.insert_batch=4096", "actors.max_inserts_in_flight=32"]
    )
    warning = insert_lead_warning(config)
    assert "270,336 transitions ahead of the learner" in warning and "1352%" in warning
    assert "(here 100 and 1)" in warning


@pytest.mark.parametrize(
    ("config", "env_id", "overrides"),
    [
        (None, "Pendulum-v1", ["train.total_env_steps=20000"]),  # issue #23's run
        (None, "Pendulum-v1", []),
        (None, "CartPole-v1", []),
        (str(CONFIG_DIR / "cartpole.yaml"), None, ["train.total_env_steps=20000"]),  # "still 5% with CartPole's"
        (str(CONFIG_DIR / "cartpole.yaml"), None, []),
    ],
)
def test_default_recipes_and_the_cartpole_config_plan_without_the_lead_warning(
    tmp_path, caplog, config, env_id, overrides
):
    with caplog.at_level(logging.WARNING):
        planned = plan(config, overrides, str(tmp_path / "run"), None, env_id=env_id)
    assert planned.config.actors.insert_batch <= 500  # derived, not the fixed 4096
    assert LEAD_WARNING not in caplog.text


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], (250, 1)),  # the config's 50k steps at UTD 0.5 with 2 actors, as `qfleet train` derives them
        (["--max-env-steps", "20000"], (100, 1)),  # the actors' own run length
        (["--set", "actors.insert_batch=64"], (64, 6)),  # a setting given wins, the other derived around it
    ],
)
def test_standalone_actors_derive_their_insert_settings_like_qfleet_train(monkeypatch, extra, expected):
    import system.services.actors
    from system.cli import main

    started = {}
    monkeypatch.setattr(
        system.services.actors, "run_actors", lambda config, *args: started.setdefault("c", config) and 0
    )
    argv = ["actors", "run", "--config", str(CONFIG_DIR / "cartpole.yaml"), "--redis-url", "redis://127.0.0.1:1/0"]
    assert main([*argv, "--run", "demo", *extra]) == 0
    actors = started["c"].actors
    assert (actors.insert_batch, actors.max_inserts_in_flight) == expected  # not the fixed 4096 x 32


def test_on_a_resume_the_warning_names_the_values_to_set_not_keys_to_leave_out():
    # a run derived 100 x 1 for 2 actors; resumed with 16 actors, config.yaml keeps 100 x 1
    config = load_config(
        None,
        [
            "train.total_env_steps=20000",
            "learner.updates_per_env_step=1",
            "actors.num_actors=16",
            "actors.insert_batch=100",
            "actors.max_inserts_in_flight=1",
        ],
    )
    warning = insert_lead_warning(config, resumed=True)
    assert "3,200 transitions ahead" in warning
    assert "--set actors.insert_batch=12 --set actors.max_inserts_in_flight=1" in warning
    assert "leave actors.insert_batch" not in warning
    assert "leave actors.insert_batch" in insert_lead_warning(config)  # a fresh run can leave them out
