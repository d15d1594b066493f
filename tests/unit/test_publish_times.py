"""PublishTimes: the publish times behind the learner's sample-age metric (`learner/publish_times.py`)."""

import numpy as np
import pytest

from learner.publish_times import PublishTimes


def reference_age(published: dict[int, float], versions, now: float) -> float | None:
    """The metric's definition, item by item: the mean over items of a published version of
    now - its publish time (a forgotten version: the oldest time remembered)."""
    if not published:
        return None
    oldest = min(published.values())
    ages = [now - published.get(int(v), oldest) for v in versions if v > 0]
    return sum(ages) / len(ages) if ages else None


def test_age_matches_the_item_by_item_definition_as_versions_are_forgotten():
    rng = np.random.default_rng(0)
    times, remembered = PublishTimes(memory=8), {}
    for version in range(1, 40):
        when = 1000.0 + 1.5 * version
        times.record(version, when)
        remembered[version] = when
        remembered.pop(version - 8, None)
        assert len(times) == len(remembered)
        versions = rng.integers(-1, version + 1, size=128)  # -1 offline, 0 initial, forgotten, remembered
        expected = reference_age(remembered, versions, now=when + 3.0)
        assert times.age(versions, now=when + 3.0) == pytest.approx(expected, rel=1e-12)


def test_nothing_published_or_no_published_version_sampled_has_no_age():
    times = PublishTimes(memory=4)
    assert times.age(np.array([1, 2]), now=5.0) is None
    times.record(1, 1.0)
    assert times.age(np.array([0, -1, 0]), now=5.0) is None
    assert times.age(np.array([], dtype=np.int64), now=5.0) is None
    assert times.age(np.array([1, 0]), now=5.0) == 4.0


def test_a_version_below_one_or_a_memory_below_one_is_refused():
    with pytest.raises(ValueError, match="memory"):
        PublishTimes(memory=0)
    with pytest.raises(ValueError, match="versions are >= 1"):
        PublishTimes(memory=4).record(0, 1.0)


def test_a_wall_clock_stepped_back_makes_the_new_time_the_oldest():
    times = PublishTimes(memory=4)
    times.record(1, 100.0)
    times.record(2, 50.0)  # the clock stepped back between two publishes
    # version 31 is not remembered: it is aged from the oldest time remembered, 50.0, not 100.0
    assert times.age(np.array([7 * 4 + 3]), now=60.0) == pytest.approx(10.0)
    assert times.age(np.array([1, 2]), now=110.0) == pytest.approx(reference_age({1: 100.0, 2: 50.0}, [1, 2], 110.0))
