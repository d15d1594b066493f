"""Options several commands share."""

from __future__ import annotations

import argparse


def set_option(parser: argparse.ArgumentParser, example: str = "replay.capacity=1000000") -> None:
    """`--set SECTION.KEY=VALUE`, repeatable."""
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help=f"override one config value, e.g. --set {example} (repeatable)",
    )


def config_options(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` and `--set`, for the commands that run one component."""
    parser.add_argument("--config", metavar="FILE", help="YAML run config (configs/*.yaml); defaults apply without one")
    set_option(parser)


def run_options(parser: argparse.ArgumentParser) -> None:
    """`--redis-url` and `--run`: which run a component joins."""
    parser.add_argument(
        "--redis-url",
        required=True,
        help="the run's Redis, e.g. redis://127.0.0.1:6379/0 (its password: a local qfleet train's saved one, "
        "else QFLEET_REDIS_PASSWORD; never put it in the URL on a command line)",
    )
    parser.add_argument(
        "--run", default="default", help="run name shared by its shards, learner and actors (default: default)"
    )


def insecure_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--insecure`: run without the replay credentials (plaintext, no token)."""
    parser.add_argument(
        "--insecure",
        action="store_true",
        help=(
            f"{what} without TLS and without a token (refused unless on loopback for a shard). Default: the "
            "run's replay credentials from QFLEET_REPLAY_TOKEN, QFLEET_REPLAY_TLS_CERT (and QFLEET_REPLAY_TLS_KEY "
            "for a shard); `qfleet replay credentials --out DIR` makes them"
        ),
    )


def flag_overrides(args: argparse.Namespace) -> dict:
    """The `section.key` options a command added from a config dataclass (`add_arguments`)."""
    return {key: value for key, value in vars(args).items() if "." in key}
