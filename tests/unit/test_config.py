import pathlib
import sys

import pytest
import yaml

from actors.config import AndroidConfig
from learner import (
    ArchitectureConfig,
    DistributionalConfig,
    DQNConfig,
    FilteredBCConfig,
    IQLConfig,
    LearnerConfig,
    OptimizerConfig,
    PrefetchConfig,
    ResetConfig,
    SACConfig,
    TargetConfig,
)
from replay import ReplayConfig
from system.config import load_config, to_yaml
from system.config.dataclass_args import describe, field_docs
from system.errors import ConfigError


def test_yaml_then_set_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("env:\n  id: CartPole-v1\nreplay:\n  capacity: 1000\n  min_size: 10\n")
    config = load_config(path, ["replay.capacity=5e3", "replay.samples_per_insert=4"], {"replay.selector": "uniform"})
    assert config.replay.capacity == 5000
    assert config.replay.samples_per_insert == 4.0
    assert config.replay.selector == "uniform"
    assert config.replay.min_size == 10


def test_mix_fractions_are_read_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("replay:\n  mix: {online: 0.5, offline: 0.5}\n")
    assert load_config(path).replay.mix == {"online": 0.5, "offline": 0.5}


def test_placement_resources_are_read_per_role(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  shard_resources: {replay: 1}\nactors:\n  resources: {actors: 1}\n")
    config = load_config(path, ["train.learner_resources={learner: 1}"])
    assert config.train.shard_resources == {"replay": 1}
    assert config.train.learner_resources == {"learner": 1}
    assert config.actors.resources == {"actors": 1}


def test_nested_sections_from_yaml_and_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("env:\n  id: qfleet/Android-v0\n  android:\n    tap_rows: 2\n    texts: [a, b]\n")
    config = load_config(path, ["env.android.tap_cols=3", "env.android.grayscale=false"])
    android = config.env.android
    assert (android.tap_rows, android.tap_cols, android.texts, android.grayscale) == (2, 3, ["a", "b"], False)
    assert android.num_actions == 2 * 3 + 4 + 2 + 3 + 1
    # --set can open a section the YAML leaves out (the defaults fill the rest).
    assert load_config(None, ["env.android.obs_height=32"]).env.android.obs_height == 32


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "named"),
    [
        ("replay:\n  capacty: 10\n", [], "replay.capacty"),
        ("replay:\n  capacity: ten\n", [], "replay.capacity"),
        ("replay:\n  capacity: 0\n", [], "replay.capacity"),
        ("replay:\n  selector: lifo\n", [], "replay.selector"),
        ("learnr:\n  lr: 1\n", [], "learnr"),
        ("", ["replay.alpha=2"], "replay.alpha"),
        ("", ["replay.checkpoint_every_s=5"], "replay.checkpoint_every_s"),
        ("", ["replaycapacity=5"], "replaycapacity"),
        ("", ["replay.mix={online: 0.5, offline: 0.6}"], "replay.mix.*sum to 1.1"),
        ("", ["learner.loss=ppo"], "learner.loss"),
        ("", ["learner.v_min=50", "learner.v_max=10"], "learner.v_max"),
        ("", ["learner.distributional.v_min=50", "learner.distributional.v_max=10"], "learner.v_max"),
        ("", ["learner.v_min=lots"], "learner.v_min: expected 'auto' or a number, got 'lots'"),
        ("", ["learner.target_update_every=0"], "learner.target_update_every: target_update_every=0"),
        ("", ["learner.reset_modules=some"], "learner.reset_modules: 'some' is not one of"),
        ("", ["learner.sac.ensemble_sise=3"], "learner.sac.ensemble_sise: unknown key"),
        ("", ["learner.ensemble_sise=3"], "learner.ensemble_sise: unknown key.*ensemble_size"),
        ("learner:\n  v_min: 0\n  distributional: {v_min: 1}\n", [], "learner.v_min: given both"),
        ("learner:\n  reset_every: 5\n  resets: {every: 1}\n", [], "learner.reset_every: given both"),
        ("", ["learner.device=tpu"], "learner.device"),
        ("", ["learner.expectile=1"], "learner.expectile: expectile=1.0: must be in \\(0, 1\\)"),
        ("", ["learner.iql.extraction=greedy"], "learner.policy_extraction: 'greedy' is not one of"),
        ("", ["learner.best_of_n=0"], "learner.best_of_n: best_of_n=0: must be >= 1"),
        ("", ["learner.awr_temperature=.inf"], "learner.awr_temperature: awr_temperature=inf: must be finite"),
        ("", ["learner.awr_max_weight=.inf"], "learner.awr_max_weight: awr_max_weight=inf: must be finite"),
        ("", ["learner.advantage_threshold=.nan"], "learner.advantage_threshold: .*=nan: must be finite"),
        ("", ["learner.iql.advantage_threshold=-.inf"], "learner.advantage_threshold: .*=-inf: must be finite"),
        ("", ["learner.top_k_percent=0"], "learner.top_k_percent: top_k_percent=0.0: must be in"),
        ("", ["replay.mix={online: 0}"], "replay.mix.*'online'"),
        ("replay:\n  mix: [0.5, 0.5]\n", [], "replay.mix: expected a mapping"),
        ("", ["env.android.tap_rowz=3"], "env.android.tap_rowz: unknown key"),
        ("", ["env.android.simulator=phone"], "env.android.simulator: 'phone' is not one of"),
        ("", ["env.android.texts=hello"], "env.android.texts: expected a list"),
        ("", ["env.android.texts=[hello, '']"], "env.android.*texts: empty strings"),
        ("", ["env.android.tap_rows=0"], "env.android.tap_rows: tap_rows=0: must be >= 1"),
        ("", ["env..id=x"], "expected section.key=value"),
        ("", ["train.shard_resources={replay: -1}"], "train.shard_resources.*amounts must be >= 0"),
        ("", ["train.learner_resources={learner: -1}"], "train.learner_resources.*amounts must be >= 0"),
        ("", ["learner.loss=iql", "learner.cql_alpha=-1"], "learner.cql_alpha: cql_alpha=-1.0: must be >= 0"),
        ("", ["learner.loss=iql", "learner.cql_alpha=.nan"], "learner.cql_alpha: cql_alpha=nan: must be finite"),
        (
            "",
            ["learner.loss=dqn", "learner.cql_alpha=1"],
            "learner: cql_alpha=1.0: .*needs loss 'iql' \\(loss is 'dqn'\\)",
        ),
        ("", ["learner.loss=filtered_bc", "learner.cql_alpha=1"], "cql_alpha.*needs loss 'iql'"),
    ],
)
def test_bad_configs_fail_naming_the_key(tmp_path, yaml_text, overrides, named):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=named):
        load_config(path, overrides)


def test_flat_learner_keys_fill_the_algorithm_groups(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learner:\n  loss: hl_gauss\n  v_max: 110\n  network: mlp\n  reset_every: 50\n")
    overrides = ["learner.hidden_size=32", "learner.prefetch_batches_per_request=16", "learner.sac.ensemble_size=4"]
    learner = load_config(path, overrides, {"learner.lr": 0.001}).learner
    assert (learner.loss, learner.distributional.v_max, learner.distributional.v_min) == ("hl_gauss", 110.0, "auto")
    assert (learner.architecture.torso, learner.architecture.hidden_size) == ("mlp", 32)
    assert (learner.resets.every, learner.prefetch.batches_per_request, learner.prefetch.depth) == (50, 16, 8)
    assert (learner.sac.ensemble_size, learner.optimizer.lr) == (4, 0.001)


def test_offline_loss_settings_read_flat_or_as_their_own_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learner:\n  loss: iql\n  iql: {expectile: 0.5, extraction: best_of_n, n: 4}\n")
    iql = load_config(
        path, ["learner.awr_temperature=10", "learner.top_k_percent=20", "learner.best_of_n_include_data_action=true"]
    ).learner
    assert iql.iql.include_data_action is True
    assert (iql.loss, iql.iql.expectile, iql.iql.extraction, iql.iql.n) == ("iql", 0.5, "best_of_n", 4)
    assert (iql.iql.temperature, iql.filtered_bc.top_k_percent) == (10.0, 20.0)
    written = yaml.safe_load(to_yaml(load_config(path)))["learner"]
    assert (written["policy_extraction"], written["best_of_n"], written["expectile"]) == ("best_of_n", 4, 0.5)


@pytest.mark.parametrize(
    ("yaml_text", "override"),
    [
        ("learner: {v_max: 10.0}", "learner.distributional.v_max=20"),  # a resumed run's flat config.yaml
        ("learner: {distributional: {v_max: 10.0}}", "learner.v_max=20"),
    ],
)
def test_a_later_source_wins_whichever_spelling_each_uses(tmp_path, yaml_text, override):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    assert load_config(path, [override]).learner.distributional.v_max == 20.0


def test_written_config_is_flat_and_reads_back_the_same(tmp_path):
    config = load_config("configs/minatar_breakout.yaml", ["learner.tau=0.01", "learner.reset_every=7"])
    written = yaml.safe_load(to_yaml(config))["learner"]
    assert written["tau"] == 0.01 and written["reset_every"] == 7 and written["num_bins"] == 61
    assert "target" not in written and "distributional" not in written
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert load_config(path) == config


@pytest.mark.parametrize("path", sorted(pathlib.Path("configs").glob("*.yaml")))
def test_every_shipped_config_loads(path):
    load_config(path)


def test_reference_lists_flat_learner_keys_with_their_docs():
    reference = describe(LearnerConfig, "learner")
    assert "  ensemble_size: 2    # Critics in the ensemble" in reference
    assert "  network: auto    # " in reference
    assert "architecture" not in reference


@pytest.mark.parametrize(
    "cls",
    [
        ReplayConfig,
        LearnerConfig,
        ArchitectureConfig,
        OptimizerConfig,
        TargetConfig,
        DQNConfig,
        DistributionalConfig,
        SACConfig,
        IQLConfig,
        FilteredBCConfig,
        ResetConfig,
        PrefetchConfig,
        AndroidConfig,
    ],
)
def test_every_config_field_is_documented(cls):
    docs = field_docs(cls)
    missing = [name for name in cls.__dataclass_fields__ if not docs.get(name)]
    assert not missing


def test_a_module_env_id_imports_only_what_env_allow_import_names(tmp_path, monkeypatch):
    import gymnasium as gym

    from system.config.env import env_spaces

    marker = tmp_path / "imported"
    (tmp_path / "qfleet_test_envmod.py").write_text(
        "import pathlib\nimport gymnasium\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "gymnasium.register('EnvModCartPole-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env_id = "qfleet_test_envmod:EnvModCartPole-v0"
    try:
        for allowed in ([], ["qfleet_test"], ["os", "qfleet_test_envmod_x"]):
            with pytest.raises(ConfigError, match=r"env\.id: .*module 'qfleet_test_envmod'.*env\.allow_import"):
                load_config(None, [f"env.id={env_id}", f"env.allow_import={allowed}"])
        with pytest.raises(ConfigError, match=r"env\.id: .*module 'os'"):
            load_config(None, ["env.id=os:Nope"])
        assert not marker.exists() and "qfleet_test_envmod" not in sys.modules  # refused before any import

        config = load_config(None, [f"env.id={env_id}", "env.allow_import=[qfleet_test_envmod]"])
        assert env_spaces(config.env).action_space.num_actions == 2 and marker.read_text() == "ran"
    finally:
        sys.modules.pop("qfleet_test_envmod", None)
        gym.registry.pop("EnvModCartPole-v0", None)


def test_the_same_host_feed_is_a_learner_key_on_by_default_and_checked():
    assert load_config(None, []).learner.prefetch.same_host_feed == "auto"
    assert load_config(None, ["learner.same_host_feed=off"]).learner.prefetch.same_host_feed == "off"
    with pytest.raises(ConfigError, match="same_host_feed"):
        load_config(None, ["learner.same_host_feed=always"])


def test_a_choice_spelled_off_is_that_choice_though_yaml_reads_it_as_false(tmp_path):
    """YAML 1.1 reads `off` as false: a key whose choices include "off" takes it as "off"."""
    path = tmp_path / "feed.yaml"
    path.write_text("learner:\n  same_host_feed: off\n")
    assert load_config(str(path), []).learner.prefetch.same_host_feed == "off"
    with pytest.raises(ConfigError, match="same_host_feed"):  # true spells no choice of this key
        load_config(None, ["learner.same_host_feed=on"])
