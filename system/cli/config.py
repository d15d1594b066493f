"""`qfleet config [CONFIG]`: print a resolved config, or the reference of every key."""

from __future__ import annotations

import argparse
import typing

from system.cli.options import set_option
from system.config import RunConfig, describe, load_config, to_yaml

NAME = "config"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="print a resolved config, or the reference of every key",
        description=(
            "Print the resolved config (YAML) of CONFIG with --set overrides; with no CONFIG, every key "
            "with its default and meaning."
        ),
    )
    parser.add_argument("path", nargs="?", metavar="CONFIG", help="YAML run config")
    set_option(parser)


def run(args: argparse.Namespace) -> int:
    if args.path is None and not args.set:
        sections = typing.get_type_hints(RunConfig).items()
        print("\n".join(describe(cls, name) for name, cls in sections))
    else:
        print(to_yaml(load_config(args.path, args.set)), end="")
    return 0
