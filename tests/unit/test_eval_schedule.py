"""Evaluations on the configured schedule: chunks that end on its multiples, one evaluation per
multiple reached, no drift."""

from __future__ import annotations

import heapq
import random

import pytest

from actors.allotment import chunk_allotment, min_chunk_steps
from system.train.eval_schedule import due_evaluation
from system.train.records import EvalRecord, RunCounters


def test_evaluations_fall_due_at_each_multiple_whatever_step_they_are_noticed_at():
    every, next_due, env_steps = 2000, 2000, 0
    rng = random.Random(0)
    scheduled_seen = []
    for _ in range(5000):  # many crossings, noticed at uneven steps
        env_steps += rng.randrange(1, 1500)
        scheduled, next_due = due_evaluation(env_steps, next_due, every)
        if scheduled is not None:
            scheduled_seen.append(scheduled)
            assert scheduled % every == 0 and scheduled <= env_steps < scheduled + every
        assert next_due == (env_steps // every + 1) * every  # never drifts from the multiples
    assert scheduled_seen == sorted(set(scheduled_seen)) and len(scheduled_seen) > 1000


def test_several_multiples_passed_in_one_poll_give_one_evaluation_for_the_latest():
    assert due_evaluation(1999, 2000, 2000) == (None, 2000)
    assert due_evaluation(7100, 2000, 2000) == (6000, 8000)  # 2,000, 4,000 and 6,000 passed: one
    assert due_evaluation(7900, 8000, 2000) == (None, 8000)  # no second one for the same multiples
    assert due_evaluation(8000, 8000, 2000) == (8000, 10000)


def test_no_periodic_evaluation_without_an_interval_and_a_changed_interval_keeps_the_due_step():
    assert due_evaluation(10**6, 0, 0) == (None, 0)
    # a resume that changed the interval from 5,000 to 2,000: the due step 5,000 still comes first
    assert due_evaluation(5100, 5000, 2000) == (5000, 6000)


def test_an_eval_record_keeps_the_scheduled_step_beside_the_step_the_weights_were_taken_at():
    record = EvalRecord(2008, 1.0, 3, False, 1.0, 0.0, [1.0], [1], 0.1, scheduled_env_steps=2000)
    assert record.to_json()["scheduled_env_steps"] == 2000 and record.to_json()["env_steps"] == 2008
    assert "scheduled_env_steps" not in EvalRecord(2008, 1.0, 3, True, 1.0, 0.0, [1.0], [1], 0.1).to_json()


def simulate_fleet(actors: int, num_envs: int, rates: list[float], chunk_s: float, total: int, every: int | None):
    """Actors stepping at `rates` env steps/s, each chunk ending at its allotment or after
    `chunk_s`, its smallest chunk toward a milestone sized from its pace as `ActorFleet` does;
    returns the fleet's counter after each chunk end."""
    done, counts, promised = 0, [], {}
    events: list[tuple[float, int, int]] = []

    def submit(actor: int, now: float) -> None:
        smallest = min_chunk_steps(num_envs, rates[actor], chunk_s)
        allotment = chunk_allotment(done, sum(promised.values()), actors, num_envs, total, every, 0, smallest)
        if allotment == 0:
            return
        steps = min(allotment, int(rates[actor] * chunk_s) // num_envs * num_envs)
        promised[actor] = allotment
        heapq.heappush(events, (now + steps / rates[actor], actor, steps))

    for actor in range(actors):
        submit(actor, 0.0)
    while events:
        now, actor, steps = heapq.heappop(events)
        promised.pop(actor)
        done += steps
        counts.append(done)
        submit(actor, now)
    return counts


def overshoots(counts: list[int], every: int, total: int) -> list[int]:
    """How far past each multiple of `every` the fleet's counter was when it first reached it."""
    return [
        next(count for count in counts if count >= multiple) - multiple for multiple in range(every, total + 1, every)
    ]


@pytest.mark.parametrize(("actors", "rates"), [(1, [3000.0]), (2, [3000.0, 3000.0])])
def test_actors_at_one_pace_end_their_chunks_exactly_on_the_schedule(actors, rates):
    counts = simulate_fleet(actors, 8, rates, chunk_s=1.0, total=20_000, every=2000)
    assert counts[-1] == 20_000  # the budget is still met exactly
    assert overshoots(counts, 2000, 20_000) == [0] * 10
    # without milestones the count passes multiples by up to a chunk (here 2,000 steps)
    assert max(overshoots(simulate_fleet(actors, 8, rates, 1.0, 20_000, None), 2000, 20_000)) >= 1000


@pytest.mark.parametrize("rates", [[1000.0, 2500.0, 4000.0], [500.0, 5000.0], [800.0, 1600.0, 3000.0, 6000.0]])
def test_actors_at_uneven_paces_reach_each_multiple_within_half_an_interval_or_a_smallest_chunk_and_closer_than_without(
    rates,
):
    counts = simulate_fleet(len(rates), 8, rates, chunk_s=1.0, total=20_000, every=2000)
    assert counts[-1] == 20_000
    # a fast actor's chunk is at least a quarter of its plain one (5,000/s: 1,250), and may pass a multiple by that
    assert max(overshoots(counts, 2000, 20_000)) < max(1000, *(min_chunk_steps(8, rate, 1.0) for rate in rates))
    plain = simulate_fleet(len(rates), 8, rates, chunk_s=1.0, total=20_000, every=None)
    assert max(overshoots(counts, 2000, 20_000)) < max(overshoots(plain, 2000, 20_000))


def test_actors_held_back_to_a_slow_pace_end_at_most_one_more_chunk_each_per_evaluation():
    rates = [100.0, 150.0]  # held back by the UTD: chunks end by time long before a share is taken
    with_schedule = simulate_fleet(2, 8, rates, chunk_s=1.0, total=20_000, every=2000)
    plain = simulate_fleet(2, 8, rates, chunk_s=1.0, total=20_000, every=None)
    assert len(with_schedule) <= len(plain) + 2 * 10


@pytest.mark.parametrize(
    ("actors", "rate", "every"),
    [(2, 20_000.0, 5000), (16, 5000.0, 2000), (64, 2000.0, 2000)],  # fast actors, short intervals per actor
)
def test_fast_actors_end_few_chunks_below_a_quarter_of_a_plain_one_however_short_the_interval(actors, rate, every):
    total = 200_000
    counts = simulate_fleet(actors, 8, [rate] * actors, chunk_s=1.0, total=total, every=every)
    plain = simulate_fleet(actors, 8, [rate] * actors, chunk_s=1.0, total=total, every=None)
    assert counts[-1] == total
    intervals = total // every
    assert len(counts) <= len(plain) + 2 * actors * intervals
    smallest = min_chunk_steps(8, rate, 1.0)
    assert smallest == max(64 * 8, int(rate / 4))

    def small(counts: list[int]) -> int:  # chunks below the floor (in whole vector steps)
        return sum(after - before < smallest // 8 * 8 for before, after in zip([0, *counts], counts, strict=False))

    # below the floor: the one chunk that completes each milestone, besides the shares of the
    # budget's end that the plain fleet has too
    assert small(counts) <= intervals + small(plain)


def test_the_smallest_chunk_is_a_block_of_vector_steps_or_a_quarter_of_a_plain_chunk_at_the_actors_pace():
    assert min_chunk_steps(8, None, 1.0) == 512  # not measured yet
    assert min_chunk_steps(8, 100.0, 1.0) == 512
    assert min_chunk_steps(8, 20_000.0, 1.0) == 5000
    # the floor is kept though it passes the milestone's even share (1,000 of 2,000 for 2 actors) ...
    assert chunk_allotment(1000, 0, 2, 8, milestone_every=2000, min_chunk=5000) == 1000
    assert chunk_allotment(0, 0, 2, 8, milestone_every=2000, min_chunk=5000) == 2000
    # ... but not past the milestone, nor the budget
    assert chunk_allotment(1900, 0, 2, 8, milestone_every=2000, min_chunk=5000) == 96
    assert chunk_allotment(0, 0, 2, 8, max_env_steps=600, milestone_every=2000, min_chunk=5000) == 304


def test_allotment_without_a_budget_or_milestones_is_unlimited_and_a_spent_budget_is_zero():
    assert chunk_allotment(500, 0, 2, 8) is None
    assert chunk_allotment(1000, 0, 2, 8, max_env_steps=1000) == 0
    assert chunk_allotment(0, 0, 2, 8, max_env_steps=1000) == 504  # an even share, whole vector steps
    # a resumed run's milestones are multiples of the run's count: 1,900 done before, 100 to go
    assert chunk_allotment(0, 0, 1, 4, milestone_every=2000, milestone_offset=1900) == 100
    # a milestone all promised: the next chunk aims at the one after, never 0 (no actor waits)
    assert chunk_allotment(1000, 1000, 2, 8, milestone_every=2000) == 1000
    # near a milestone shares halve, down to a quarter of an actor's share of an interval
    assert chunk_allotment(1000, 0, 2, 8, milestone_every=2000) == 504
    assert chunk_allotment(1400, 0, 2, 8, milestone_every=2000) == 304
    assert chunk_allotment(1600, 0, 2, 8, milestone_every=2000) == 248  # a quarter of 1,000, whole vector steps
    assert chunk_allotment(1900, 0, 2, 8, milestone_every=2000) == 96  # less left: all of it (whole vector steps)
    assert chunk_allotment(1900, 0, 2, 8, max_env_steps=1950, milestone_every=2000) == 24  # the budget binds


def test_a_resume_that_shortens_the_interval_is_due_at_the_new_interval_s_next_multiple_at_the_latest():
    # saved: 12,000 done, the next evaluation at 15,000 (every 5,000); resumed with every 2,000:
    # the fleet's chunks end on multiples of 2,000, so the next evaluation is due at 14,000
    assert RunCounters({"env_steps": 12_000, "next_eval": 15_000}, eval_every_steps=2000).next_eval == 14_000
    # a longer interval: the saved due step comes first and stays
    assert RunCounters({"env_steps": 12_000, "next_eval": 14_000}, eval_every_steps=5000).next_eval == 14_000
    assert RunCounters({"env_steps": 12_000, "next_eval": 14_000}, eval_every_steps=2000).next_eval == 14_000
    assert RunCounters({}, eval_every_steps=2000).next_eval == 2000
    assert RunCounters({"env_steps": 500, "next_eval": 700}, eval_every_steps=0).next_eval == 700  # no schedule
