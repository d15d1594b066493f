"""The `qfleet` command line: one module per command, each with `add_parser` and `run`.

    qfleet train CONFIG [--set section.key=value ...] [--run-dir DIR] | --resume RUN_DIR
    qfleet eval RUN_DIR [--episodes N]
    qfleet record DATASET_ID --policy RUN_DIR | --config CONFIG --episodes N [--epsilon E] [--datasets-dir DIR]
    qfleet record DATASET_ID --behaviour instruction --follow-p P --env miniwob/<task>-v1 ... --episodes N
    qfleet dataset list | info DATASET [--datasets-dir DIR]
    qfleet encoder train --dataset ID --out DIR [--epochs N ...]
    qfleet status [RUN_DIR | --redis-url URL --run NAME]
    qfleet report RUN_DIR
    qfleet discovery [RUN_DIR] [--redis-url URL] [--run NAME ...] [--host H] [--port P]
    qfleet replay serve [--config FILE] [--spec FILE] [--set section.key=value ...] [--capacity N ...]
    qfleet learner run --redis-url URL --run NAME [--config FILE] [--checkpoint-dir DIR] [...]
    qfleet actors run --redis-url URL --run NAME [--config FILE] [--num-actors N] [...]
    qfleet scale --actors N --redis-url URL --run NAME
    qfleet bench {replay,sharded,learner,actors,dataset,ui-env,startup} [--seconds S | --runs N] [--output FILE]
    qfleet bench digiq --out FILE [--tasks T,...] [--episodes N] [--updates U] [...]   (issue 21, MiniWoB)
    qfleet config [CONFIG] [--set ...]

Option help comes from the config dataclasses' field docstrings.
"""

from __future__ import annotations

import argparse
import logging
import sys

from replay import ReplayError, SpecMismatchError
from system.cli import (
    actors,
    bench,
    config,
    dataset,
    discovery,
    encoder,
    evaluate,
    learner,
    record,
    replay,
    report,
    scale,
    status,
    train,
)
from system.config import ConfigError
from system.errors import ClusterStartError, DatasetError, RedisLaunchError

COMMANDS = {
    module.NAME: module
    for module in (
        train,
        evaluate,
        record,
        dataset,
        encoder,
        status,
        report,
        discovery,
        replay,
        learner,
        actors,
        scale,
        bench,
        config,
    )
}
"""Every `qfleet` command, by name, in `--help` order."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qfleet",
        description="qfleet: distributed actor-learner Q-learning on Ray with a sharded gRPC replay service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return COMMANDS[args.command].run(args)
    except ConfigError as exc:
        print(f"qfleet: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qfleet: interrupted", file=sys.stderr)
        return 130
    except SpecMismatchError as exc:
        print(f"qfleet: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"qfleet: {exc}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        print(f"qfleet: {exc}", file=sys.stderr)
        return 1
    except (ClusterStartError, RedisLaunchError) as exc:  # a Redis or Ray node the command started did not start
        print(f"qfleet: {exc}", file=sys.stderr)
        return 1
