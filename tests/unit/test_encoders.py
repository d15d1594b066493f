"""Frozen encoders: a tiny randomly initialised ViT the test saves itself loads from its directory
(nothing downloaded), its hidden layers are selectable, pickle weights are refused, and the
`env.features` wrapper turns screenshots into encoder features plus the instruction's embedding."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from actors import EnvConfig, FeaturesConfig, FeaturizedEnv, UnsupportedEnvError, featurize
from learner import (
    EncoderError,
    SmallEncoder,
    instruction_embedding,
    load_encoder,
    load_small_encoder,
    load_transformers_encoder,
    save_small_encoder,
)
from system.config import ConfigError, load_config

SCREEN = (32, 32, 3)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A 2-layer ViT with 32-wide hidden states for 32x32 images, randomly initialised and saved
    by `save_pretrained` (safetensors) into a temporary directory."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    directory = tmp_path_factory.mktemp("tiny-vit")
    ViTModel(config).save_pretrained(directory)
    return directory


def screens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SCREEN), dtype=np.uint8)


def test_a_tiny_vit_loads_from_its_directory_frozen_with_hidden_size_features(tiny_vit):
    encoder = load_transformers_encoder(tiny_vit, layer=-1)
    frames = screens(4)
    features = encoder.encode(frames)
    assert features.shape == (4, 32) and features.dtype == np.float32 and encoder.feature_dim == 32
    assert not encoder.module.training
    assert not any(p.requires_grad for p in encoder.module.parameters())
    np.testing.assert_array_equal(encoder.encode(frames), features)  # deterministic: eval mode, no dropout
    assert not np.allclose(features[0], features[1])  # different screens, different features


def test_the_hidden_layer_is_selectable_and_matches_the_models_own_states(tiny_vit):
    from transformers import ViTModel

    frames = screens(3, seed=1)
    by_layer = {layer: load_transformers_encoder(tiny_vit, layer).encode(frames) for layer in (0, 1, -1)}
    assert not np.allclose(by_layer[0], by_layer[1]) and not np.allclose(by_layer[1], by_layer[-1])
    model = ViTModel.from_pretrained(tiny_vit, local_files_only=True, use_safetensors=True).eval()
    pixels = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        states = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(by_layer[1], states[1].mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(EncoderError, match="layer=7: the model has 3 hidden states"):
        load_transformers_encoder(tiny_vit, layer=7)


def test_pickle_weights_are_refused_for_both_kinds(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    torch.save(SmallEncoder(SCREEN, 8).state_dict(), small / "encoder.pt")
    with pytest.raises(EncoderError, match=r"pickle weights \(encoder.pt\), which are refused"):
        load_small_encoder(small)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text('{"model_type": "vit"}')
    torch.save({}, hub / "pytorch_model.bin")
    with pytest.raises(EncoderError, match=r"pickle weights \(pytorch_model.bin\)"):
        load_transformers_encoder(hub)
    with pytest.raises(EncoderError, match="not a directory"):
        load_small_encoder(tmp_path / "absent")


def test_a_saved_small_encoder_loads_to_identical_features(tmp_path):
    torch.manual_seed(3)
    encoder = SmallEncoder(SCREEN, 16).eval()
    save_small_encoder(encoder, tmp_path / "enc", {"note": "test"})
    loaded = load_small_encoder(tmp_path / "enc")
    frames = screens(5)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.encode(frames), encoder(torch.from_numpy(frames)).numpy())
    assert loaded.input_shape == SCREEN and loaded.feature_dim == 16
    with pytest.raises(EncoderError, match="one feature layer"):
        load_small_encoder(tmp_path / "enc", layer=1)


def test_the_instruction_embedding_is_fixed_skips_padding_and_separates_instructions():
    a = np.array([[5, 9, 0, 0]], np.int32)
    same = np.array([[5, 9, 0, 0, 0, 0]], np.int32)
    other = np.array([[7, 11, 0, 0]], np.int32)
    np.testing.assert_array_equal(instruction_embedding(a, 16), instruction_embedding(same, 16))
    assert np.abs(instruction_embedding(a, 16) - instruction_embedding(other, 16)).max() > 0.1
    np.testing.assert_array_equal(instruction_embedding(np.zeros((1, 4), np.int32), 16), np.zeros((1, 16)))


class Screens(gym.Env):
    """32x32 RGB screens from a fixed set, with an instruction in info (as MiniWoB gives one)."""

    observation_space = gym.spaces.Box(0, 255, SCREEN, np.uint8)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return screens(1, 0)[0], {"instruction_tokens": np.array([5, 9, 0], np.int32)}

    def step(self, action):
        return screens(1, int(action) + 1)[0], 0.0, False, False, {"instruction_tokens": np.array([5, 9, 0])}


def test_the_wrapper_observes_encoder_features_then_the_instruction(tiny_vit):
    env = featurize(Screens(), FeaturesConfig("transformers", str(tiny_vit), layer=1, instruction_dim=8), "screens")
    assert isinstance(env, FeaturizedEnv)
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (40,), np.float32)
    obs, _ = env.reset(seed=0)
    encoder = load_encoder("transformers", str(tiny_vit), 1)
    np.testing.assert_array_equal(obs[:32], encoder.encode(screens(1, 0))[0])
    np.testing.assert_array_equal(obs[32:], instruction_embedding(np.array([[5, 9, 0]]), 8)[0])
    obs, *_ = env.step(1)
    np.testing.assert_array_equal(obs[:32], encoder.encode(screens(1, 2))[0])
    assert obs.dtype == np.float32 and obs.shape == (40,)


def test_an_encoder_for_other_screens_or_a_missing_one_is_refused_naming_the_key(tmp_path):
    save_small_encoder(SmallEncoder((24, 24, 3), 8), tmp_path / "enc24", {})
    with pytest.raises(UnsupportedEnvError, match="env.features.path: small encoder .* takes 24x24x3 screens"):
        featurize(Screens(), FeaturesConfig("small", str(tmp_path / "enc24")), "screens")
    with pytest.raises(UnsupportedEnvError, match=r"env.features.path='.*absent': not a directory"):
        featurize(Screens(), FeaturesConfig("small", str(tmp_path / "absent")), "screens")
    assert featurize(env := Screens(), FeaturesConfig(), "screens") is env  # encoder: none


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("env.features.encoder=clip", "env.features.encoder: 'clip' is not one of ['none', 'small', 'transformers']"),
        ("env.features.encoder=small", "env.features.path: path=None: the encoder's directory is required"),
        ("env.features={encoder: small, path: d, layer: 2}", "env.features.layer: layer=2: the small encoder has one"),
        ("env.features.instruction_dim=-1", "env.features.instruction_dim: instruction_dim=-1: must be >= 0"),
        (
            "env.features={encoder: transformers, path: d, grid_rows: 2, grid_cols: 3}",
            "env.features.grid_rows: grid_rows=2: a screen grid is pooled from the small encoder's spatial feature map",
        ),
    ],
)
def test_bad_features_settings_name_the_key(setting, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [setting])
    assert message in str(raised.value)


def test_features_default_to_none_in_a_run_config():
    assert load_config(None).env.features == FeaturesConfig() and EnvConfig().features.encoder == "none"


def test_features_are_standardised_with_the_statistics_saved_with_the_encoder(tmp_path, caplog):
    from learner import FrozenEncoder, feature_statistics

    torch.manual_seed(4)
    encoder = SmallEncoder(SCREEN, 16).eval()
    frames = screens(64)
    raw = FrozenEncoder(encoder, 16, "raw")
    stats = feature_statistics(raw, frames, batch=10)  # batches that do not divide the frames
    save_small_encoder(encoder, tmp_path / "enc", {}, standardise=stats)
    loaded = load_small_encoder(tmp_path / "enc")
    features = loaded.encode(frames)
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(features.std(axis=0), 1.0, atol=1e-3)
    np.testing.assert_allclose(
        features, (raw.encode(frames) - np.array(stats["mean"])) / np.array(stats["std"]), rtol=1e-4, atol=1e-4
    )
    # an encoder folder from before the statistics still loads, raw, and says so
    save_small_encoder(encoder, tmp_path / "old", {})
    with caplog.at_level("WARNING", logger="learner.encoders"):
        old = load_small_encoder(tmp_path / "old")
    np.testing.assert_array_equal(old.encode(frames), raw.encode(frames))
    assert "no feature statistics" in caplog.text


def test_the_featuriser_observes_standardised_features(tmp_path):
    from learner import FrozenEncoder, feature_statistics

    torch.manual_seed(5)
    encoder = SmallEncoder(SCREEN, 8).eval()
    raw = FrozenEncoder(encoder, 8, "raw")
    stats = feature_statistics(raw, screens(32))
    save_small_encoder(encoder, tmp_path / "enc", {}, standardise=stats)
    env = featurize(Screens(), FeaturesConfig("small", str(tmp_path / "enc"), instruction_dim=4), "screens")
    obs, _ = env.reset(seed=0)
    expected = (raw.encode(screens(1, 0))[0] - np.array(stats["mean"])) / np.array(stats["std"])
    np.testing.assert_allclose(obs[:8], expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(obs[:8], raw.encode(screens(1, 0))[0], atol=1e-2)


def test_features_and_screen_grid_come_from_one_pass_of_the_convolutions(tmp_path):
    torch.manual_seed(4)
    save_small_encoder(SmallEncoder(SCREEN, 16, channels=(8, 8, 4)).eval(), tmp_path / "enc", {})
    loaded = load_small_encoder(tmp_path / "enc")
    frames = screens(3)
    passes = []
    loaded.module.conv[0].register_forward_hook(lambda *_: passes.append(1))
    features, grid = loaded.encode_with_grid(frames, 2, 3)
    assert len(passes) == 1
    np.testing.assert_array_equal(features, loaded.encode(frames))
    with torch.no_grad():
        spatial = loaded.module.feature_map(torch.from_numpy(frames))
        expected = torch.nn.functional.adaptive_avg_pool2d(spatial, (2, 3)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(grid, expected)
    assert grid.shape == (3, 2, 3, 4)
