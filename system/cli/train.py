"""`qfleet train CONFIG | --env ENV_ID | --resume RUN_DIR`: the whole system for one run."""

from __future__ import annotations

import argparse

from system.cli.options import set_option
from system.config import ConfigError

NAME = "train"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="train: the whole system (Redis, Ray, shards, learner, actors) for one run",
        description=(
            "Run the whole system for one run until train.total_env_steps, Ctrl-C or SIGTERM. With no "
            "redis.url and no ray.address it starts everything on this machine: a redis-server on a free "
            "loopback port, Ray, train.num_shards replay shards, the learner and actors.num_actors env "
            "actors (all Ray actors); with both set it runs on that Ray cluster. Progress goes to the "
            "terminal; the run directory gets the resolved config, metrics.jsonl, checkpoints, and at "
            "the end a learning curve and summary. Ctrl-C/SIGTERM stops in order (actors flush, the "
            "learner checkpoints, shards checkpoint); --resume continues the run later. Every key: "
            "`qfleet config`."
        ),
        epilog="examples: qfleet train configs/cartpole.yaml --set train.total_env_steps=20000 --set actors.num_actors=1\n"
        "          qfleet train --env Acrobot-v1 --set train.total_env_steps=30000",
    )
    parser.add_argument(
        "path", nargs="?", metavar="CONFIG", help="YAML run config (configs/*.yaml); omit with --resume or --env"
    )
    parser.add_argument(
        "--env",
        metavar="ENV_ID",
        help="no config file: train this gymnasium id with the default recipe of its action space "
        "(discrete: HL-Gauss DQN with the value support derived from the env; continuous: SAC with a "
        "critic ensemble; docs/training.md); --set overrides any key",
    )
    set_option(parser, "train.total_env_steps=50000 (also with --resume)")
    parser.add_argument(
        "--run-dir", metavar="DIR", help="run directory (default: train.run_dir, else runs/<env>-<time>)"
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped run: its config, checkpoints and counters"
    )
    parser.add_argument(
        "--fresh-learner",
        action="store_true",
        help="with --resume: when no learner checkpoint is good, continue with a fresh learner "
        "(counters go on, the run records it) instead of refusing",
    )


def run(args: argparse.Namespace) -> int:
    from system.train import run_train

    if args.path is None and args.resume is None and args.env is None:
        raise ConfigError("give a CONFIG (e.g. configs/cartpole.yaml), --env ENV_ID, or --resume RUN_DIR")
    if args.resume is not None and args.run_dir is not None:
        raise ConfigError("--run-dir with --resume: a resumed run stays in its own directory")
    return run_train(args.path, args.set, args.run_dir, args.resume, fresh_learner=args.fresh_learner, env_id=args.env)
