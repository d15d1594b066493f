"""`qfleet record DATASET_ID --policy RUN_DIR | --config CONFIG | --behaviour instruction`: record
episodes into a dataset (one per --env)."""

from __future__ import annotations

import argparse

from system.cli.options import set_option
from system.config import add_arguments, from_arguments
from system.datasets import RecordSettings

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
            "metadata holds the env id and spaces and how it was recorded (no local paths). --num-actors env vectors of "
            "env.num_envs envs each run side by side. A progress line comes every --progress-every-s seconds; "
            "the dataset is committed at each, so an interrupted recording keeps what it had (one stopped "
            "before its first commit leaves no dataset). Needs no Redis, Ray or shards. On MiniWoB, "
            "--behaviour instruction plays a policy that follows the task's instruction with the page's own "
            "elements with probability --follow-p per step and acts uniformly at random otherwise (datasets of "
            "mixed quality; --config, optional, gives the env settings); episodes carry their success. "
            "Several --env record one dataset each: DATASET_ID then holds {task}, the MiniWoB task name."
        ),
        epilog=(
            "examples: qfleet record cartpole/medium-v0 --policy runs/cartpole --epsilon 0.1 --episodes 500; "
            "qfleet record 'miniwob/{task}-p0.7-v0' --behaviour instruction --follow-p 0.7 "
            "--env miniwob/click-button-v1 --env miniwob/enter-text-v1 --episodes 100"
        ),
    )
    parser.add_argument("dataset_id", metavar="DATASET_ID", help="new dataset id, [namespace/]name-vN")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--policy", metavar="RUN_DIR", help="a qfleet train run directory: its newest checkpoint acts")
    source.add_argument(
        "--config",
        metavar="CONFIG",
        help="YAML run config: an untrained network of it acts (with --behaviour instruction: only its env settings)",
    )
    parser.add_argument(
        "--env",
        metavar="ENV_ID",
        action="append",
        default=[],
        help="env.id to record (repeatable: one dataset each, DATASET_ID with {task}); default: the config's",
    )
    set_option(parser, "env.num_envs=4")
    datasets_dir_option(parser)
    add_arguments(parser, RecordSettings, NAME, title="recording options")


def run(args: argparse.Namespace) -> int:
    from system.datasets.run_record import main_record

    settings = from_arguments(args, RecordSettings, NAME)
    return main_record(args.dataset_id, args.policy, args.config, args.set, settings, args.datasets_dir, args.env)
