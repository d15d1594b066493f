"""The driver's fault bookkeeping: counted per kind, shown only when there is something to show,
and a run stops only when one component fails too often within the window."""

from __future__ import annotations

import pytest

from system.errors import TrainError
from system.train.faults import FaultCounts, FaultLog
from system.train.records import ProgressRecord, RunCounters, progress_line


def record(**changes) -> ProgressRecord:
    values = {
        "wall_s": 12.0,
        "time": 0.0,
        "env_steps": 1000,
        "env_steps_per_s": 100.0,
        "episodes": 10,
        "recent_return": 20.0,
        "last_eval": None,
        "updates": 500,
        "updates_per_s": 50.0,
        "achieved_utd": 0.5,
        "learner_inserts": 1000,
        "target_utd": 0.5,
        "weights_version": 3,
        "replay_size": 1000,
        "replay_inserts": 1000,
        "actors": 2,
        "actor_restarts": 0,
        "env_restarts": 0,
        "transitions_lost": 0,
    }
    return ProgressRecord(**{**values, **changes})


def test_progress_line_names_faults_losses_and_silent_components_only_when_there_are_any():
    assert "faults" not in progress_line(record(faults=FaultCounts().to_json()), 5000)
    line = progress_line(
        record(
            faults=FaultCounts(shard_restarts=1, redis_restarts=2).to_json(),
            transitions_lost=1205,
            silent={"shard 1": 6.2},
        ),
        5000,
    )
    assert line.endswith("| faults: shard restarts 1, redis restarts 2; 1,205 transitions lost | silent: shard 1 6 s")


def test_progress_line_flags_clamped_targets_only_above_one_percent_and_json_keeps_the_fraction():
    assert "CLAMPED" not in progress_line(record(), 5000)  # a loss without a support
    assert "CLAMPED" not in progress_line(record(clamped_fraction=0.01), 5000)
    line = progress_line(record(clamped_fraction=0.873), 5000)
    assert "| CLAMPED TARGETS 87% of the batch (learner.v_min/v_max cannot hold the returns)" in line
    assert "clamped_fraction" not in record().to_json()
    assert record(clamped_fraction=0.0).to_json()["clamped_fraction"] == 0.0


def test_a_component_failing_max_times_within_the_window_stops_the_run_others_do_not():
    faults = FaultLog(max_failures=3, window_s=60.0)
    faults.record("shard 0", "shard_restarts", "died", now=0.0)
    faults.record("shard 1", "shard_hangs", "silent", now=1.0)
    faults.record("shard 0", "shard_restarts", "died", now=2.0)
    faults.record("shard 0", "shard_restarts", "died", now=70.0)  # the first two left the window
    faults.record("shard 0", "shard_restarts", "died", now=71.0)
    with pytest.raises(TrainError, match=r"shard 0 failed 3 times within 60 s .*max_component_failures=3.*last: died"):
        faults.record("shard 0", "shard_restarts", "died", now=72.0)
    assert faults.counts == FaultCounts(shard_restarts=5, shard_hangs=1)


def test_counts_continue_across_a_resume_through_state_json():
    counters = RunCounters({}, eval_every_steps=0)
    counters.faults = FaultCounts(shard_restarts=2, actor_restarts=1)
    counters.fleet_lost, counters.shards_lost = 10, 500
    state = counters.state()
    assert (state["transitions_lost"], state["shards_lost"]) == (510, 500)

    resumed = RunCounters(state, eval_every_steps=0)
    log = FaultLog(5, 600.0, resumed.faults)
    log.set_actor_restarts(3)  # this session's fleet count adds to the earlier sessions'
    assert log.counts == FaultCounts(shard_restarts=2, actor_restarts=4)
    resumed.fleet_lost = 7
    resumed.shards_lost = 600  # the shards' ledgers count over the whole run
    assert resumed.transitions_lost == 10 + 7 + 600
    assert FaultCounts.from_json(None) == FaultCounts()


def test_the_replay_inserts_continue_across_a_resume_through_state_json():
    from types import SimpleNamespace

    from replay import ShardAccounting
    from system.train.records import take_shard_accounting

    counters = RunCounters({}, eval_every_steps=0)
    shards = [SimpleNamespace(inserts=700, lost_transitions=300, accounting=ShardAccounting(0, tracked=False))]
    take_shard_accounting(counters, shards)
    resumed = RunCounters(counters.state(), eval_every_steps=0)
    # until every shard answers again, the resumed run's records show the inserts it had, not 0
    assert resumed.replay_inserts == 1000


def test_a_progress_record_carries_the_learners_exact_insert_count():
    assert record(updates=500, achieved_utd=0.3333, learner_inserts=1500).to_json()["learner_inserts"] == 1500


def test_the_shards_ledgers_give_the_run_its_inserted_and_stored_twice_counts():
    from types import SimpleNamespace

    from replay import ShardAccounting, writer_tag
    from replay.insert_ledger import Receipt
    from system.train.records import take_shard_accounting

    actor0, actor1 = writer_tag("run-actor-0"), writer_tag("run-actor-1")
    # Shard 0 died after storing 450 items of actor 0's stream 7, of which 300 had been
    # acknowledged; actor 0 re-sent the rest to shard 1 (stream 8, 200 items), receipt attached.
    # A plain client (tag 0) also stored 5 items: not the actors'.
    shards = [
        SimpleNamespace(
            inserts=1450, lost_transitions=0, accounting=ShardAccounting(0, {7: (actor0, 450), 9: (actor1, 1000)}, [])
        ),
        SimpleNamespace(
            inserts=205,
            lost_transitions=0,
            accounting=ShardAccounting(1, {8: (actor0, 200), 3: (0, 5)}, [Receipt(0, 7, 300, writer_tag=actor0)]),
        ),
    ]
    counters = RunCounters({}, eval_every_steps=0)
    take_shard_accounting(counters, shards)
    assert (counters.transitions_inserted, counters.transitions_stored_twice) == (1500, 150)
    assert counters.transitions_unattributed == 5  # the plain client's: no actor's
    state = counters.state()
    assert RunCounters(state, eval_every_steps=0).transitions_stored_twice == 150
    line = progress_line(
        record(faults=FaultCounts(shard_restarts=1).to_json(), transitions_lost=450, transitions_stored_twice=150),
        5000,
    )
    assert line.endswith("| faults: shard restarts 1; 450 transitions lost, 150 stored twice")


def test_what_an_actor_counted_lost_and_its_shard_had_stored_is_lost_once_across_a_resume():
    from types import SimpleNamespace

    from replay import ShardAccounting, writer_tag
    from replay.insert_ledger import Receipt
    from system.train.records import take_shard_accounting

    actor = writer_tag("run-actor-0")
    # 10 acknowledged on shard 0, then 1 more stored; shard 0 died before a checkpoint (11 lost by
    # it). No shard took the re-send in time: the actor counted 40 lost (that 1 among them).
    shards = [
        SimpleNamespace(
            inserts=5,
            lost_transitions=11,
            accounting=ShardAccounting(0, {7: (actor, 11), 8: (actor, 5)}, [Receipt(0, 7, 10, True, actor)]),
        )
    ]
    counters = RunCounters({}, eval_every_steps=0)
    counters.fleet_lost = 40
    take_shard_accounting(counters, shards)
    assert (counters.transitions_given_back, counters.transitions_stored_twice) == (1, 0)
    assert counters.transitions_lost == 50 and counters.transitions_inserted == 15
    assert counters.transitions_unattributed == 0
    resumed = RunCounters(counters.state(), eval_every_steps=0)
    assert resumed.transitions_lost == 50
    take_shard_accounting(resumed, shards)
    assert resumed.transitions_lost == 50


def test_without_shard_ledgers_the_stored_for_the_actors_counts_are_left_out_not_shown_as_zeros():
    from types import SimpleNamespace

    from replay import ShardAccounting
    from system.observe.status import faults_line
    from system.train.records import take_shard_accounting

    shards = [SimpleNamespace(inserts=700, lost_transitions=300, accounting=ShardAccounting(0, tracked=False))]
    counters = RunCounters({}, eval_every_steps=0)
    take_shard_accounting(counters, shards)
    state = counters.state()
    assert "transitions_inserted" not in state and "transitions_stored_twice" not in state
    assert state["transitions_lost"] == 300
    assert "stored for the actors" not in faults_line(state)
    progress = record(transitions_lost=300, **counters.accounting())
    assert "transitions_inserted" not in progress.to_json()
    assert RunCounters(state, eval_every_steps=0).accounting() == {}


def test_accounting_gaps_are_named_in_status_and_the_progress_line_only_when_there_are_any():
    from system.observe.status import faults_line

    state = {"faults": {}, "transitions_lost": 0, "transitions_inserted": 100, "transitions_stored_twice": 0}
    assert "accounting gaps" not in faults_line(state)
    state.update(transitions_unattributed=7, receipts_dropped=2)
    assert faults_line(state).endswith("; accounting gaps: unattributed 7, receipts dropped 2")
    assert progress_line(record(transitions_unattributed=7), 5000).endswith("| unattributed: 7 transitions")
