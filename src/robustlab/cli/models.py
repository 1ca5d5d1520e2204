"""``robustlab models``: the architectures, and which have pretrained weights offline."""

from __future__ import annotations

import argparse
import dataclasses
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list architectures and their offline weights")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.models import ANY_TIMM_NOTE, list_architectures

    rows = list_architectures()
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=1))
        return 0
    print(f"{'architecture':<24} {'family':<34} {'offline weights':<16} {'input':<6} mean / std")
    for row in rows:
        stats = f"{_fmt(row.mean)} / {_fmt(row.std)}"
        offline = "yes (imagenet)" if row.offline_weights else "no"
        print(f"{row.name:<24} {row.family:<34} {offline:<16} {row.input_size:<6} {stats}")
    print(f"\n{ANY_TIMM_NOTE}")
    return 0


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"
