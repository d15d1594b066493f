"""`qfleet learner run`: the learner of a run as its own process."""

from __future__ import annotations

import argparse

from learner import LearnerConfig
from system.cli.options import config_options, flag_overrides, insecure_option, run_options
from system.config import add_arguments, load_config
from system.config.lr_horizon import require_lr_horizon

NAME = "learner"


def add_parser(commands) -> None:
    parser = commands.add_parser(NAME, help="learner commands", description="Learner commands.")
    subcommands = parser.add_subparsers(dest="learner_command", metavar="SUBCOMMAND", required=True)
    learner_run = subcommands.add_parser(
        "run",
        help="run the learner against a run's shards until SIGTERM",
        description=(
            "Train from the shards registered under --run in Redis, publish weights to the run's "
            "parameter store, checkpoint into --checkpoint-dir (resuming any checkpoint there) and "
            "serve /metrics. The replay token and certificate come from QFLEET_REPLAY_TOKEN and "
            "QFLEET_REPLAY_TLS_CERT (or --insecure for plaintext shards). "
            "SIGTERM or Ctrl-C: finish the update, publish, checkpoint, exit 0. "
            "--lr-schedule linear needs --lr-decay-updates (only `qfleet train` derives it from the "
            "run's update budget). "
            "Prints 'qfleet learner: run NAME on DEVICE (...); metrics URL' once started."
        ),
    )
    config_options(learner_run)
    run_options(learner_run)
    insecure_option(learner_run, "connect to the shards")
    learner_run.add_argument("--checkpoint-dir", metavar="DIR", help="learner checkpoints (resumed when present)")
    learner_run.add_argument("--max-updates", type=int, metavar="N", help="stop after N updates in total")
    learner_run.add_argument("--metrics-port", type=int, metavar="PORT", help="serve /metrics here (0: a free port)")
    learner_run.add_argument(
        "--log-every", type=float, default=10.0, metavar="S", help="seconds between progress lines (default: 10)"
    )
    add_arguments(learner_run, LearnerConfig, "learner")


def run(args: argparse.Namespace) -> int:
    from system.services.learner import run_learner

    config = load_config(args.config, args.set, flag_overrides(args))
    require_lr_horizon(config)  # no run budget here to derive a linear schedule's horizon from
    return run_learner(
        config,
        args.redis_url,
        args.run,
        args.checkpoint_dir,
        args.max_updates,
        args.metrics_port,
        args.log_every,
        args.insecure,
    )
