import pytest

from learner import LearnerConfig
from replay import ReplayConfig
from system.config import load_config
from system.dataclass_args import ConfigError, field_docs


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
        ("", ["learner.v_min=50"], "learner.v_max"),
        ("", ["learner.device=tpu"], "learner.device"),
        ("", ["replay.mix={online: 0}"], "replay.mix.*'online'"),
        ("replay:\n  mix: [0.5, 0.5]\n", [], "replay.mix: expected a mapping"),
    ],
)
def test_bad_configs_fail_naming_the_key(tmp_path, yaml_text, overrides, named):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=named):
        load_config(path, overrides)


@pytest.mark.parametrize("cls", [ReplayConfig, LearnerConfig])
def test_every_config_field_is_documented(cls):
    docs = field_docs(cls)
    missing = [name for name in cls.__dataclass_fields__ if not docs.get(name)]
    assert not missing
