"""A killed actor process never reports its last chunk; the env steps behind the transitions the
shards stored for it count anyway, once, and across a resume only this session's are credited."""

from __future__ import annotations

from actors import FleetStats, actor_writer_id
from replay import writer_tag
from system.train.records import RunCounters


def fleet(by_actor: dict[int, int], actor_ids=None) -> FleetStats:
    """The fleet as its processes reported: env steps per actor id."""
    fields = {name: 0 for name in FleetStats.__dataclass_fields__} | {"recent_return": None, "policy_versions": {}}
    ids = frozenset(by_actor) if actor_ids is None else frozenset(actor_ids)
    reported = {"env_steps": sum(by_actor.values()), "env_steps_by_actor": by_actor, "inserted_by_actor": {}}
    return FleetStats(**fields | reported | {"actor_ids": ids})


def tag(actor_id: int) -> int:
    return writer_tag(actor_writer_id("run", actor_id))


def test_transitions_stored_beyond_the_env_steps_an_actors_processes_reported_count_as_env_steps():
    counters = RunCounters({}, eval_every_steps=0)
    counters.stored_by_writer = {tag(0): 990, tag(1): 1_512}  # actor 1's killed process stored 512 more
    counters.count_env_steps("run", fleet({0: 1_000, 1: 1_000}))
    assert (counters.env_steps, counters.env_steps_unreported) == (2_512, 512)


def test_an_actor_killed_before_it_ever_reported_is_credited_with_all_it_stored():
    counters = RunCounters({}, eval_every_steps=0)
    counters.stored_by_writer = {tag(0): 800, tag(1): 256}
    counters.count_env_steps("run", fleet({0: 800}, actor_ids={0, 1}))
    assert counters.env_steps == 1_056


def test_reports_that_catch_up_with_the_shards_credit_nothing_and_the_count_never_goes_back():
    counters = RunCounters({}, eval_every_steps=0)
    counters.stored_by_writer = {tag(0): 600}  # mid-chunk: stored, not reported yet
    counters.count_env_steps("run", fleet({0: 512}))
    assert counters.env_steps == 600
    counters.count_env_steps("run", fleet({0: 590}))  # the shards' count is the newer: it stays
    assert (counters.env_steps, counters.env_steps_unreported) == (600, 10)
    counters.stored_by_writer = {tag(0): 1_010}
    counters.count_env_steps("run", fleet({0: 1_024}))  # the chunk's report: nothing credited
    assert (counters.env_steps, counters.env_steps_unreported) == (1_024, 0)


def test_a_resumed_run_credits_only_what_its_own_session_stored_and_saves_its_baseline():
    first = RunCounters({}, eval_every_steps=0)
    first.stored_by_writer = {tag(0): 5_000}
    first.count_env_steps("run", fleet({0: 5_000}))
    state = first.state()
    assert state["counted_by_writer"] == {str(tag(0)): 5_000}

    resumed = RunCounters(state, eval_every_steps=0)
    resumed.stored_by_writer = {tag(0): 5_700}
    resumed.count_env_steps("run", fleet({0: 512}))  # 188 stored after the last report
    assert (resumed.env_steps, resumed.env_steps_unreported) == (5_700, 188)


def test_a_resume_after_a_crash_does_not_count_again_what_the_last_state_had_reported():
    # The crashed session's last state: 1,000 env steps reported, the shards' poll older (800).
    first = RunCounters({}, eval_every_steps=0)
    first.stored_by_writer = {tag(0): 800}
    first.count_env_steps("run", fleet({0: 1_000}))
    assert first.env_steps == 1_000

    resumed = RunCounters(first.state(), eval_every_steps=0)
    resumed.stored_by_writer = {tag(0): 1_000}  # the 200 stored after that poll were reported already
    resumed.count_env_steps("run", fleet({0: 64}))
    assert (resumed.env_steps, resumed.env_steps_unreported) == (1_064, 0)


def test_nothing_is_credited_while_a_ledger_count_may_hold_a_batch_twice():
    counters = RunCounters({}, eval_every_steps=0)
    counters.stored_by_writer = {tag(0): 1_512}
    counters.receipts_dropped = 1  # a re-sent batch's receipt a shard could not keep
    counters.count_env_steps("run", fleet({0: 1_000}))
    assert (counters.env_steps, counters.env_steps_unreported) == (1_000, 0)


def test_a_run_resumed_from_a_state_without_the_baseline_credits_nothing():
    resumed = RunCounters({"env_steps": 5_000, "transitions_inserted": 5_000}, eval_every_steps=0)
    resumed.stored_by_writer = {tag(0): 5_700}
    resumed.count_env_steps("run", fleet({0: 100}))
    assert (resumed.env_steps, resumed.env_steps_unreported) == (5_100, 0)
    assert "counted_by_writer" not in resumed.state()
