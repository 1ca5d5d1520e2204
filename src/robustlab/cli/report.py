"""``robustlab report DIR``: rebuild ``DIR/report.html`` from the result files below DIR.

Reads only JSON (and the example PNGs): ``metrics.json``, ``curves.json`` (with its records,
examples and saved adversarials) and ``transfer.json``, wherever they sit below DIR, plus the
run's ``config.json`` when DIR is a run directory. No model is loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="rebuild report.html from a run or results directory (JSON and PNG only)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("directory", type=Path, help="run directory or results directory")
    parser.add_argument(
        "--link-images",
        action="store_true",
        help="link the PNGs by relative path instead of embedding them",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robustlab.reporting import build_report

    path = build_report(args.directory, embed_images=not args.link_images)
    print(f"wrote {path}")
    return 0
