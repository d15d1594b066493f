"""Features in replay are the frozen encoder's output: a real env actor with `env.features` steps a
screen env, inserts n-step transitions into a real shard (real redis-server), and every obs and
next_obs sampled back is the encoder's features of one of the env's screens plus the embedding of
its instruction, bit for bit; the learner's spec and the actor's agree on the feature width."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from actors import ActorsConfig, EnvActor, EnvConfig, FeaturesConfig, describe_env, transition_spec
from conftest import shard_kwargs
from learner import (
    ArchitectureConfig,
    LearnerConfig,
    ScreenGrid,
    SmallEncoder,
    instruction_embedding,
    save_small_encoder,
)

SCREENS = np.random.default_rng(0).integers(0, 256, (6, 36, 36, 3), dtype=np.uint8)
"""The screens the env shows: screen t % 6 at step t."""
TOKENS = np.array([3, 17, 250, 0, 0], np.int32)


class ScreenCycle(gym.Env):
    """Shows SCREENS in turn, 12 steps an episode, the same instruction in every info."""

    observation_space = gym.spaces.Box(0, 255, SCREENS.shape[1:], np.uint8)
    action_space = gym.spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return SCREENS[0], {"instruction_tokens": TOKENS.copy()}

    def step(self, action):
        self.t += 1
        return SCREENS[self.t % 6], 0.0, self.t >= 12, False, {"instruction_tokens": TOKENS.copy()}


gym.register("qfleet-test/ScreenCycle-v0", entry_point=ScreenCycle)


def test_the_transitions_an_actor_inserts_carry_the_frozen_encoders_features(tmp_path, redis_server, start_server):
    torch.manual_seed(0)
    encoder = SmallEncoder(SCREENS.shape[1:], feature_dim=24).eval()
    save_small_encoder(encoder, tmp_path / "enc", {})
    with torch.no_grad():
        images = encoder(torch.from_numpy(SCREENS)).numpy()
    expected = np.concatenate([images, np.repeat(instruction_embedding(TOKENS[None], 8), 6, axis=0)], axis=1)

    env = EnvConfig(
        id="qfleet-test/ScreenCycle-v0",
        num_envs=2,
        features=FeaturesConfig(encoder="small", path=str(tmp_path / "enc"), instruction_dim=8),
    )
    spec = transition_spec(env)
    assert spec["obs"] == ((32,), "float32") == spec["next_obs"]
    assert describe_env(env).obs_shape == (32,)
    server = start_server(spec, capacity=10_000, **shard_kwargs(redis_server, run="feat"))
    actors = ActorsConfig(n_step=2, insert_batch=16, num_actors=1, metrics_port=None)
    learner = LearnerConfig(architecture=ArchitectureConfig(hidden_size=16))
    actor = EnvActor(0, 1, env, actors, learner, redis_server.url, "feat", replay_credentials=None)
    try:
        stats = actor.run(seconds=30, max_steps=400)
    finally:
        actor.close()
    assert stats.transitions_inserted == server.table.info().size > 0
    from replay import ReplayClient

    with ReplayClient(f"127.0.0.1:{server.port}") as client:
        data = client.sample(200).data
    assert data["obs"].dtype == np.float32
    for column in ("obs", "next_obs"):
        # Each row is one screen's features (batch-of-one vs batch-of-six convolutions may differ
        # in the last bits), and every screen shows up.
        distance = np.abs(data[column][:, None, :] - expected[None]).max(axis=2)
        assert distance.min(axis=1).max() < 1e-5, column
        assert set(distance.argmin(axis=1)) == set(range(6)), column


def test_with_a_screen_grid_replay_also_carries_the_encoders_pooled_feature_map(tmp_path, redis_server, start_server):
    torch.manual_seed(1)
    encoder = SmallEncoder(SCREENS.shape[1:], feature_dim=24, channels=(8, 8, 4)).eval()
    save_small_encoder(encoder, tmp_path / "enc", {})
    with torch.no_grad():
        frames = torch.from_numpy(SCREENS)
        images = encoder(frames).numpy()
        cells = torch.nn.functional.adaptive_avg_pool2d(encoder.feature_map(frames), (2, 3))  # [6, 4, 2, 3]
    grid = cells.permute(0, 2, 3, 1).reshape(6, -1).numpy()  # row-major cells, channels last
    instruction = np.repeat(instruction_embedding(TOKENS[None], 8), 6, axis=0)
    expected = np.concatenate([images, instruction, grid], axis=1)

    features = FeaturesConfig(encoder="small", path=str(tmp_path / "enc"), instruction_dim=8, grid_rows=2, grid_cols=3)
    env = EnvConfig(id="qfleet-test/ScreenCycle-v0", num_envs=2, features=features)
    described = describe_env(env)
    assert described.obs_shape == (32 + 2 * 3 * 4,)
    assert described.action_space.screen == ScreenGrid(offset=32, rows=2, cols=3, channels=4)
    server = start_server(described.spec, capacity=10_000, **shard_kwargs(redis_server, run="grid"))
    actors = ActorsConfig(n_step=1, insert_batch=16, num_actors=1, metrics_port=None)
    learner = LearnerConfig(architecture=ArchitectureConfig(hidden_size=16))
    actor = EnvActor(0, 1, env, actors, learner, redis_server.url, "grid", replay_credentials=None)
    try:
        stats = actor.run(seconds=30, max_steps=200)
    finally:
        actor.close()
    assert stats.transitions_inserted == server.table.info().size > 0
    from replay import ReplayClient

    with ReplayClient(f"127.0.0.1:{server.port}") as client:
        data = client.sample(100).data
    for column in ("obs", "next_obs"):
        distance = np.abs(data[column][:, None, :] - expected[None]).max(axis=2)
        assert distance.min(axis=1).max() < 1e-5, column
        assert set(distance.argmin(axis=1)) == set(range(6)), column


def test_a_features_dataset_records_its_screen_grid_and_refuses_a_transposed_one(tmp_path, capsys):
    from system.cli import main
    from system.datasets import DatasetError, DatasetSource, load_episodes

    save_small_encoder(SmallEncoder(SCREENS.shape[1:], feature_dim=24, channels=(8, 8, 4)).eval(), tmp_path / "enc", {})
    config = tmp_path / "screens.yaml"
    features = f"{{encoder: small, path: {tmp_path / 'enc'}, instruction_dim: 8, grid_rows: 2, grid_cols: 3}}"
    config.write_text(f"env:\n  id: qfleet-test/ScreenCycle-v0\n  num_envs: 1\n  features: {features}\n")
    args = ["record", "screens/grid-v0", "--config", str(config), "--episodes", "2", "--datasets-dir", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    metadata = json.loads((tmp_path / "screens/grid-v0/data/metadata.json").read_text())
    assert metadata["qfleet"]["screen_grid"] == {"rows": 2, "cols": 3, "channels": 4}

    source = DatasetSource("screens/grid-v0", str(tmp_path))

    def spaces(rows: int, cols: int):
        grid = FeaturesConfig("small", str(tmp_path / "enc"), instruction_dim=8, grid_rows=rows, grid_cols=cols)
        described = describe_env(EnvConfig(id="qfleet-test/ScreenCycle-v0", features=grid))
        return described.spec, described.action_space

    assert load_episodes(source, *spaces(2, 3)).lengths.tolist() == [12, 12]
    with pytest.raises(DatasetError, match=r"screen_grid: recorded with the screen grid 2 x 3 cells .* env's is 3 x 2"):
        load_episodes(source, *spaces(3, 2))  # 3 x 2 cells have the same width as 2 x 3
    with pytest.raises(DatasetError, match=r"observation_space: .*env.features .*grid_rows x grid_cols"):
        load_episodes(source, *spaces(0, 0))
