"""`qfleet bench critic`'s held-out split: whole episodes, the asked share, reproducible by seed."""

import numpy as np
import pytest

from system.bench.critic_ranking import split_episodes
from system.config import ConfigError


def test_the_held_out_rows_are_whole_episodes_of_the_asked_share():
    lengths = np.array([3, 1, 4, 2, 5, 2, 3, 1, 2, 2])
    train, held = split_episodes(lengths, 0.2, seed=0)
    assert sorted([*train, *held]) == list(range(lengths.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    episode_of = np.repeat(np.arange(len(lengths)), lengths)
    held_episodes = set(episode_of[held])
    assert len(held_episodes) == 2 and not held_episodes & set(episode_of[train])
    for episode in held_episodes:  # every step of a held-out episode is held out
        assert set(range(starts[episode], starts[episode] + lengths[episode])) <= set(held)
    again, _ = split_episodes(lengths, 0.2, seed=0)
    other, _ = split_episodes(lengths, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


@pytest.mark.parametrize(("lengths", "fraction", "message"), [([2, 3], 1.0, "must be in"), ([4], 0.5, "at least 2")])
def test_a_split_that_would_leave_nothing_to_train_or_test_on_is_refused(lengths, fraction, message):
    with pytest.raises(ConfigError, match=message):
        split_episodes(np.array(lengths), fraction, seed=0)
