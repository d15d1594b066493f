"""The e2e benchmark's arithmetic on hand-made progress records, and its table."""

from __future__ import annotations

from system.bench.e2e import ratios, table, window


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
    assert figures["window_s"] == 2.0
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


def test_window_falls_back_to_env_steps_and_says_when_the_budget_was_too_short():
    figures = window([progress(1.0, 0, 0), progress(2.0, 100, 0), progress(4.0, 300, 5)])
    assert figures["env_steps_per_s"] == 100.0 and figures["updates_per_s"] == 2.5
    assert "too short" in window([progress(1.0, 0, 0), progress(2.0, 100, 0)])["error"]


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
