"""`qfleet report RUN_DIR`: learning curve and summary of a run."""

from __future__ import annotations

import argparse

NAME = "report"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="learning curve (PNG) and summary table of a run",
        description=(
            "Rebuild RUN_DIR/learning_curve.png (return vs env steps and vs wall time: training episodes "
            "and evaluations) and RUN_DIR/summary.md from RUN_DIR/metrics.jsonl; print the summary. "
            "Works on finished and running runs."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `qfleet train` run directory")


def run(args: argparse.Namespace) -> int:
    from system.observe.report import main_report

    return main_report(args.run_dir)
