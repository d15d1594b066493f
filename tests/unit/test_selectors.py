"""Uniform and prioritized selectors alone: probabilities, sampling frequencies, priority updates."""

from __future__ import annotations

import numpy as np
import pytest

from replay.selectors import PrioritizedSelector, UniformSelector, make_selector


def chi_square(counts: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sum((counts - expected) ** 2 / expected))


def test_uniform_draws_occupied_slots_evenly():
    selector = UniformSelector()
    slots, probabilities = selector.sample(50_000, 5, np.random.default_rng(0), stratum=50_000)
    assert slots.min() >= 0 and slots.max() < 5
    np.testing.assert_allclose(probabilities, 0.2)
    assert selector.priority_mass(5) == 5.0
    assert chi_square(np.bincount(slots, minlength=5), np.full(5, 10_000.0)) < 18.5  # 4 dof, p < 0.001


def test_uniform_ignores_priorities():
    selector = UniformSelector()
    selector.on_insert(np.arange(3), np.array([1.0, 100.0, 5.0]))
    selector.set_priorities(np.array([0]), np.array([50.0]))
    _, probabilities = selector.sample(10, 3, np.random.default_rng(0), stratum=10)
    np.testing.assert_allclose(probabilities, 1 / 3)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_prioritized_probabilities_are_priority_to_the_alpha_over_the_total(alpha):
    selector = PrioritizedSelector(capacity=8, alpha=alpha)
    priorities = np.array([1.0, 4.0, 9.0, 16.0])
    selector.on_insert(np.arange(4), priorities)
    weights = priorities**alpha  # alpha=1: 1, 4, 9, 16 (total 30); alpha=0.5: 1, 2, 3, 4 (total 10)
    assert selector.priority_mass(4) == pytest.approx(weights.sum())
    slots, probabilities = selector.sample(40_000, 4, np.random.default_rng(1), stratum=256)
    expected = weights / weights.sum()
    np.testing.assert_allclose(probabilities, expected[slots])
    assert chi_square(np.bincount(slots, minlength=4), 40_000 * expected) < 16.3  # 3 dof, p < 0.001


def test_stratified_draws_take_one_item_per_equal_mass_segment():
    selector = PrioritizedSelector(capacity=4, alpha=1.0)
    selector.on_insert(np.arange(4), np.ones(4))
    for seed in range(20):
        slots, _ = selector.sample(4, 4, np.random.default_rng(seed), stratum=4)
        np.testing.assert_array_equal(slots, [0, 1, 2, 3])


def test_new_items_get_the_largest_priority_seen_so_far():
    selector = PrioritizedSelector(capacity=4, alpha=1.0)
    selector.on_insert(np.array([0]), None)  # before any priority: 1.0
    selector.on_insert(np.array([1]), np.array([6.0]))
    selector.on_insert(np.array([2]), None)
    np.testing.assert_allclose(selector.priorities(np.arange(3)), [1.0, 6.0, 6.0])
    assert selector.priority_mass(3) == 13.0


def test_priority_updates_move_the_probabilities():
    selector = PrioritizedSelector(capacity=4, alpha=1.0)
    selector.on_insert(np.arange(4), np.ones(4))
    selector.set_priorities(np.array([3]), np.array([5.0]))  # weights 1, 1, 1, 5: total 8
    assert selector.priority_mass(4) == 8.0
    slots, probabilities = selector.sample(20_000, 4, np.random.default_rng(2), stratum=20_000)
    np.testing.assert_allclose(probabilities, np.where(slots == 3, 5 / 8, 1 / 8))
    assert chi_square(np.bincount(slots, minlength=4), 20_000 * np.array([1, 1, 1, 5]) / 8) < 16.3
    selector.set_priorities(np.array([3]), np.array([0.0]))  # a zero priority is never drawn
    slots, _ = selector.sample(1_000, 4, np.random.default_rng(3), stratum=1_000)
    assert 3 not in slots


def test_nothing_can_be_drawn_when_every_priority_is_zero():
    selector = PrioritizedSelector(capacity=2, alpha=1.0)
    selector.on_insert(np.arange(2), np.zeros(2))
    with pytest.raises(ZeroDivisionError, match="priority 0"):
        selector.sample(1, 2, np.random.default_rng(0), stratum=1)


def test_state_round_trips_priorities_and_the_running_maximum():
    selector = PrioritizedSelector(capacity=4, alpha=0.6)
    selector.on_insert(np.arange(3), np.array([2.0, 7.0, 3.0]))
    copy = PrioritizedSelector(capacity=4, alpha=0.6)
    copy.restore(selector.state())
    np.testing.assert_allclose(copy.priorities(np.arange(3)), [2.0, 7.0, 3.0])
    assert copy.max_priority == 7.0 and copy.priority_mass(3) == pytest.approx(selector.priority_mass(3))


def test_selectors_are_built_by_name_and_check_alpha():
    assert isinstance(make_selector("uniform", 4, 0.6), UniformSelector)
    assert make_selector("prioritized", 4, 0.3).alpha == 0.3
    with pytest.raises(ValueError, match="unknown selector 'fifo'"):
        make_selector("fifo", 4, 0.6)
    with pytest.raises(ValueError, match="alpha"):
        PrioritizedSelector(4, alpha=1.5)


def test_only_the_uniform_selector_is_known_to_discard_priorities():
    from replay.selectors import uses_priorities

    assert not uses_priorities("uniform")
    # prioritized, and a name this client does not know (an older or newer shard): sent
    assert uses_priorities("prioritized") and uses_priorities("") and uses_priorities("other")
