"""The Digi-Q configs load and validate with Digi-Q's learner (IQL, Q(s, a) with an action embedding,
the factored policy, Best-of-N, V by plain regression), an encoder's features and an offline
dataset; and a UI env gives the learner its action layout."""

import dataclasses
import os

import pytest

from actors import FeaturesConfig, describe_env
from system.config import ConfigError, load_config
from system.train.plan import check_offline


@pytest.mark.parametrize(
    ("path", "env_id"),
    [("configs/miniwob_digiq.yaml", "miniwob/click-button-v1"), ("configs/android_digiq.yaml", "qfleet/Android-v0")],
)
def test_a_digiq_config_loads_with_digiqs_learner(path, env_id):
    config = load_config(path)
    learner = config.learner
    assert config.env.id == env_id and config.env.features.encoder == "small"
    assert (learner.loss, learner.architecture.critic, learner.architecture.policy_head) == (
        "iql",
        "action_embedding",
        "factored",
    )
    assert (learner.iql.extraction, learner.iql.n, learner.iql.expectile) == ("best_of_n", 16, 0.5)
    assert learner.policy_acting == "sample"
    # Q(s, a) only learns at the data's actions: the data action among the candidates ties pi to the data.
    assert learner.iql.include_data_action and learner.iql.replacement
    assert config.offline.dataset and config.offline.updates > 0 and config.train.total_env_steps > 0


@pytest.mark.parametrize("path", ["configs/miniwob_digiq.yaml", "configs/android_digiq.yaml"])
def test_a_digiq_configs_online_only_command_from_its_header_loads(path):
    with open(path) as f:
        header = f.read()
    overrides = ["offline.dataset=null", "replay.mix=null"]
    if "android" in path:  # its header names the online-only command
        assert "--set offline.dataset=null --set replay.mix=null" in header
    if load_config(path).learner.iql.policy_warmup != "none":  # pi's warm-up clones a dataset's best episodes
        with pytest.raises(ConfigError, match="policy_warmup"):
            check_offline(load_config(path, overrides))
        overrides.append("learner.policy_warmup=none")
    config = load_config(path, overrides)
    assert config.offline.dataset is None and config.replay.mix is None
    check_offline(config)  # what `qfleet train` checks of the offline section: passes
    with pytest.raises(ConfigError, match="replay.mix"):  # a mix with no dataset to mix from is refused
        check_offline(load_config(path, [o for o in overrides if o != "replay.mix=null"]))


def test_the_android_env_gives_the_learner_its_ui_action_layout():
    config = load_config("configs/android_digiq.yaml")
    env = dataclasses.replace(config.env, features=FeaturesConfig())  # no encoder needed to read spaces
    space = describe_env(env).action_space
    layout = space.layout
    assert layout is not None and layout.num_actions == space.num_actions
    assert layout.kinds == ("tap", "swipe", "type", "key", "complete")
    assert layout.kind_of.count(0) == 16  # 4 x 4 taps
    assert layout.points[0] == (0.125, 0.125)


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromedriver"), reason="chromium-driver is not installed")
def test_the_miniwob_env_gives_the_learner_its_ui_action_layout():
    config = load_config("configs/miniwob_digiq.yaml")
    space = describe_env(dataclasses.replace(config.env, features=FeaturesConfig())).action_space
    layout = space.layout
    assert layout.kinds == ("tap", "swipe", "type", "key") and layout.num_actions == space.num_actions
    assert layout.kind_of.count(0) == 120  # the 12 x 10 click grid
    assert layout.points[1] == pytest.approx((0.15, 1 / 24))  # row 0, column 1: the cell's centre


def test_an_offline_then_online_run_with_the_warmup_is_refused_unless_its_learner_resumes_past_the_warmup():
    from system.train.plan import check_warmup_phase

    config = load_config("configs/miniwob_digiq.yaml")
    starts = config.learner.iql.policy_starts
    assert config.learner.iql.policy_warmup == "filtered_bc" and config.train.total_env_steps > 0
    with pytest.raises(ConfigError, match=r"policy_warmup.*afresh.*total_env_steps=0.*--resume"):
        check_warmup_phase(config)  # a fresh run, or a resume whose learner starts fresh
    with pytest.raises(ConfigError, match=rf"update {starts - 1:,}, inside the warm-up"):
        check_warmup_phase(config, resumed_from=starts - 1)
    check_warmup_phase(config, resumed_from=starts)  # the offline phase ran alone past the warm-up
    check_warmup_phase(load_config("configs/miniwob_digiq.yaml", ["train.total_env_steps=0"]))
    check_warmup_phase(load_config("configs/miniwob_digiq.yaml", ["learner.policy_warmup=none"]))


@pytest.mark.parametrize("path", ["configs/miniwob_digiq.yaml", "configs/android_digiq.yaml"])
def test_a_digiq_configs_offline_phase_goes_past_the_warmup_and_a_shorter_one_is_refused(path):
    config = load_config(path, ["train.total_env_steps=0"])
    check_offline(config)
    if config.learner.iql.policy_warmup == "filtered_bc":
        starts = config.learner.iql.policy_starts
        assert config.offline.updates > starts
        short = load_config(path, ["train.total_env_steps=0", f"offline.updates={starts}"])
        with pytest.raises(ConfigError, match=rf"offline.updates={starts}.*learner.policy_starts={starts}"):
            check_offline(short)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (["env.features.grid_rows=12"], r"env.features.grid_rows: grid_rows=12, grid_cols=0: both >= 1"),
        (["env.features.grid_cols=-1", "env.features.grid_rows=-1"], r"env.features.grid_rows: grid_rows=-1"),
        (["env.features.grid_rows=two"], r"env.features.grid_rows"),
        (["learner.critic=pixels"], r"learner.critic"),
    ],
)
def test_bad_screen_grid_and_critic_keys_are_refused_naming_the_key(setting, message):
    overrides = ["env.features.grid_rows=0", "env.features.grid_cols=0", *setting]
    with pytest.raises(ConfigError, match=message):
        load_config("configs/miniwob_digiq.yaml", overrides)


def test_the_miniwob_config_takes_the_spatial_critic_with_a_screen_grid_aligned_with_the_taps():
    grid = ["env.features.grid_rows=12", "env.features.grid_cols=10", "learner.critic=spatial"]
    config = load_config("configs/miniwob_digiq.yaml", grid)
    features, browser = config.env.features, config.env.browser
    assert (features.grid_rows, features.grid_cols) == (browser.grid_rows, browser.grid_cols)
    assert config.learner.architecture.critic == "spatial"
    # Screenshots (the encoder's own training data) ignore the grid: the pixel recording's env keeps
    # the browser's screenshots as its observations, with no grid appended.
    import gymnasium as gym
    import numpy as np

    from actors import featurize

    pixels = load_config("configs/miniwob_digiq.yaml", [*grid, "env.features.encoder=none"]).env
    screenshots = gym.spaces.Box(0, 255, (browser.obs_height, browser.obs_width, 3), np.uint8)
    env = gym.Env()
    env.observation_space, env.action_space = screenshots, gym.spaces.Discrete(2)
    assert featurize(env, pixels.features, pixels.id).observation_space == screenshots


def test_the_spatial_critic_is_refused_for_an_env_without_a_screen_grid():
    from learner import ActionSpace
    from system.config import check_learner_for_env

    config = load_config("configs/android_digiq.yaml", ["learner.critic=spatial"])
    layout = describe_env(dataclasses.replace(config.env, features=FeaturesConfig())).action_space.layout
    with pytest.raises(ConfigError, match=r"learner.critic='spatial' needs .*no screen grid"):
        check_learner_for_env(config.learner, ActionSpace(layout.num_actions, layout=layout), config.env.id)
    with pytest.raises(ConfigError, match=r"learner.critic='spatial' needs .*no UI action layout"):
        check_learner_for_env(config.learner, ActionSpace(4), "CartPole-v1")
