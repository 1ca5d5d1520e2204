"""The ``robustlab`` command line.

Each command lives in its own module ``robustlab.cli.<command>`` exposing
``register(subparsers) -> None`` (adds its parser and sets ``func=run``) and
``run(args) -> int``. Modules import torch and friends lazily inside ``run`` so that
``robustlab --help`` stays instant. User errors (``UserError``) print one line and exit 2.

Scale-out: under ``torchrun`` (or ``robustlab --nproc N``, which re-launches the command that
way) a command that sets ``distributed=True`` in its parser defaults joins the process group and
shares the work; any other command runs on rank 0 alone while the other ranks exit at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from robustlab.allocator import reexec_with_tcmalloc
from robustlab.errors import UserError

COMMANDS = ("data", "models", "train", "evaluate", "attack", "report", "run", "import")
MODULES = {"import": "import_"}  # a command named like a Python keyword
EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 with usage on bad arguments; keep that, but as one line of error.

    ``defer(add)``: options added when this parser is first used, not when it is built (the
    spec-generated groups import torch; ``robustlab --help`` must not).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[Callable[[argparse.ArgumentParser], Any]] = []

    def defer(self, add: Callable[[argparse.ArgumentParser], Any]) -> None:
        self._deferred.append(add)

    def complete(self) -> argparse.ArgumentParser:
        """Add the deferred options now (help, parsing, and tests that walk the parser)."""
        while self._deferred:
            self._deferred.pop(0)(self)
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.complete()
        return super().format_help()

    def format_usage(self) -> str:
        self.complete()
        return super().format_usage()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"robustlab: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustlab", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="run the command as N local processes under torch.distributed.run (torchrun); "
        "for multi-node runs call torchrun yourself (docs/DISTRIBUTED.md)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"robustlab.cli.{MODULES.get(name, name)}")
        except ModuleNotFoundError as error:
            if error.name != f"robustlab.cli.{MODULES.get(name, name)}":
                raise
            continue  # command not built yet
        module.register(subparsers)
    from robustlab.cli.track import TRACKED, add_tracking_args

    for name in TRACKED:
        if name in subparsers.choices:
            add_tracking_args(subparsers.choices[name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. ``argv=None`` means a real process: it may restart itself under tcmalloc."""
    # OpenMP threads that spin while waiting are up to 10x slower on a busy machine (measured: a
    # lite0 training batch 4.5 s spinning vs 0.5 s passive with 2 threads beside other jobs).
    # libgomp reads it when torch loads: set before any import of torch and before the restart.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if argv is None:  # ROBUSTLAB_TCMALLOC=0 turns the allocator switch off
        reexec_with_tcmalloc(["-m", "robustlab", *sys.argv[1:]])
        # SIGTERM (timeout, a job scheduler, torchrun stopping the other ranks) unwinds like
        # Ctrl-C: outputs are released, a half-made --overwrite or an empty new folder removed
        signal.signal(signal.SIGTERM, _terminated)
    args = build_parser().parse_args(argv)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # started by torchrun
    rank = int(os.environ.get("RANK", "0")) if launched else 0
    logging.basicConfig(
        # the other ranks repeat rank 0's progress: only their warnings are worth showing
        level=logging.WARNING if rank else logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    try:
        if getattr(args, "device", None) is not None:
            from robustlab.devices import resolve_device

            args.device = str(resolve_device(args.device))
        if getattr(args, "track", None):
            from robustlab.tracking import check_tracker

            check_tracker(args.track, args.track_uri)  # before any work, not after it
        if args.nproc is not None and not launched:
            from robustlab.distributed import launch, strip_nproc

            return launch(args.nproc, strip_nproc(sys.argv[1:] if argv is None else argv))
        if launched and not getattr(args, "distributed", False):
            if rank:
                return 0  # a one-process command: rank 0 alone runs it
            logging.getLogger(__name__).warning(
                "'robustlab %s' runs on one process; the other ranks stay idle", args.command
            )
            code = int(args.func(args) or 0)
        else:
            code = _run_distributed(args) if launched else int(args.func(args) or 0)
        if code == 0 and rank == 0 and getattr(args, "track", None):
            from robustlab.cli.track import track_command

            track_command(args)
        return code
    except UserError as error:
        if launched and _left_for_launcher(str(error)):
            return EXIT_USER_ERROR
        print(f"robustlab: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("robustlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_distributed(args: argparse.Namespace) -> int:
    from robustlab import distributed

    distributed.init_from_env()
    try:
        code = int(args.func(args) or 0)
        # Leave together: a rank tearing down gloo while another still talks to it aborts.
        distributed.barrier()
        return code
    finally:
        distributed.shutdown()


def _left_for_launcher(message: str) -> bool:
    from robustlab.distributed import report_user_error

    return report_user_error(message)
