import pytest

from actors.config import AndroidConfig
from learner import LearnerConfig
from replay import ReplayConfig
from system.config import load_config
from system.config.dataclass_args import ConfigError, field_docs


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
        ("", ["learner.v_min=50"], "learner.v_max"),
        ("", ["learner.device=tpu"], "learner.device"),
        ("", ["replay.mix={online: 0}"], "replay.mix.*'online'"),
        ("replay:\n  mix: [0.5, 0.5]\n", [], "replay.mix: expected a mapping"),
        ("", ["env.android.tap_rowz=3"], "env.android.tap_rowz: unknown key"),
        ("", ["env.android.simulator=phone"], "env.android.simulator: 'phone' is not one of"),
        ("", ["env.android.texts=hello"], "env.android.texts: expected a list"),
        ("", ["env.android.texts=[hello, '']"], "env.android.*texts: empty strings"),
        ("", ["env.android.tap_rows=0"], "env.android.tap_rows: tap_rows=0: must be >= 1"),
        ("", ["env..id=x"], "expected section.key=value"),
    ],
)
def test_bad_configs_fail_naming_the_key(tmp_path, yaml_text, overrides, named):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=named):
        load_config(path, overrides)


@pytest.mark.parametrize("cls", [ReplayConfig, LearnerConfig, AndroidConfig])
def test_every_config_field_is_documented(cls):
    docs = field_docs(cls)
    missing = [name for name in cls.__dataclass_fields__ if not docs.get(name)]
    assert not missing
