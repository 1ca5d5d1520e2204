"""``robustlab run STUDY``: reproduce a study end to end (resumable), with a report."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from robustlab.cli.common import add_data_dir, add_device_option, show_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a study (a preset such as 'leaf', or a YAML file) and write its report",
        description="Run a study end to end: train its models, attack them, and write RUN_DIR "
        "(config.yaml, a folder per step, results.json, report.html). Run the same command "
        "again after a crash or Ctrl-C to continue where it stopped.",
    )
    parser.add_argument("study", nargs="?", help="preset name (see --list) or a study YAML file")
    parser.add_argument(
        "--out", type=Path, default=None, help="run directory (default runs/<study>)"
    )
    add_data_dir(parser)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, repeatable: data.limit=500, models.finetune.epochs=2, "
        "models.*.epochs=1, attacks.eps=[0.01,0.03] (values are YAML)",
    )
    parser.add_argument("--restart", action="store_true", help="discard an existing run in --out")
    add_device_option(parser, "where every step trains and attacks")
    parser.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    parser.add_argument(
        "--show-config", action="store_true", help="print the resolved config and exit"
    )
    parser.set_defaults(func=run, distributed=True)  # every rank runs the steps (see runner)


def run(args: argparse.Namespace) -> int:
    from robustlab.cli.track import live_tracking, study_step_logger
    from robustlab.distributed import is_main, on_main
    from robustlab.errors import UserError
    from robustlab.outdir import check_writable, claim_output
    from robustlab.studies import list_presets, load_study, resolve_data, run_study
    from robustlab.studies.config import dump_yaml, to_plain

    if args.list:
        for name, title in list_presets().items() if is_main() else ():
            print(f"{name:28s} {title}")
        return 0
    if not args.study:
        raise UserError("name a study preset or YAML file (see 'robustlab run --list')")
    study = load_study(args.study, args.overrides)
    if args.show_config:
        print(dump_yaml(to_plain(study.config)) if is_main() else "", end="")
        return 0
    out: Path = args.out or Path("runs") / study.name
    args.out = out  # where --track finds the results
    # under torchrun rank 0 checks, fetches the data and holds the lock; the others follow
    on_main(lambda: check_writable(out))
    study = on_main(lambda: resolve_data(study, args.data_dir))
    with contextlib.ExitStack() as held:
        on_main(lambda: held.enter_context(claim_output(out)))  # one lock, rank 0's
        with live_tracking(args, out) as tracker:
            results = run_study(
                study,
                out,
                data_dir=args.data_dir,
                restart=args.restart,
                progress=show_progress(),
                observer=study_step_logger(tracker, out),  # --track: each step as it finishes
                on_epoch=tracker.log_study_epoch if tracker else None,  # and each training epoch
                device=args.device,
            )
    if not is_main():
        return 0
    summary = study.definition.summary(study.config, results["steps"])
    print(
        json.dumps({"run_dir": str(out), "report": str(out / "report.html"), **summary}, indent=1)
    )
    return 0
