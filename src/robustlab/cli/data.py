"""``robustlab data``: the named data sets, where they are looked for, and what a split holds."""

from __future__ import annotations

import argparse
import json

from robustlab.cli.common import add_data_dir
from robustlab.cli.spec_args import add_spec_options, defer, spec_from_args

INFO_FIELDS = ("task", "seed")  # DataSpec options of 'data info' and 'data prepare'
PREPARE_FIELDS = ("image_size", "on_corrupt")


def _data_spec() -> type:
    from robustlab.data import DataSpec

    return DataSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="list data sets or describe one")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="named data sets and whether they are present")
    add_data_dir(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    info = actions.add_parser("info", help="split sizes, classes and image shape of a data set")
    info.add_argument("name", help="data set name or path")
    defer(info, lambda parser: add_spec_options(parser, _data_spec(), fields=INFO_FIELDS))
    add_data_dir(info)
    prepare = actions.add_parser(
        "prepare",
        help="decode an image folder once into a prepared cache that later runs stream from",
        description="Decode (and resize) an image folder once into memory-mapped uint8 shards "
        "with a manifest; train/attack/evaluate on the same folder and --image-size then read "
        "the cache. Run again to resume after a kill, or to rebuild after the folder changed.",
    )
    prepare.add_argument("name", help="path of an image folder (class sub-folders)")
    defer(prepare, lambda parser: add_spec_options(parser, _data_spec(), fields=PREPARE_FIELDS))
    prepare.add_argument("--workers", type=int, default=None, help="decoding processes (cores)")
    add_data_dir(prepare)
    parser.set_defaults(func=run)


def run_prepare(args: argparse.Namespace) -> int:
    """``robustlab data prepare PATH``: build or resume the folder's prepared cache."""
    from robustlab.data import DataSpec
    from robustlab.data.loader import _find_path
    from robustlab.data.prepared import prepare_folder
    from robustlab.data.registry import canonical_name
    from robustlab.errors import UserError

    spec = spec_from_args(args, DataSpec, fields=PREPARE_FIELDS, name=args.name)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if canonical_name(spec.name) is not None:
        print(f"{spec.name} is stored as arrays already: nothing to prepare")
        return 0
    from robustlab.data.registry import resolve_data_dir
    from robustlab.data.tarshards import find_shards

    if find_shards(spec.name, resolve_data_dir(args.data_dir)) is not None:
        print(
            f"{spec.name} is tar shards, read by offset and decoded per batch: nothing to prepare"
        )
        return 0
    path = _find_path(spec.name, args.data_dir)
    if not path.is_dir() or (path / "images.npy").exists():
        print(f"{path} is an array source (read by row or in memory): nothing to prepare")
        return 0
    folder = prepare_folder(path, spec.image_size, spec.on_corrupt, args.workers)
    print(f"prepared {path} in {folder}")
    return 0


def run(args: argparse.Namespace) -> int:
    from robustlab.data import DataSpec, dataset_info, list_datasets, resolve_data_dir

    if args.action == "prepare":
        return run_prepare(args)
    if args.action == "info":
        spec = spec_from_args(args, DataSpec, fields=INFO_FIELDS, name=args.name)
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
