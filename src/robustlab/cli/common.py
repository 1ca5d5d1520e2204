"""Argument groups shared by several commands, and their conversion to typed specs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
    group = parser.add_argument_group("data")
    group.add_argument("--data", required=True, help="data set name or path (see 'robustlab data list')")
    group.add_argument("--task", default=None, help="task of a named data set (e.g. unhealthy, disease)")
    group.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    group.add_argument("--channels", type=int, choices=(1, 3), default=None, help="force grey or RGB")
    group.add_argument("--classes", default=None, help="comma-separated class subset (names or indices)")
    group.add_argument("--limit", type=int, default=None, help="use at most this many images")
    group.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions, or 'official' (MNIST, Fashion-MNIST)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the split shuffle")
    group.add_argument("--stratify", action="store_true", help="keep class proportions in every split")
    add_data_dir(group)


def data_spec_from(args: argparse.Namespace) -> DataSpec:
    from robustlab.data import DataSpec

    classes = None
    if args.classes:
        classes = tuple(int(c) if c.strip().isdigit() else c.strip() for c in args.classes.split(","))
    return DataSpec(
        name=args.data,
        task=args.task,
        image_size=args.image_size,
        channels=args.channels,
        classes=classes,
        split="official" if args.split == "official" else parse_floats("--split", args.split, count=3),
        seed=args.split_seed,
        stratify=args.stratify,
        limit=args.limit,
    )


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="architecture (see 'robustlab models')")
    group.add_argument(
        "--pretrained",
        default="none",
        help="none | imagenet (online) | offline (tf_efficientnet_lite0) | path to a weights file",
    )
    group.add_argument("--resize-to", type=int, default=None, help="resize inside the model")
    group.add_argument("--drop-rate", type=float, default=0.0, help="dropout before the head")


def model_spec_from(args: argparse.Namespace) -> ModelSpec:
    from robustlab.models import ModelSpec

    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    return ModelSpec(
        arch=args.model,
        num_classes=2,  # replaced by the data's class count
        pretrained=pretrained,
        resize_to=args.resize_to,
        drop_rate=args.drop_rate,
    )


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
