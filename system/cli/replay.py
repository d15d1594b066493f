"""`qfleet replay serve`: one standalone replay shard; `qfleet replay credentials`: a run's token and certificate."""

from __future__ import annotations

import argparse

from actors import EnvConfig
from replay import ReplayConfig
from system.cli.options import config_options, flag_overrides, insecure_option
from system.config import add_arguments, load_config

NAME = "replay"


def add_parser(commands) -> None:
    parser = commands.add_parser(NAME, help="replay shard commands", description="Replay shard commands.")
    subcommands = parser.add_subparsers(dest="replay_command", metavar="SUBCOMMAND", required=True)
    serve = subcommands.add_parser(
        "serve",
        help="run one standalone replay shard",
        description=(
            "Run one replay shard (gRPC) until SIGTERM or Ctrl-C. The item spec comes from --spec, or "
            "else from the config's environment (env.id). With replay.checkpoint_dir set, the shard "
            "restores the newest good checkpoint at start and writes one at shutdown. It serves TLS and "
            "requires the run's token on every call, both from QFLEET_REPLAY_TOKEN, QFLEET_REPLAY_TLS_CERT "
            "and QFLEET_REPLAY_TLS_KEY (see `qfleet replay credentials`), or plaintext with --insecure. Prints "
            "'qfleet replay: shard N serving at HOST:PORT; metrics URL' once serving."
        ),
    )
    config_options(serve)
    insecure_option(serve, "serve")
    serve.add_argument(
        "--spec", metavar="FILE", help='JSON/YAML spec file: {"obs": {"shape": [4], "dtype": "float32"}, ...}'
    )
    serve.add_argument(
        "--env-id",
        dest="env.id",
        metavar="ID",
        help=f"gymnasium id whose transitions the shard stores (default: {EnvConfig.id})",
    )
    serve.add_argument(
        "--report-every", type=float, default=30.0, metavar="S", help="seconds between progress lines (default: 30)"
    )
    add_arguments(serve, ReplayConfig, "replay")

    credentials = subcommands.add_parser(
        "credentials",
        help="make a run's replay token and TLS certificate",
        description=(
            "Write a fresh replay token, a self-signed TLS certificate and its private key into DIR "
            "(token, cert.pem, key.pem; the folder 0700, the files 0600) and print the `export` lines "
            "that hand them to `qfleet replay serve`, `qfleet learner run` and `qfleet actors run`. The "
            "token itself is never printed. To rotate: make a new set and restart every service with it."
        ),
    )
    credentials.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the files: created 0700 if missing; an existing one must be yours, closed to others, and hold no credentials",
    )


def run(args: argparse.Namespace) -> int:
    if args.replay_command == "credentials":
        from system.services.credentials import main_credentials

        return main_credentials(args.out)
    from system.services.shard import main_serve

    config = load_config(args.config, args.set, flag_overrides(args))
    return main_serve(config, args.spec, args.report_every, args.insecure)
