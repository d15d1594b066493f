"""Offline datasets: Minari files written and read back (and made by Minari itself), n-step
transitions checked by brute force, every validation error naming its field, the writer's refusals
and commit point, the CLI's errors in process, and a dataset loaded into real shards on port 0."""

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
    EpisodeRecorder,
    ListedDataset,
    ShardFillError,
    data_path,
    dataset_info,
    dataset_listing,
    fill_shards,
    list_datasets,
    load_episodes,
    load_recorded_episodes,
    load_transitions,
    nstep_transitions,
    offline_shard_config,
)

OBS_SPACE = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
ACTION_SPACE = gym.spaces.Discrete(2)
SPEC = spec_for_spaces("test", OBS_SPACE, ACTION_SPACE)
ACTIONS = ActionSpace(num_actions=2)


ENDINGS = ("terminated", "truncated", "both", "unmarked")
"""How an episode's last step is flagged: `both` is gymnasium's TimeLimit on the step that
terminates (read as terminated); `unmarked` is a recording cut mid-episode (read as truncated)."""


def random_episodes(rng: np.random.Generator, count: int, max_len: int = 12) -> list[Episode]:
    """Episodes of random lengths, ending each way of ENDINGS in turn."""
    episodes = []
    for e in range(count):
        steps = int(rng.integers(1, max_len))
        ending = ENDINGS[e % len(ENDINGS)]
        terminations, truncations = np.zeros(steps, bool), np.zeros(steps, bool)
        terminations[-1] = ending in ("terminated", "both")
        truncations[-1] = ending in ("truncated", "both")
        episodes.append(
            Episode(
                observations=rng.standard_normal((steps + 1, 3)).astype(np.float32),
                actions=rng.integers(0, 2, steps),
                rewards=rng.standard_normal(steps),
                terminations=terminations,
                truncations=truncations,
                metadata={"policy_version": 10 + e, "epsilon": 0.1, "actor_id": e % 3},
            )
        )
    return episodes


def as_read(episode: Episode) -> tuple[np.ndarray, np.ndarray]:
    """The (terminations, truncations) a reader gets for `episode`: both flags -> terminated, no flag
    on the last step -> truncated."""
    terminations = episode.terminations.copy()
    truncations = episode.truncations & ~terminations
    truncations[-1] |= not terminations[-1]
    return terminations, truncations


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
    assert len(loaded.lengths) == 40 and {"both", "unmarked"} <= set(ENDINGS)
    transitions = nstep_transitions(loaded, n_step, 0.9)
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
        terminations, truncations = as_read(ep)
        np.testing.assert_array_equal(read.terminations[start : start + len(ep)], terminations)
        np.testing.assert_array_equal(read.truncations[start : start + len(ep)], truncations)
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


def _episode_metadata(data: pathlib.Path, episode: int, **changes) -> None:
    """Changes episode metadata keys (None: removes the key)."""
    path = data / str(episode) / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    for key, value in changes.items():
        if value is None:
            del metadata[key]
    path.write_text(json.dumps(metadata))


def _rewrite_episode(data: pathlib.Path, column: str, change, episode: int = 2) -> None:
    """A well-formed file with other content, as another tool would write it (so without qfleet's
    sha256, which would otherwise refuse it before its columns are read)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = data / str(episode) / "part-0.arrow"
    table = ipc.open_file(pa.py_buffer(path.read_bytes())).read_all()  # not mapped: the file is rewritten below
    table = table.set_column(table.column_names.index(column), column, change(table[column]))
    with ipc.new_file(path, table.schema) as sink:
        sink.write_table(table)
    _episode_metadata(data, episode, sha256=None)


def _flip_a_bit(data: pathlib.Path) -> None:
    """One observation bit flipped: a file Arrow still reads, with a wrong value in it."""
    path = data / "2" / "part-0.arrow"
    content = bytearray(path.read_bytes())
    content[len(content) // 3] ^= 0x10
    path.write_bytes(bytes(content))


def _as_tensor_extension(column):
    import pyarrow as pa

    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), [3]), column.combine_chunks())


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
    table = ipc.open_file(pa.py_buffer(path.read_bytes())).read_all().slice(0, 1)
    with ipc.new_file(path, table.schema) as sink:
        sink.write_table(table)
    _episode_metadata(data, 1, sha256=None, total_steps=None)


@pytest.mark.parametrize(
    "damage, field, message",
    [
        (lambda d: _truncate_file(d), "episode 3", "corrupt"),
        (lambda d: _flip_a_bit(d), "episode 2", "sha256 differs"),
        (
            lambda d: _rewrite_episode(d, "observations", _as_tensor_extension),
            "episode 2: observations",
            "extension types are refused",
        ),
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
        (lambda d: _break_metadata(d, total_episodes="one"), "total_episodes", "expected a count"),
        (lambda d: _break_metadata(d, qfleet="CartPole-v1"), "qfleet", "expected an object"),
        (
            lambda d: _break_metadata(
                d, action_space=json.dumps({"type": "Discrete", "dtype": "int64", "start": 1, "n": 2})
            ),
            "action_space",
            "does not match",
        ),
        (lambda d: _episode_metadata(d, 2, policy_version="v7"), "episode 2: policy_version", "expected an integer"),
        (lambda d: _episode_metadata(d, 2, actor_id=2**40), "episode 2: actor_id", "32-bit"),
        (lambda d: _episode_metadata(d, 2, epsilon=1.5), "episode 2: epsilon", "in [0.0, 1.0]"),
        (lambda d: _episode_metadata(d, 2, follow_p=-0.1), "episode 2: follow_p", "in [0.0, 1.0]"),
        (lambda d: _episode_metadata(d, 2, success="yes"), "episode 2: success", "expected true or false"),
        (lambda d: _episode_metadata(d, 2, total_steps=999), "episode 2: total_steps", "the file holds"),
        (lambda d: (d / "2" / "metadata.json").write_text("[1]"), "episode 2: metadata.json", "expected an object"),
    ],
    ids=[
        "truncated-file",
        "bit-flip",
        "extension-type",
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
        "count-type",
        "qfleet-type",
        "discrete-start",
        "policy-version",
        "actor-id",
        "epsilon",
        "follow-p",
        "success",
        "episode-steps",
        "episode-json",
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
        np.testing.assert_array_equal(theirs.terminations, ep.terminations)
        np.testing.assert_array_equal(theirs.truncations, ep.truncations & ~ep.terminations)


def test_a_dataset_id_that_is_a_path_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="dataset id"):
        data_path("../outside-v0", tmp_path)


def test_a_time_limit_on_the_terminal_step_is_recorded_and_loaded_as_a_termination(tmp_path):
    # CartPole pushed left falls after k steps; a TimeLimit of k flags truncated on that same step.
    probe = gym.make("CartPole-v1")
    probe.reset(seed=0)
    k = 1
    while not probe.step(0)[2]:
        k += 1
    env = gym.make("CartPole-v1", max_episode_steps=k)
    obs, _ = env.reset(seed=0)
    writer = DatasetWriter(tmp_path / "cp/both-v0" / "data", "cp/both-v0", env.observation_space, env.action_space)
    recorder = EpisodeRecorder(writer, obs[None], actor_id=0, epsilon=0.0)
    finished = terminated = truncated = 0
    while not finished:
        obs, reward, terminated, truncated, _ = env.step(0)
        flags = np.array([terminated]), np.array([truncated])
        finished = recorder.add(np.array([0]), np.array([reward]), obs[None], obs[None], *flags, np.array([False]), 0)
    writer.close()
    assert terminated and truncated  # gymnasium set both
    spec = spec_for_spaces("CartPole-v1", env.observation_space, env.action_space)
    source = DatasetSource("cp/both-v0", datasets_dir=str(tmp_path))
    read = load_episodes(source, spec, ACTIONS)
    assert read.terminations[-1] and not read.truncations.any()
    loaded = load_transitions(source, spec, ACTIONS, n_step=3, gamma=0.99)
    assert loaded.transitions["discount"][-1] == 0.0  # no bootstrap from a terminal state


def test_an_arrow_dataset_made_by_minari_loads_step_for_step(tmp_path):
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    env = gym.make("CartPole-v1")
    data = tmp_path / "cartpole/minari-v0" / "data"
    data.mkdir(parents=True)
    storage = MinariStorage.new(
        data,
        observation_space=env.observation_space,
        action_space=env.action_space,
        env_spec=env.spec,
        data_format="arrow",
    )
    storage.update_metadata({"dataset_id": "cartpole/minari-v0"})
    buffers, rng = [], np.random.default_rng(0)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        columns = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        done = False
        while not done:
            action = int(rng.integers(2))
            obs, reward, terminated, truncated, _ = env.step(action)
            for name, value in zip(columns, (obs, action, reward, terminated, truncated), strict=True):
                columns[name].append(value)
            done = terminated or truncated
        buffers.append(EpisodeBuffer(id=seed, seed=seed, **columns))
    storage.update_episodes(buffers)

    spec = spec_for_spaces("CartPole-v1", env.observation_space, env.action_space)
    source = DatasetSource("cartpole/minari-v0", datasets_dir=str(tmp_path))
    read = load_episodes(source, spec, ACTIONS)
    assert read.lengths.tolist() == [len(b.rewards) for b in buffers]
    for e, buffer in enumerate(buffers):
        start = read.starts[e]
        np.testing.assert_array_equal(read.actions[start : start + len(buffer.rewards)], buffer.actions)
        np.testing.assert_array_equal(read.observations[start + e], buffer.observations[0])
    assert load_transitions(source, spec, ACTIONS, n_step=1, gamma=0.9).size == sum(read.lengths)
    assert dataset_listing(tmp_path)[0] == ListedDataset(
        "cartpole/minari-v0", 3, int(sum(read.lengths)), "CartPole-v1", None
    )


def test_an_explicit_datasets_dir_wins_over_a_folder_of_the_same_name_in_the_working_directory(tmp_path, monkeypatch):
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    write(store, "cp/med-v0", random_episodes(np.random.default_rng(4), 3))
    write(cwd, "cp/med-v0", random_episodes(np.random.default_rng(5), 5))
    monkeypatch.chdir(cwd)
    assert dataset_info("cp/med-v0", store, returns=False).episodes == 3
    assert dataset_info("./cp/med-v0", store, returns=False).episodes == 5  # a path when it says so
    assert dataset_info(str(cwd / "cp/med-v0" / "data"), returns=False).episodes == 5


def _episode(steps: int = 4, **changes) -> Episode:
    ends = np.zeros(steps, bool)
    ends[-1] = True
    fields = {
        "observations": np.zeros((steps + 1, 3), np.float32),
        "actions": np.zeros(steps, np.int64),
        "rewards": np.ones(steps),
        "terminations": ends,
        "truncations": np.zeros(steps, bool),
        **changes,
    }
    return Episode(**fields)


@pytest.mark.parametrize(
    "episode, message",
    [
        (_episode(actions=np.zeros(2, np.int64)), "actions: shape (2,), expected (4,)"),
        (_episode(terminations=np.array([False, True])), "terminations: shape (2,), expected (4,)"),
        (_episode(rewards=np.ones((4, 2))), "rewards: shape (4, 2), expected (4,)"),
        (_episode(observations=np.zeros((5, 2), np.float32)), "observations: shape (5, 2), expected (5, 3)"),
        (_episode(truncations=np.array([False, True, False, False])), "ends only at its last step"),
        (_episode(metadata={"total_steps": 99}), "['total_steps']: set by the writer"),
        (_episode(metadata={"sha256": "0" * 64}), "['sha256']: set by the writer"),
        (_episode(metadata={"epsilon": object()}), "not JSON"),
    ],
    ids=["short-actions", "short-flags", "wide-rewards", "obs-shape", "early-end", "total-steps", "sha256", "not-json"],
)
def test_the_writer_refuses_an_episode_it_would_have_to_pad_or_mislabel(tmp_path, episode, message):
    writer = DatasetWriter(tmp_path / "w/bad-v0" / "data", "w/bad-v0", OBS_SPACE, ACTION_SPACE)
    with pytest.raises(ValueError) as raised:
        writer.add(episode)
    assert message in str(raised.value)
    writer.close()
    assert not (tmp_path / "w").exists()  # closed with no episode: nothing left behind


def test_dataset_metadata_from_the_caller_cannot_change_the_counts(tmp_path):
    extra = {"total_steps": 1, "dataset_id": "other/id-v0", "algorithm_name": "mine"}
    writer = DatasetWriter(tmp_path / "m/x-v0" / "data", "m/x-v0", OBS_SPACE, ACTION_SPACE, None, extra)
    writer.add(_episode(4))
    writer.close()
    metadata = json.loads((tmp_path / "m/x-v0" / "data" / "metadata.json").read_text())
    assert (metadata["total_steps"], metadata["dataset_id"], metadata["algorithm_name"]) == (4, "m/x-v0", "mine")


def test_a_dataset_is_committed_only_once_it_holds_an_episode(tmp_path):
    data = tmp_path / "c/empty-v0" / "data"
    writer = DatasetWriter(data, "c/empty-v0", OBS_SPACE, ACTION_SPACE)
    writer.flush()
    assert not (data / "metadata.json").exists() and list_datasets(tmp_path) == []
    (data / "0").mkdir()  # an episode folder a killed writer left uncommitted
    writer2 = DatasetWriter(data, "c/empty-v0", OBS_SPACE, ACTION_SPACE)  # the id is free: nothing was committed
    writer2.add(_episode(3))
    writer2.close()
    assert [dataset for dataset, _ in list_datasets(tmp_path)] == ["c/empty-v0"]
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(data, "c/empty-v0", OBS_SPACE, ACTION_SPACE)


def test_many_threads_share_one_writer_and_every_episode_arrives_whole(tmp_path):
    import threading

    episodes = random_episodes(np.random.default_rng(6), 64)
    writer = DatasetWriter(tmp_path / "t/threads-v0" / "data", "t/threads-v0", OBS_SPACE, ACTION_SPACE)
    threads = [threading.Thread(target=lambda part=episodes[i::8]: [writer.add(ep) for ep in part]) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    read = load_episodes(DatasetSource("t/threads-v0", datasets_dir=str(tmp_path)), SPEC, ACTIONS)
    by_first_obs = {ep.observations[0].tobytes(): ep for ep in episodes}
    assert len(read.lengths) == 64
    for e, length in enumerate(read.lengths):
        start = read.starts[e]
        original = by_first_obs[read.observations[start + e].tobytes()]
        np.testing.assert_array_equal(read.observations[start + e : start + e + length + 1], original.observations)
        np.testing.assert_array_equal(read.rewards[start : start + length], original.rewards)
        assert read.metadata[e]["policy_version"] == original.metadata["policy_version"]


def test_a_fill_failing_after_inserts_began_says_the_shards_must_be_recreated(tmp_path, start_server, connect):
    write(tmp_path, "test/fail-v0", random_episodes(np.random.default_rng(7), 10))
    source = DatasetSource("test/fail-v0", datasets_dir=str(tmp_path), num_shards=2)
    loaded = load_transitions(source, SPEC, ACTIONS, n_step=1, gamma=0.99)
    other_spec = spec_for_spaces("other", gym.spaces.Box(-1.0, 1.0, (5,), np.float32), ACTION_SPACE)
    good = connect(f"127.0.0.1:{start_server(SPEC, capacity=loaded.size).port}")
    wrong = connect(f"127.0.0.1:{start_server(other_spec, capacity=loaded.size).port}")  # refuses the batches
    with pytest.raises(ShardFillError) as raised:
        fill_shards(loaded, [good, wrong], batch_items=4)
    error = raised.value
    assert error.shard == wrong.address and error.total == loaded.size
    assert 0 < error.sent <= loaded.size and "fill fresh ones" in str(error)
    assert 0 < good.info().size < loaded.size  # the first shard holds part of the dataset, as the error says


def test_dataset_list_names_a_broken_dataset_and_lists_the_others(tmp_path, capsys):
    from system.cli import main

    write(tmp_path, "a/good-v0", random_episodes(np.random.default_rng(8), 2))
    _break_metadata(write(tmp_path, "b/broken-v0", random_episodes(np.random.default_rng(9), 2)), total_steps="x")
    _episode_metadata(write(tmp_path, "c/badepisode-v0", random_episodes(np.random.default_rng(9), 2)), 0, epsilon=3)
    assert main(["dataset", "list", "--datasets-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"3 dataset(s) in {tmp_path}"
    assert "a/good-v0" in lines[1] and "2 episodes" in lines[1]
    assert "b/broken-v0" in lines[2] and "unreadable: total_steps: 'x', expected a count" in lines[2]
    assert "c/badepisode-v0" in lines[3] and "2 episodes" in lines[3]  # list reads no episode metadata
    assert main(["dataset", "info", "c/badepisode-v0", "--datasets-dir", str(tmp_path)]) == 2
    assert "episode 0: epsilon: 3" in capsys.readouterr().err


@pytest.fixture
def cartpole_config(tmp_path) -> str:
    path = tmp_path / "cartpole.yaml"
    path.write_text("env:\n  id: CartPole-v1\n  num_envs: 2\n")
    return str(path)


def test_record_refuses_an_id_already_taken_before_playing_anything(tmp_path, cartpole_config, capsys):
    from system.cli import main

    write(tmp_path, "cp/taken-v0", random_episodes(np.random.default_rng(10), 2))
    before = (tmp_path / "cp/taken-v0" / "data" / "metadata.json").read_text()
    args = ["record", "cp/taken-v0", "--config", cartpole_config, "--episodes", "2", "--datasets-dir", str(tmp_path)]
    assert main(args) == 2
    assert "dataset 'cp/taken-v0': dataset id: a dataset already exists" in capsys.readouterr().err
    assert (tmp_path / "cp/taken-v0" / "data" / "metadata.json").read_text() == before


def test_record_refuses_a_factored_policy_on_an_env_without_kinds_of_action(tmp_path, capsys):
    from system.cli import main

    config = tmp_path / "factored.yaml"
    config.write_text("env:\n  id: CartPole-v1\n  num_envs: 2\nlearner:\n  loss: iql\n  policy_head: factored\n")
    args = ["record", "cp/factored-v0", "--config", str(config), "--episodes", "2", "--datasets-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "learner.policy_head='factored'" in err and "'CartPole-v1'" in err and "Traceback" not in err
    assert not (tmp_path / "cp/factored-v0").exists()


def test_record_errors_name_the_flag_or_the_folder_without_a_traceback(tmp_path, cartpole_config, capsys):
    from system.cli import main

    base = ["record", "cp/new-v0", "--config", cartpole_config, "--datasets-dir", str(tmp_path)]
    assert main([*base, "--episodes", "2", "--epsilon", "1.5"]) == 2
    assert "--epsilon=1.5: must be in [0, 1]" in capsys.readouterr().err
    assert main([*base, "--episodes", "two"]) == 2
    assert "--episodes: expected an integer" in capsys.readouterr().err
    assert main(base) == 2
    assert "--episodes=None: give --episodes or --steps" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["record", "cp/new-v0", "--config", cartpole_config, "--episodes", "2", "--datasets-dir", str(blocker)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "dataset 'cp/new-v0': --datasets-dir: cannot make" in err and "Traceback" not in err


def test_a_file_flagging_both_on_its_last_step_is_read_as_terminated(tmp_path):
    # Minari's own collector stores gymnasium's flags as they come: both on a TimeLimit's terminal step.
    episodes = random_episodes(np.random.default_rng(11), 4)
    data = write(tmp_path, "test/both-v0", episodes)
    assert episodes[0].terminations[-1] and not episodes[0].truncations[-1]

    def truncated_at_last_step(column):
        import pyarrow as pa

        values = column.to_numpy(zero_copy_only=False).copy()
        values[len(episodes[0]) - 1] = True
        return pa.array(values)

    _rewrite_episode(data, "truncations", truncated_at_last_step, episode=0)
    source = DatasetSource("test/both-v0", datasets_dir=str(tmp_path))
    read = load_episodes(source, SPEC, ACTIONS)
    end = len(episodes[0]) - 1
    assert read.terminations[end] and not read.truncations[end]
    assert load_transitions(source, SPEC, ACTIONS, n_step=2, gamma=0.9).transitions["discount"][end] == 0.0


@pytest.mark.parametrize("loss", ["hl_gauss", "c51"])
def test_record_with_a_distributional_config_plays_its_untrained_network_without_a_probe(tmp_path, loss, capsys):
    # The default bounds are "auto": an acting network needs numbers, but not the env's.
    from system.cli import main

    config = tmp_path / "dist.yaml"
    config.write_text(f"env:\n  id: CartPole-v1\n  num_envs: 2\nlearner:\n  loss: {loss}\n")
    args = ["record", f"cp/{loss}-v0", "--config", str(config), "--episodes", "2", "--datasets-dir", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / f"cp/{loss}-v0" / "data" / "metadata.json").exists()


def test_record_by_steps_with_an_epsilon_spread_stamps_each_episodes_own_epsilon(tmp_path, cartpole_config, capsys):
    from system.cli import main

    args = ["record", "cp/spread-v0", "--config", cartpole_config, "--datasets-dir", str(tmp_path)]
    assert main([*args, "--steps", "300", "--epsilon", "0.2", "--epsilon-max", "0.8"]) == 0, capsys.readouterr().err
    read = load_recorded_episodes("cp/spread-v0", str(tmp_path))
    assert int(read.lengths.sum()) >= 300  # whole episodes, stopped once they hold the steps asked
    epsilons = [m["epsilon"] for m in read.metadata]
    assert all(0.2 <= e <= 0.8 for e in epsilons) and len(set(epsilons)) == len(epsilons)
    assert read.dataset_metadata["qfleet"]["epsilon_max"] == 0.8
