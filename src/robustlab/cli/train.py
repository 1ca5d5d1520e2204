"""``robustlab train``: build a classifier by transfer learning and save it as a run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from robustlab.cli.common import (
    add_data_args,
    add_device_option,
    add_model_args,
    data_spec_from,
    model_spec_from,
    show_progress,
)
from robustlab.cli.spec_args import add_spec_options, defer, spec_from_args
from robustlab.errors import UserError
from robustlab.outdir import OutputLock, Replacement, claim


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a classifier (frozen / finetune / scratch) and save it",
        description="Train a classifier and write RUN_DIR (model.safetensors, config.json, "
        "history.json). Run the same command again after a crash to resume.",
    )
    add_data_args(parser)
    add_model_args(parser)
    defer(parser, _add_training_args)
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run")
    add_device_option(parser, "where the model trains")
    parser.set_defaults(func=run, distributed=True)  # DDP under torchrun / --nproc


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    from robustlab.training import TrainSpec

    group = parser.add_argument_group("training")
    add_spec_options(group, TrainSpec)
    group.add_argument("--defence", default=None, help="adversarial defence (see --defence list)")
    group.add_argument(
        "--defence-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="defence setting, repeatable (e.g. eps=8/255, multiplier=0.2)",
    )


def run(args: argparse.Namespace) -> int:
    from robustlab import distributed
    from robustlab.cli.track import live_tracking
    from robustlab.training import TrainSpec, train_run

    config = spec_from_args(args, TrainSpec)
    data = data_spec_from(args)
    model = model_spec_from(args)
    objective, defence = None, None
    if args.defence:
        from robustlab.defences import build_defence

        objective, defence = build_defence(args.defence, args.defence_opt)
    out: Path = args.out
    lock, replacement = (None, None)
    if distributed.is_main():
        lock, replacement = _prepare_run_dir(out, args.overwrite)
    try:
        # every rank trains into the folder rank 0 chose (the run itself, or its replacement)
        work_dir = distributed.broadcast_object(replacement.staging if replacement else out)
        with live_tracking(args, work_dir) as tracker:  # --track: each epoch as it ends
            metrics = train_run(
                work_dir,
                data,
                model,
                config,
                objective=objective,
                defence=defence,
                data_dir=args.data_dir,
                progress=show_progress(),
                device=args.device,
                on_epoch=tracker.log_epoch if tracker else None,
            )
        if replacement is not None:
            replacement.commit()  # the old run is replaced only by a finished one
    except BaseException:
        _let_go(lock, replacement, failed=True)
        raise
    _let_go(lock, replacement, failed=False)
    if distributed.is_main():
        print(json.dumps({"run_dir": str(out), **metrics}, indent=1))
    return 0


def _let_go(lock: OutputLock | None, replacement: Replacement | None, failed: bool) -> None:
    if replacement is not None:
        replacement.abandon()
    if lock is not None:
        lock.release(failed=failed)


def _prepare_run_dir(out: Path, overwrite: bool) -> tuple[OutputLock, Replacement | None]:
    """Lock ``out``; a finished run is never clobbered by accident, an unfinished one resumed.

    With ``--overwrite`` over an existing run, the new run is trained beside it and swapped in
    when finished (``Replacement``): an error or Ctrl-C leaves the old run as it was.
    """
    from robustlab.training.loop import STATE_FILE

    Replacement(out).recover()
    lock = claim(out)
    holds_run = any((out / name).exists() for name in ("model.safetensors", STATE_FILE))
    # the state is removed last: while it is there the run is unfinished (a kill may have cut
    # it between its final files), and the same command completes it
    finished = (out / "model.safetensors").exists() and not (out / STATE_FILE).exists()
    if finished and not overwrite:
        lock.release(failed=True)
        raise UserError(f"{out} already holds a trained model; pass --overwrite to replace it")
    if not (overwrite and holds_run):
        return lock, None
    replacement = Replacement(out)
    try:
        replacement.start()
    except BaseException:
        lock.release(failed=True)
        raise
    return lock, replacement
