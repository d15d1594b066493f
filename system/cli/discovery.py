"""`qfleet discovery`: Prometheus HTTP service discovery of every component's /metrics."""

from __future__ import annotations

import argparse

NAME = "discovery"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="Prometheus HTTP service discovery of every component's /metrics (from Redis)",
        description=(
            "Serve Prometheus' http_sd at http://HOST:PORT/targets: the /metrics address of the driver, "
            "learner, every live shard and every reporting actor of the runs registered in a Redis, "
            "labelled job, run, shard and actor. deploy/prometheus/prometheus.yml points at it. Give "
            "--redis-url (every run there, or --run NAME ...) or a `qfleet train` RUN_DIR (that run). The Redis "
            "password: a local qfleet train's saved one (private secrets file), else QFLEET_REDIS_PASSWORD."
        ),
    )
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a running `qfleet train` run directory")
    parser.add_argument("--redis-url", help="the Redis the runs register in, e.g. redis://redis:6379/0")
    parser.add_argument("--run", action="append", default=[], metavar="NAME", help="only this run (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9101, help="port (default: 9101; 0: any free port)")


def run(args: argparse.Namespace) -> int:
    from system.observe.discovery_server import main_discovery

    return main_discovery(args.run_dir, args.redis_url, args.run, args.host, args.port)
