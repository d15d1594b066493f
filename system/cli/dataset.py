"""`qfleet dataset list | info DATASET`: the datasets in a folder, and one dataset's summary."""

from __future__ import annotations

import argparse
import json

from system.cli.record import datasets_dir_option

NAME = "dataset"


def add_parser(commands) -> None:
    parser = commands.add_parser(
        NAME,
        help="list datasets, or describe one",
        description=(
            "`list`: every Minari dataset under the datasets folder (id, episodes, steps, env; from each one's "
            "metadata.json, an unreadable one listed with the reason). `info DATASET`: a dataset (by id, or "
            "its folder as an absolute path or ./PATH): episodes, steps, spaces, return statistics, and how qfleet "
            "recorded it (policy, checkpoint, epsilon, policy versions). Reads JSON and Arrow files only."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the datasets under the datasets folder")
    datasets_dir_option(listing)
    info = actions.add_parser("info", help="one dataset's summary")
    info.add_argument(
        "dataset",
        metavar="DATASET",
        help="dataset id under the datasets folder, or a dataset folder (absolute, or ./PATH)",
    )
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    datasets_dir_option(info)


def run(args: argparse.Namespace) -> int:
    from system.datasets import dataset_info, dataset_listing, datasets_dir

    if args.action == "list":
        found = dataset_listing(args.datasets_dir)
        root = datasets_dir(args.datasets_dir)
        if not found:
            print(f"no datasets in {root}")
            return 0
        print(f"{len(found)} dataset(s) in {root}")
        for entry in found:
            if entry.unreadable:
                print(f"  {entry.dataset:40s} unreadable: {entry.unreadable}")
                continue
            print(f"  {entry.dataset:40s} {entry.episodes:>8,} episodes {entry.steps:>11,} steps  {entry.env_id or ''}")
        return 0
    summary = dataset_info(args.dataset, args.datasets_dir)
    if args.json:
        print(json.dumps(vars(summary), indent=2, default=list))
        return 0
    lines = [
        f"dataset {summary.dataset} at {summary.path}",
        f"  episodes {summary.episodes:,}, steps {summary.steps:,}, {summary.size_mb} MB, format {summary.data_format}",
        f"  observation space {summary.observation_space}",
        f"  action space {summary.action_space}",
    ]
    if summary.returns:
        r = summary.returns
        lines.append(f"  return {r['mean']:.2f} +- {r['std']:.2f} (min {r['min']:g}, max {r['max']:g})")
    if summary.recorded_by:
        by = summary.recorded_by
        lines.append(
            f"  recorded by {by.get('command', '?')}: env {summary.env_id}, policy {json.dumps(by.get('policy'))}"
        )
    if summary.policy_versions is not None:
        lines.append(f"  policy versions {summary.policy_versions[0]}..{summary.policy_versions[1]}")
    if summary.epsilons:
        lines.append(f"  epsilon {', '.join(f'{e:g}' for e in summary.epsilons)}")
    if summary.successes is not None:
        won, said = summary.successes
        lines.append(f"  success {won:,}/{said:,} episodes ({won / said:.2f})")
    print("\n".join(lines))
    return 0
