"""Offline datasets: Minari files written and read back, n-step transitions checked by brute force,
every validation error naming its field, and a dataset loaded into real shards on port 0."""

from __future__ import annotations

import json
import pathlib

import gymnasium as gym
import numpy as np
import pytest

from actors import spec_for_spaces
from learner import ActionSpace
from replay import ReplayConfig
from system.datasets import (
    DatasetError,
    DatasetSource,
    DatasetWriter,
    Episode,
    data_path,
    fill_shards,
    load_episodes,
    load_transitions,
    nstep_transitions,
    offline_shard_config,
)

OBS_SPACE = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
ACTION_SPACE = gym.spaces.Discrete(2)
SPEC = spec_for_spaces("test", OBS_SPACE, ACTION_SPACE)
ACTIONS = ActionSpace(num_actions=2)


def random_episodes(rng: np.random.Generator, count: int, max_len: int = 12) -> list[Episode]:
    """Episodes of random lengths; each ends terminated or truncated (alternating)."""
    episodes = []
    for e in range(count):
        steps = int(rng.integers(1, max_len))
        ends = np.zeros(steps, bool)
        ends[-1] = True
        episodes.append(
            Episode(
                observations=rng.standard_normal((steps + 1, 3)).astype(np.float32),
                actions=rng.integers(0, 2, steps),
                rewards=rng.standard_normal(steps),
                terminations=ends if e % 2 == 0 else np.zeros(steps, bool),
                truncations=np.zeros(steps, bool) if e % 2 == 0 else ends,
                metadata={"policy_version": 10 + e, "epsilon": 0.1, "actor_id": e % 3},
            )
        )
    return episodes


def write(root: pathlib.Path, dataset_id: str, episodes: list[Episode]) -> pathlib.Path:
    writer = DatasetWriter(root / dataset_id / "data", dataset_id, OBS_SPACE, ACTION_SPACE, gym.spec("CartPole-v1"))
    for episode in episodes:
        writer.add(episode)
    writer.close()
    return root / dataset_id / "data"


def brute_force(episodes: list[Episode], n: int, gamma: float) -> list[tuple]:
    """Each step's n-step transition, computed the slow obvious way."""
    out = []
    for e, ep in enumerate(episodes):
        steps = len(ep)
        for t in range(steps):
            k = min(n, steps - t)
            reward = sum(gamma**i * ep.rewards[t + i] for i in range(k))
            terminal = ep.terminations[t + k - 1]
            discount = 0.0 if terminal else gamma**k
            out.append((e, t, float(reward), discount, tuple(ep.observations[t + k].round(5))))
    return out


@pytest.mark.parametrize("n_step", [1, 3, 5])
def test_nstep_windows_from_a_dataset_match_a_brute_force_computation(tmp_path, n_step):
    rng = np.random.default_rng(n_step)
    episodes = random_episodes(rng, 40)
    write(tmp_path, "test/nstep-v0", episodes)
    loaded = load_episodes(DatasetSource("test/nstep-v0", datasets_dir=str(tmp_path)), SPEC, ACTIONS)
    transitions = nstep_transitions(loaded, n_step, 0.9, lane_steps=16)  # several lanes
    # Identify each transition's (episode, step) by its first observation (all distinct).
    where = {tuple(ep.observations[t].round(5)): (e, t) for e, ep in enumerate(episodes) for t in range(len(ep))}
    got = {
        where[tuple(obs.round(5))]: (float(r), float(d), tuple(nxt.round(5)))
        for obs, r, d, nxt in zip(
            transitions["obs"], transitions["reward"], transitions["discount"], transitions["next_obs"], strict=True
        )
    }
    expected = brute_force(episodes, n_step, 0.9)
    assert len(transitions["obs"]) == len(got) == len(expected)  # one per step, none twice
    for e, t, reward, discount, next_obs in expected:
        assert got[(e, t)] == (pytest.approx(reward, abs=1e-4), pytest.approx(discount, abs=1e-5), next_obs), (e, t)
    versions = {
        where[tuple(o.round(5))][0]: v for o, v in zip(transitions["obs"], transitions["policy_version"], strict=True)
    }
    assert all(version == 10 + e for e, version in versions.items())


def test_record_then_load_keeps_every_transition_and_episode_boundary(tmp_path, start_server, connect):
    rng = np.random.default_rng(0)
    episodes = random_episodes(rng, 25)
    write(tmp_path, "test/round-v0", episodes)
    source = DatasetSource("test/round-v0", datasets_dir=str(tmp_path), num_shards=2)
    read = load_episodes(source, SPEC, ACTIONS)
    assert read.lengths.tolist() == [len(ep) for ep in episodes]
    for e, ep in enumerate(episodes):
        start = read.starts[e]
        np.testing.assert_array_equal(read.actions[start : start + len(ep)], ep.actions)
        np.testing.assert_array_equal(read.terminations[start : start + len(ep)], ep.terminations)
        np.testing.assert_array_equal(read.truncations[start : start + len(ep)], ep.truncations)
        np.testing.assert_array_equal(read.observations[start + e : start + e + len(ep) + 1], ep.observations)
        assert read.metadata[e]["policy_version"] == 10 + e

    loaded = load_transitions(source, SPEC, ACTIONS, n_step=1, gamma=0.99)
    assert loaded.size == sum(len(ep) for ep in episodes)
    configs = [offline_shard_config(ReplayConfig(), source, loaded.size, i, first_shard_id=100) for i in range(2)]
    servers = [start_server(SPEC, config=config) for config in configs]
    clients = [connect(f"127.0.0.1:{server.port}") for server in servers]
    counts = fill_shards(loaded, clients)
    infos = [client.info() for client in clients]
    assert [info.size for info in infos] == counts and sum(counts) == loaded.size  # nothing evicted
    assert [info.shard_id for info in infos] == [100, 101]
    # Every sampled item is one of the dataset's transitions, one-step, boundaries respected.
    steps = {tuple(ep.observations[t].round(5)): (ep, t) for ep in episodes for t in range(len(ep))}
    sample = clients[0].sample(64)
    for obs, reward, discount, nxt in zip(
        sample.data["obs"], sample.data["reward"], sample.data["discount"], sample.data["next_obs"], strict=True
    ):
        ep, t = steps[tuple(obs.round(5))]
        assert reward == pytest.approx(ep.rewards[t], rel=1e-5)
        assert discount == pytest.approx(0.0 if ep.terminations[t] else 0.99)
        np.testing.assert_array_equal(nxt, ep.observations[t + 1])


def test_filling_refuses_a_shard_too_small_before_inserting_anything(tmp_path, start_server, connect):
    write(tmp_path, "test/small-v0", random_episodes(np.random.default_rng(1), 10))
    source = DatasetSource("test/small-v0", datasets_dir=str(tmp_path))
    loaded = load_transitions(source, SPEC, ACTIONS, n_step=1, gamma=0.99)
    client = connect(f"127.0.0.1:{start_server(SPEC, capacity=loaded.size - 1).port}")
    with pytest.raises(DatasetError, match="would evict") as raised:
        fill_shards(loaded, [client])
    assert raised.value.field == "shards" and client.info().size == 0


def _break_metadata(data: pathlib.Path, **changes) -> None:
    metadata = json.loads((data / "metadata.json").read_text())
    metadata.update(changes)
    for key, value in changes.items():
        if value is None:
            del metadata[key]
    (data / "metadata.json").write_text(json.dumps(metadata))


def _truncate_file(data: pathlib.Path) -> None:
    path = data / "3" / "part-0.arrow"
    path.write_bytes(path.read_bytes()[:200])


def _rewrite_episode(data: pathlib.Path, column: str, change) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = data / "2" / "part-0.arrow"
    with pa.memory_map(str(path)) as source:
        table = ipc.open_file(source).read_all()
    table = table.set_column(table.column_names.index(column), column, change(table[column]))
    with ipc.new_file(path, table.schema) as sink:
        sink.write_table(table)


def _nan_reward(column):
    import pyarrow as pa

    values = column.to_numpy().copy()
    values[0] = np.nan
    return pa.array(values)


def _obs_as_float64(column):
    import pyarrow as pa

    flat = column.combine_chunks().flatten().to_numpy().astype(np.float64)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), 3)


def _early_end(column):
    import pyarrow as pa

    values = column.to_numpy(zero_copy_only=False).copy()
    values[0] = True
    return pa.array(values)


def _empty_episode(data: pathlib.Path) -> None:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = data / "1" / "part-0.arrow"
    with pa.memory_map(str(path)) as source:
        table = ipc.open_file(source).read_all().slice(0, 1)
    with ipc.new_file(path, table.schema) as sink:
        sink.write_table(table)


@pytest.mark.parametrize(
    "damage, field, message",
    [
        (lambda d: _truncate_file(d), "episode 3", "truncated or corrupt"),
        (lambda d: (d / "4" / "part-0.arrow").unlink(), "episode 4", "missing"),
        (lambda d: _rewrite_episode(d, "rewards", _nan_reward), "episode 2: rewards", "NaN"),
        (
            lambda d: _rewrite_episode(d, "observations", _obs_as_float64),
            "episode 2: observations",
            "dtype float64, expected float32",
        ),
        (lambda d: _rewrite_episode(d, "terminations", _early_end), "episode 2: terminations", "before its last step"),
        (lambda d: _empty_episode(d), "episode 1", "empty episode"),
        (lambda d: _break_metadata(d, observation_space=None), "observation_space", "missing"),
        (
            lambda d: _break_metadata(
                d,
                observation_space=json.dumps(
                    {"type": "Box", "dtype": "float32", "shape": [5], "low": [0] * 5, "high": [1] * 5}
                ),
            ),
            "observation_space",
            "does not match",
        ),
        (
            lambda d: _break_metadata(
                d, action_space=json.dumps({"type": "Discrete", "dtype": "int64", "start": 0, "n": 3})
            ),
            "action_space",
            "does not match",
        ),
        (lambda d: _break_metadata(d, data_format="hdf5"), "data_format", "arrow"),
        (lambda d: _break_metadata(d, total_steps=1), "total_steps", "the episodes hold"),
        (lambda d: (d / "metadata.json").write_text("{not json"), "metadata.json", "not readable JSON"),
    ],
    ids=[
        "truncated-file",
        "missing-file",
        "nan",
        "dtype",
        "early-end",
        "empty",
        "no-space",
        "obs-space",
        "action-space",
        "format",
        "count",
        "bad-json",
    ],
)
def test_a_bad_dataset_is_refused_naming_the_dataset_and_field(tmp_path, damage, field, message):
    data = write(tmp_path, "test/bad-v0", random_episodes(np.random.default_rng(2), 6))
    damage(data)
    with pytest.raises(DatasetError) as raised:
        load_transitions(DatasetSource("test/bad-v0", datasets_dir=str(tmp_path)), SPEC, ACTIONS, n_step=3, gamma=0.9)
    assert raised.value.dataset == "test/bad-v0"
    assert raised.value.field == field
    assert message in str(raised.value)


def test_minari_itself_reads_what_qfleet_records(tmp_path):
    from minari import MinariDataset

    episodes = random_episodes(np.random.default_rng(3), 5)
    data = write(tmp_path, "test/interop-v0", episodes)
    dataset = MinariDataset(data)
    assert dataset.total_episodes == 5 and dataset.total_steps == sum(len(ep) for ep in episodes)
    for ep, theirs in zip(episodes, dataset.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(theirs.observations, ep.observations)
        np.testing.assert_array_equal(theirs.actions, ep.actions)
        np.testing.assert_array_equal(theirs.truncations, ep.truncations)


def test_a_dataset_id_that_is_a_path_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="dataset id"):
        data_path("../outside-v0", tmp_path)
