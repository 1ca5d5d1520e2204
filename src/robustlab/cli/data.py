"""``robustlab data``: the named data sets, where they are looked for, and what a split holds."""

from __future__ import annotations

import argparse
import json

from robustlab.cli.common import add_data_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="list data sets or describe one")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="named data sets and whether they are present")
    add_data_dir(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    info = actions.add_parser("info", help="split sizes, classes and image shape of a data set")
    info.add_argument("name", help="data set name or path")
    info.add_argument("--task", default=None)
    info.add_argument("--split-seed", type=int, default=0)
    add_data_dir(info)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.data import DataSpec, dataset_info, list_datasets, resolve_data_dir

    if args.action == "info":
        spec = DataSpec(name=args.name, task=args.task, seed=args.split_seed)
        print(json.dumps(dataset_info(spec, args.data_dir), indent=1))
        return 0
    rows = list_datasets(args.data_dir)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
        return 0
    print(f"data directory: {resolve_data_dir(args.data_dir)}")
    print(f"{'name':<20} {'present':<8} {'tasks (classes)':<32} description")
    for row in rows:
        tasks = ", ".join(f"{task} ({n})" for task, n in row.tasks.items())
        present = "yes" if row.present else ("download" if row.downloadable else "no")
        print(f"{row.name:<20} {present:<8} {tasks:<32} {row.description}")
    return 0
