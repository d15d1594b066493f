"""`qfleet bench critic`'s held-out split: whole episodes, the asked share, reproducible by seed."""

import re

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


@pytest.mark.parametrize(
    ("critics", "message"),
    [
        ("action_embedding,spatial", r"learner.critic='spatial' needs .*no screen grid"),
        ("action_embedding,pixels", r"learner.critic"),
    ],
)
def test_a_critic_that_cannot_run_is_refused_before_any_critic_trains(tmp_path, capsys, critics, message):
    from learner import SmallEncoder, save_small_encoder
    from system.cli import main

    save_small_encoder(SmallEncoder((105, 80, 3), feature_dim=8), tmp_path / "encoder", {})  # the config's screens
    out = tmp_path / "critics.json"
    # No dataset exists: a refusal that came after the first critic's training would name the dataset instead.
    argv = ["bench", "critic", "--dataset", "miniwob/nowhere-v0", "--datasets-dir", str(tmp_path), "--out", str(out)]
    argv += ["--set", f"env.features.path={tmp_path / 'encoder'}", "--critics", critics]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()
