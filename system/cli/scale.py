"""`qfleet scale --actors N`: change the number of env actors of a running run."""

from __future__ import annotations

import argparse

from system.cli.options import run_options
from system.config import ConfigError

NAME = "scale"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="change the number of env actors of a running run",
        description=(
            "Write the wanted actor count to the run's Redis; the running actor supervisor starts or "
            "retires actors to match within a second."
        ),
    )
    parser.add_argument("--actors", type=int, required=True, metavar="N", help="wanted number of env actors")
    run_options(parser)


def run(args: argparse.Namespace) -> int:
    from system.services.actors import scale

    if args.actors < 0:
        raise ConfigError(f"--actors {args.actors}: must be >= 0")
    return scale(args.redis_url, args.run, args.actors)
