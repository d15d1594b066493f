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


def test_a_resumed_run_credits_only_what_its_own_session_stored_after_its_first_poll():
    from types import SimpleNamespace

    from replay.accounting import ShardAccounting
    from system.train.records import take_shard_accounting

    def shard(stored: int):
        streams = {1: (tag(0), stored)}
        return SimpleNamespace(inserts=stored, lost_transitions=0, accounting=ShardAccounting(0, streams, []))

    # The killed driver's last state said 1,000 env steps; its actor went on storing to 1,200.
    resumed = RunCounters({"env_steps": 1_000, "transitions_inserted": 1_000}, eval_every_steps=0)
    take_shard_accounting(resumed, [shard(1_200)])  # this session's first poll: its baseline
    resumed.count_env_steps("run", fleet({0: 64}))
    assert (resumed.env_steps, resumed.env_steps_unreported) == (1_064, 0)
    take_shard_accounting(resumed, [shard(1_500)])  # then its process is killed after storing 300
    resumed.count_env_steps("run", fleet({0: 128}))
    assert (resumed.env_steps, resumed.env_steps_unreported) == (1_300, 172)

    # A driver killed before its first state.json: the resume still starts its credit at its first poll.
    early = RunCounters({}, eval_every_steps=0, resumed=True)
    early.count_env_steps("run", fleet({0: 0}))  # no poll yet: nothing to credit from
    take_shard_accounting(early, [shard(1_200)])
    early.count_env_steps("run", fleet({0: 64}))
    assert (early.env_steps, early.env_steps_unreported) == (64, 0)


def test_nothing_is_credited_while_a_ledger_count_may_hold_a_batch_twice():
    counters = RunCounters({}, eval_every_steps=0)
    counters.stored_by_writer = {tag(0): 1_512}
    counters.receipts_dropped = 1  # a re-sent batch's receipt a shard could not keep
    counters.count_env_steps("run", fleet({0: 1_000}))
    assert (counters.env_steps, counters.env_steps_unreported) == (1_000, 0)
