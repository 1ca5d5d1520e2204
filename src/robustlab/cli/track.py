"""``--track tensorboard|mlflow`` for train, evaluate, attack and run (not a command itself).

After a tracked command succeeds, its output folder's result files are logged (see
``robustlab.tracking``); which folder that is follows each command's own ``--out`` defaults.
``train`` and ``run`` also log while they work (``live_tracking``): each epoch as it ends, each
study step as it finishes, into the same tracker that the result files then complete.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robustlab.studies.runner import Step, StepObserver
    from robustlab.tracking import LiveTracker

TRACKED = ("train", "evaluate", "attack", "run")


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--track",
        choices=("tensorboard", "mlflow"),
        default=None,
        help="also log settings, curves, flags and figures to TensorBoard "
        "(OUT/tensorboard) or MLflow (needs the 'track' extra)",
    )
    group.add_argument(
        "--track-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)",
    )


def tracked_output(args: argparse.Namespace) -> tuple[Path, tuple[str, ...] | None]:
    """The folder a finished command wrote, and which of its result files are its own."""
    if args.command == "evaluate":
        if args.transfer or args.attack:
            from robustlab.attacks import attack_class

            name = attack_class(args.attack).name
            default = (
                args.transfer[0] / "transfer" if args.transfer else args.run_dir / "robustness"
            ) / name
            return args.out or default, None
        return args.run_dir, ("metrics.json",)  # the run folder also holds the training's files
    if args.command == "run":
        return args.out, None  # run_study resolves the default into args.out
    return args.out, None


def track_command(args: argparse.Namespace) -> None:
    from robustlab.tracking import track_folder

    folder, only = tracked_output(args)
    track_folder(
        args.track,
        folder,
        f"{args.command} {folder.name}",
        args.track_uri,
        only=only,
        tracker=getattr(args, "live_tracker", None),
    )


@contextmanager
def live_tracking(args: argparse.Namespace, folder: Path) -> Iterator[LiveTracker | None]:
    """With ``--track``, on rank 0: a tracker that the command logs to while it works.

    When the command succeeds the tracker stays open for ``track_command`` (run by ``main``),
    which adds the result files and closes it: one TensorBoard folder or MLflow run per
    command. When it fails, the tracker is closed as failed.
    """
    from robustlab import distributed

    if not getattr(args, "track", None) or not distributed.is_main():
        yield None
        return
    from robustlab.tracking import LiveTracker, open_tracker

    name = f"{args.command} {Path(args.out or folder).name}"
    tracker = LiveTracker(lambda: open_tracker(args.track, folder, name, args.track_uri))
    try:
        yield tracker
    except BaseException:
        tracker.close(failed=True)
        raise
    args.live_tracker = tracker


def study_step_logger(tracker: LiveTracker | None, run_dir: Path) -> StepObserver | None:
    """A study runner observer that logs each step's recorded result as the step finishes."""
    if tracker is None:
        return None
    from robustlab.io import read_json
    from robustlab.studies.runner import DONE

    def observe(event: str, step: Step, index: int, total: int) -> None:
        if event == "done" and step.record:
            tracker.log_study_step(step.name, read_json(run_dir / step.name / DONE))

    return observe
