"""``--track tensorboard|mlflow`` for train, evaluate, attack and run (not a command itself).

After a tracked command succeeds, its output folder's result files are logged (see
``robustlab.tracking``); which folder that is follows each command's own ``--out`` defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TRACKED = ("train", "evaluate", "attack", "run")


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument("--track", choices=("tensorboard", "mlflow"), default=None,
                       help="also log settings, curves, flags and figures to TensorBoard "
                       "(OUT/tensorboard) or MLflow (needs the 'track' extra)")
    group.add_argument("--track-uri", default=None, metavar="URI",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)")


def tracked_output(args: argparse.Namespace) -> tuple[Path, tuple[str, ...] | None]:
    """The folder a finished command wrote, and which of its result files are its own."""
    if args.command == "evaluate":
        if args.transfer or args.attack:
            from robustlab.attacks import attack_class

            name = attack_class(args.attack).name
            default = (args.transfer[0] / "transfer" if args.transfer
                       else args.run_dir / "robustness") / name
            return args.out or default, None
        return args.run_dir, ("metrics.json",)  # the run folder also holds the training's files
    if args.command == "run":
        return args.out, None  # run_study resolves the default into args.out
    return args.out, None


def track_command(args: argparse.Namespace) -> None:
    from robustlab.tracking import track_folder

    folder, only = tracked_output(args)
    track_folder(args.track, folder, f"{args.command} {folder.name}", args.track_uri,
                 only=only)
