"""Phase 1: the actionability objective on synthetic screens where one action per screen lights up
a button (and the others change nothing). The labels come from the screens, the held-out accuracy
is high, and the saved encoder loads to the same features; `qfleet encoder train` does all of it
from a recorded Minari dataset."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from learner import ActionabilityConfig, load_small_encoder, save_small_encoder, screen_changed, train_actionability

NUM_ACTIONS = 18
"""16 taps on a 4x4 grid of 8x8 cells, then two actions that never change the screen."""


COLOURS = np.array([(200, 200, 60), (60, 60, 220)], np.uint8)


def button_episodes(episodes: int, steps: int = 10, seed: int = 0):
    """(frames [E, T + 1, 32, 32, 3], actions [E, T], button cells [E]): noisy screens with one
    button each; tapping its cell toggles its colour, every other action changes nothing. Half
    the actions are taps on the button."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(rng.integers(0, 40, (episodes, 1, 32, 32, 3), dtype=np.uint8), steps + 1, axis=1)
    cells = rng.integers(0, 16, episodes)
    actions = np.where(
        rng.random((episodes, steps)) < 0.5, cells[:, None], rng.integers(0, NUM_ACTIONS, (episodes, steps))
    )
    for e, cell in enumerate(cells):
        row, col = divmod(int(cell), 4)
        colour = np.cumsum(np.concatenate([[0], actions[e] == cell])) % 2
        frames[e, :, row * 8 + 1 : row * 8 + 7, col * 8 + 1 : col * 8 + 7] = COLOURS[colour][:, None, None]
    return frames, actions, cells


def pairs(frames: np.ndarray, actions: np.ndarray):
    """(obs, actions, next_obs, episode of each) flattened over episodes."""
    size = frames.shape[2:]
    episode = np.repeat(np.arange(len(frames)), actions.shape[1])
    return frames[:, :-1].reshape(-1, *size), actions.reshape(-1), frames[:, 1:].reshape(-1, *size), episode


CONFIG = ActionabilityConfig(epochs=4, batch_size=64, feature_dim=64)


def test_a_screen_has_changed_when_enough_pixels_moved_beyond_the_tolerance():
    obs = np.zeros((3, 10, 10, 3), np.uint8)
    after = obs.copy()
    after[1, 0, 0] = 8  # within the tolerance: noise
    after[2, :2, :2] = 200  # 4% of the pixels
    np.testing.assert_array_equal(screen_changed(obs, after, 8, 0.01), [False, False, True])
    np.testing.assert_array_equal(screen_changed(obs, after, 8, 0.05), [False, False, False])


def test_phase_one_learns_which_actions_change_the_screen_on_held_out_episodes(tmp_path):
    frames, steps, cells = button_episodes(150)
    obs, actions, next_obs, episodes = pairs(frames, steps)
    result = train_actionability(obs, actions, next_obs, NUM_ACTIONS, CONFIG, episodes=episodes)
    assert result.holdout_size == 300 and result.train_size == 1200
    assert result.positive_fraction == pytest.approx(float((steps == cells[:, None]).mean()))
    assert result.holdout_accuracy >= 0.95 and result.holdout_balanced_accuracy >= 0.95

    save_small_encoder(result.model.encoder, tmp_path / "enc", {"actionability": result.summary()})
    frozen = load_small_encoder(tmp_path / "enc")
    with torch.no_grad():
        np.testing.assert_array_equal(frozen.encode(obs[:64]), result.model.encoder(torch.from_numpy(obs[:64])).numpy())
    saved = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    assert saved["actionability"]["holdout_accuracy"] == round(result.holdout_accuracy, 4)


def test_an_untrained_encoder_does_not_already_predict_it():
    """The bar above is the training's doing: one epoch on a tenth of the data stays far below."""
    obs, actions, next_obs, episodes = pairs(*button_episodes(30, seed=1)[:2])
    weak = ActionabilityConfig(epochs=1, batch_size=64, feature_dim=64, learning_rate=1e-5)
    result = train_actionability(obs, actions, next_obs, NUM_ACTIONS, weak, episodes=episodes)
    assert result.holdout_balanced_accuracy < 0.8


def test_qfleet_encoder_train_trains_and_saves_from_a_recorded_dataset(tmp_path, capsys):
    from system.cli import main
    from system.datasets import DatasetWriter, Episode

    frames, actions, _ = button_episodes(150, seed=2)
    root = tmp_path / "datasets"
    writer = DatasetWriter(
        root / "ui/buttons-v0" / "data",
        "ui/buttons-v0",
        gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
        gym.spaces.Discrete(NUM_ACTIONS),
    )
    for episode, steps in zip(frames, actions, strict=True):
        writer.add(Episode(episode, steps, np.zeros(10), np.zeros(10, bool), np.arange(10) == 9))
    writer.close()

    out = tmp_path / "encoder"
    code = main(
        ["encoder", "train", "--dataset", "ui/buttons-v0", "--datasets-dir", str(root), "--out", str(out)]
        + ["--epochs", "4", "--batch-size", "64", "--feature-dim", "64"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "encoder train: epoch 4/4" in printed and "held-out accuracy" in printed
    saved = json.loads((out / "encoder.json").read_text())
    assert saved["feature_dim"] == 64 and saved["actionability"]["dataset"] == "ui/buttons-v0"
    assert saved["actionability"]["holdout_balanced_accuracy"] >= 0.95
    assert load_small_encoder(out).encode(frames[0, :2]).shape == (2, 64)
    assert sorted(path.name for path in out.iterdir()) == ["encoder.json", "encoder.safetensors"]
    # the saved statistics standardise the features of the screens it was trained on
    features = load_small_encoder(out).encode(np.concatenate(list(frames)))
    assert saved["standardise"]["frames"] == frames.shape[0] * frames.shape[1]
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-2)
    np.testing.assert_allclose(features.std(axis=0), 1.0, atol=1e-2)
