"""`qfleet encoder train --dataset ID --out DIR`: Digi-Q's phase 1 (docs/digiq.md).

Reads a recorded dataset of screenshots and UI actions, labels each (screen, action) by whether
the next screen differs, trains the small encoder with an action embedding and a classifier head
on that actionability objective, reports held-out accuracy and saves the frozen encoder
(`encoder.safetensors` + `encoder.json`) for `env.features: {encoder: small, path: DIR}`, with the
per-dimension mean and std of its features over the dataset's screens: the featuriser standardises
features with them (raw ones barely vary between screens, and learners on them collapse).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import numpy as np

from learner import ActionabilityConfig
from system.cli.record import datasets_dir_option
from system.config import ConfigError, add_arguments, from_arguments

NAME = "encoder"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="train the frozen encoder of Digi-Q-style runs (phase 1: actionability)",
        description=(
            "`train`: from a dataset of screenshots and discrete UI actions (qfleet record on a miniwob/ or "
            "Android env, env.features.encoder none), label each step by whether the action changed the screen, "
            "train a small CNN encoder with an action embedding and a classifier head on that label, report "
            "accuracy on held-out episodes, and save the encoder (safetensors + JSON, no pickle) in --out for "
            "env.features: {encoder: small, path: OUT}, with the per-dimension mean and std of its features over the "
            "dataset's screens (features are standardised with them wherever the encoder runs). A progress line comes after every epoch."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help="phase 1: actionability fine-tuning of the small encoder on a recorded dataset",
        description="Train and save the small encoder on the actionability objective (see `qfleet encoder --help`).",
        epilog="example: qfleet encoder train --dataset miniwob/click-button-mixed-v0 --out encoders/click-button",
    )
    train.add_argument("--dataset", required=True, metavar="ID", help="dataset id under the datasets folder, or ./PATH")
    train.add_argument("--out", required=True, metavar="DIR", help="directory the frozen encoder is saved in")
    datasets_dir_option(train)
    add_arguments(train, ActionabilityConfig, NAME, title="training options")


def run(args: argparse.Namespace) -> int:
    from learner import FrozenEncoder, feature_statistics, save_small_encoder, train_actionability
    from system.datasets import load_recorded_episodes

    config = from_arguments(args, ActionabilityConfig, NAME)
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    started = time.perf_counter()
    episodes = load_recorded_episodes(args.dataset, args.datasets_dir)
    frames = episodes.observations
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ConfigError(
            f"--dataset {args.dataset}: observations are {frames.dtype} {frames.shape[1:]}, not uint8 HxWxC "
            "screenshots (record it with env.features.encoder: none)"
        )
    num_actions = _discrete_actions(episodes)
    # Episode e's steps are starts[e]..+lengths[e]; its observations sit e rows further (T + 1 each).
    episode_of_step = np.repeat(np.arange(len(episodes.lengths)), episodes.lengths)
    obs_index = np.arange(episodes.num_steps) + episode_of_step
    print(
        f"encoder train: {args.dataset}: {len(episodes.lengths):,} episodes, {episodes.num_steps:,} steps, "
        f"screens {'x'.join(map(str, frames.shape[1:]))}, {num_actions} actions "
        f"(read in {time.perf_counter() - started:.1f} s)",
        flush=True,
    )

    def progress(epoch: int, epochs: int, loss: float, accuracy: float) -> None:
        elapsed = time.perf_counter() - started
        print(
            f"encoder train: epoch {epoch}/{epochs} loss {loss:.4f} held-out accuracy {accuracy:.3f} ({elapsed:.0f} s)"
        )

    result = train_actionability(
        frames[obs_index],
        episodes.actions,
        frames[obs_index + 1],
        num_actions,
        config,
        episodes=episode_of_step,
        progress=progress,
    )
    summary = result.summary()
    trained = {"dataset": args.dataset, "num_actions": num_actions, "config": dataclasses.asdict(config), **summary}
    encoder = result.model.encoder.cpu()
    stats = feature_statistics(FrozenEncoder(encoder, encoder.feature_dim, "the trained encoder"), frames)
    save_small_encoder(encoder, out, {"actionability": trained}, standardise=stats)
    raw_std = float(np.mean(stats["std"]))
    print(
        f"encoder train: features over {len(frames):,} screens: mean |mean| {np.mean(np.abs(stats['mean'])):.4f}, "
        f"mean std {raw_std:.4f} (saved; features are standardised with them)"
    )
    majority = max(result.positive_fraction, 1 - result.positive_fraction)
    print(
        f"encoder train: held-out accuracy {result.holdout_accuracy:.3f} (balanced {result.holdout_balanced_accuracy:.3f}; "
        f"always-majority {majority:.3f}) on {result.holdout_size:,} steps; train accuracy {result.train_accuracy:.3f}; "
        f"{result.seconds:.1f} s"
    )
    print(f"encoder train: saved to {out} (env.features: {{encoder: small, path: {out}}})")
    return 0


def _discrete_actions(episodes) -> int:
    """The dataset's Discrete action count (from Minari's serialised action space)."""
    from minari.serialization import deserialize_space

    space = deserialize_space(episodes.dataset_metadata["action_space"])
    if not hasattr(space, "n"):
        raise ConfigError(f"the dataset's action space {space} is not Discrete: phase 1 embeds discrete actions")
    return int(space.n)
