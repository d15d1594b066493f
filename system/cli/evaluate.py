"""`qfleet eval RUN_DIR`: play the newest learner checkpoint of a run."""

from __future__ import annotations

import argparse

from system.config import ConfigError

NAME = "eval"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="evaluate the newest learner checkpoint of a run",
        description=(
            "Load RUN_DIR's config and newest learner checkpoint and run --episodes episodes (one env "
            "each) acting greedily (or with --epsilon). Prints mean, std, min and max return and writes "
            "RUN_DIR/eval.json. Needs no Redis, Ray or shards."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `qfleet train` run directory")
    parser.add_argument("--episodes", type=int, metavar="N", help="episodes (default: train.eval_episodes)")
    parser.add_argument("--epsilon", type=float, metavar="E", help="exploration (default: train.eval_epsilon)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the episodes (default: 0)")


def run(args: argparse.Namespace) -> int:
    from system.train.evaluate import main_eval

    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes}: must be >= 1")
    return main_eval(args.run_dir, args.episodes, args.epsilon, args.seed)
