"""`qfleet actors run`: a run's env actors on Ray, as their own process."""

from __future__ import annotations

import argparse

from actors import ActorsConfig
from system.cli.options import config_options, flag_overrides, insecure_option, run_options
from system.config import add_arguments, load_config

NAME = "actors"


def add_parser(commands) -> None:
    parser = commands.add_parser(NAME, help="env actor commands", description="Env actor commands.")
    subcommands = parser.add_subparsers(dest="actors_command", metavar="SUBCOMMAND", required=True)
    actors_run = subcommands.add_parser(
        "run",
        help="run the env actors of a run on Ray until SIGTERM",
        description=(
            "Start actors.num_actors env actors (Ray actors; a local Ray instance unless --ray-address) "
            "that step env.num_envs copies of env.id each with the latest published weights and insert "
            "n-step transitions into the shards registered under --run (with the replay token and certificate "
            "from QFLEET_REPLAY_TOKEN and QFLEET_REPLAY_TLS_CERT, or --insecure for plaintext shards). "
            "Restarts actors that die, follows "
            "`qfleet scale`, prints progress. SIGTERM or Ctrl-C: flush every actor's transitions, stop, exit 0."
        ),
    )
    config_options(actors_run)
    run_options(actors_run)
    insecure_option(actors_run, "connect to the shards")
    actors_run.add_argument(
        "--ray-address", metavar="ADDR", help="an existing Ray cluster (default: start Ray locally)"
    )
    actors_run.add_argument("--max-env-steps", type=int, metavar="N", help="stop after N env steps over all actors")
    actors_run.add_argument(
        "--log-every", type=float, default=10.0, metavar="S", help="seconds between progress lines (default: 10)"
    )
    add_arguments(actors_run, ActorsConfig, "actors")


def run(args: argparse.Namespace) -> int:
    from system.services.actors import run_actors

    # The insert settings a config leaves out are derived as for `qfleet train`: from --max-env-steps
    # when given, else the config's train.total_env_steps (with its UTD and actor count).
    overrides = [*args.set, *([f"train.total_env_steps={args.max_env_steps}"] if args.max_env_steps else [])]
    config = load_config(args.config, overrides, flag_overrides(args))
    return run_actors(
        config, args.redis_url, args.run, args.ray_address, args.max_env_steps, args.log_every, args.insecure
    )
