"""`qfleet status`: a live view of a run's learner, shards and actors."""

from __future__ import annotations

import argparse

NAME = "status"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="live view of a run's learner, shards and actors (from Redis)",
        description=(
            "Read a running run's status from its Redis: the learner (updates, rate, weights version, "
            "UTD, loss), every live shard (address, items, inserts, samples) and every actor (env steps, "
            "episodes, weights, epsilon, restarts, lost transitions). Give a `qfleet train` RUN_DIR, or "
            "--redis-url and --run. A RUN_DIR whose run is not running (finished, crashed, never started) "
            "gets what it last recorded, and exit status 1. The Redis password: a local qfleet train's saved one "
            "(private secrets file), else QFLEET_REDIS_PASSWORD."
        ),
    )
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a `qfleet train` run directory")
    parser.add_argument("--redis-url", help="the run's Redis, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--run", help="run name (default: the run directory's, else default)")


def run(args: argparse.Namespace) -> int:
    from system.observe.status import main_status

    return main_status(args.run_dir, args.redis_url, args.run)
