"""Argument groups shared by several commands, and their conversion to typed specs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from robustlab.cli.spec_args import MODEL_CLI_EXCLUDE, add_spec_options, defer, spec_from_args
from robustlab.errors import UserError

if TYPE_CHECKING:
    from robustlab.data import DataSpec
    from robustlab.models import ModelSpec


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where data sets live (default: $ROBUSTLAB_DATA_DIR, else ~/.cache/robustlab/data)",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The ``data`` group: every ``DataSpec`` field (``--data``, ``--split``, ...) and --data-dir."""

    def add(parser: argparse.ArgumentParser) -> None:
        from robustlab.data import DataSpec

        group = parser.add_argument_group("data")
        add_spec_options(group, DataSpec)
        add_data_dir(group)

    defer(parser, add)


def data_spec_from(args: argparse.Namespace) -> DataSpec:
    from robustlab.data import DataSpec

    return spec_from_args(args, DataSpec)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The ``model`` group: the ``ModelSpec`` fields the data does not fix."""

    def add(parser: argparse.ArgumentParser) -> None:
        from robustlab.models import ModelSpec

        group = parser.add_argument_group("model")
        add_spec_options(group, ModelSpec, exclude=MODEL_CLI_EXCLUDE)

    defer(parser, add)


def model_spec_from(args: argparse.Namespace) -> ModelSpec:
    """The architecture; ``train_run`` fills the class count, channels and size from the data."""
    from robustlab.models import ModelSpec

    return spec_from_args(args, ModelSpec, exclude=MODEL_CLI_EXCLUDE)


def parse_floats(flag: str, text: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got '{text}'") from None
    if count is not None and len(values) != count:
        raise UserError(f"{flag} needs {count} numbers, got {len(values)} in '{text}'")
    return values


def show_progress() -> bool:
    """Progress bars only where a person is watching."""
    return sys.stderr.isatty()
