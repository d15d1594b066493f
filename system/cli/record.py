"""`qfleet record DATASET_ID --policy RUN_DIR | --config CONFIG`: record episodes into a dataset."""

from __future__ import annotations

import argparse

from system.cli.options import set_option
from system.config import ConfigError

NAME = "record"


def datasets_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets-dir",
        metavar="DIR",
        help="folder of datasets (default: MINARI_DATASETS_PATH, else ~/.minari/datasets); nothing is downloaded",
    )


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="record episodes of a policy into a new Minari dataset",
        description=(
            "Play a policy with exploration and write every episode to a new Minari dataset (arrow format: "
            "one Arrow file per episode, readable by minari.load_dataset). The policy is the newest learner "
            "checkpoint of a qfleet train run (--policy RUN_DIR, its env and network from the run's config) "
            "or an untrained network (--config CONFIG; with --epsilon 1 a uniform random policy). Each "
            "episode's metadata holds the policy version, epsilon and actor that made it; the dataset's "
            "metadata holds the env spaces, the env spec and how it was recorded. --actors env vectors of "
            "env.num_envs envs each run side by side. A progress line comes every --progress-every seconds; "
            "the dataset is committed at each, so an interrupted recording keeps what it had. Needs no "
            "Redis, Ray or shards."
        ),
        epilog="example: qfleet record cartpole/medium-v0 --policy runs/cartpole --epsilon 0.1 --episodes 500",
    )
    parser.add_argument("dataset_id", metavar="DATASET_ID", help="new dataset id, [namespace/]name-vN")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--policy", metavar="RUN_DIR", help="a qfleet train run directory: its newest checkpoint acts")
    source.add_argument("--config", metavar="CONFIG", help="YAML run config: an untrained network of it acts")
    set_option(parser, "env.num_envs=4")
    parser.add_argument("--epsilon", type=float, default=0.0, metavar="E", help="random action probability (default 0)")
    parser.add_argument("--episodes", type=int, required=True, metavar="N", help="episodes to record")
    parser.add_argument("--actors", type=int, default=1, metavar="K", help="env vectors side by side (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seeds envs and exploration (default 0)")
    parser.add_argument(
        "--progress-every", type=float, default=10.0, metavar="S", help="seconds between progress lines (default 10)"
    )
    datasets_dir_option(parser)


def run(args: argparse.Namespace) -> int:
    from system.datasets import RecordSettings
    from system.datasets.run_record import main_record

    try:
        settings = RecordSettings(args.episodes, args.epsilon, args.actors, args.seed, args.progress_every)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return main_record(args.dataset_id, args.policy, args.config, args.set, settings, args.datasets_dir)
