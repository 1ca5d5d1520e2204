"""``robustlab import MODEL_FILE --out RUN --data NAME``: a foreign model as an ordinary run.

ONNX (``.onnx``), TorchScript (``.pt``) and Keras 3 (``.keras``, legacy ``.h5``) models become a
run directory that ``evaluate``, ``attack``, ``report``, the transfer matrix and studies use like
a trained one. The input contract (size, channels, channel order, pixel scale, mean/std, class
names) is declared here once; what the file itself records is filled in and checked.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from robustlab.cli.common import (
    add_command,
    add_data_args,
    add_device_option,
    data_spec_from,
    parse_floats,
)
from robustlab.errors import UserError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    summary = "turn an ONNX / TorchScript / Keras model into a run directory"
    parser = add_command(subparsers, "import", summary, __doc__)
    parser.add_argument("model_file", type=Path, help="the model file (.onnx, .pt, .keras, .h5)")
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    add_data_args(parser)
    group = parser.add_argument_group("input contract (what the model expects)")
    group.add_argument("--input-size", type=int, help="square input side (default: from the file)")
    group.add_argument(
        "--input-channels", type=int, choices=(1, 3), help="default: from the file, else 3"
    )
    group.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb")
    group.add_argument(
        "--pixel-scale",
        choices=("0-1", "0-255", "-1-1"),
        default="0-1",
        help="pixel range the model was trained on (default 0-1; write --pixel-scale=-1-1)",
    )
    group.add_argument(
        "--mean", help="per-channel mean in the model's pixel scale, e.g. 123.7,116.3,103.5"
    )
    group.add_argument("--std", help="per-channel std in the model's pixel scale")
    group.add_argument("--layout", choices=("nchw", "nhwc"), help="default: from the file")
    names = group.add_mutually_exclusive_group()
    names.add_argument(
        "--labels", type=Path, help="file with one class name per line, in output order"
    )
    names.add_argument("--class-names", help="comma-separated class names in output order")
    add_device_option(parser, "where the imported model is verified")
    parser.add_argument(
        "--strip-softmax",
        action="store_true",
        help="remove the model's final softmax so that attacks see logits",
    )
    parser.set_defaults(func=run)


def declared_classes(args: argparse.Namespace) -> list[str] | None:
    """The model's class names in output order, if the user gave them."""
    if args.class_names:
        return [name.strip() for name in args.class_names.split(",")]
    if args.labels is None:
        return None
    try:
        lines = args.labels.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--labels {args.labels}: {error.strerror or error}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise UserError(f"--labels {args.labels} holds no class names")
    return names


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from robustlab.data import load_splits
    from robustlab.models.foreign import DeclaredInput, import_model, read_foreign

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"--out {args.out} already exists and is not an empty folder")
    declared = DeclaredInput(
        size=args.input_size,
        channels=args.input_channels,
        channel_order=args.channel_order,
        scale=args.pixel_scale,
        mean=parse_floats("--mean", args.mean) if args.mean else None,
        std=parse_floats("--std", args.std) if args.std else None,
        layout=args.layout,
    )
    names = declared_classes(args)
    foreign = read_foreign(args.model_file, declared, strip_softmax=args.strip_softmax)
    spec = data_spec_from(args)
    if names is not None and spec.classes is None:
        spec = dataclasses.replace(spec, classes=tuple(names))  # relabel the data in model order
    if spec.channels is None:
        spec = dataclasses.replace(spec, channels=foreign.contract.channels)
    splits = load_splits(spec, args.data_dir)
    classes = names or [str(name) for name in splits.test.classes]
    if [str(c) for c in splits.test.classes] != classes:
        raise UserError(
            f"the model's classes {classes} differ from the data's "
            f"{list(splits.test.classes)}; select them with --classes"
        )
    config = import_model(
        foreign,
        args.out,
        classes=classes,
        data=dataclasses.asdict(spec),
        data_info=splits.info(),
        input_size=int(splits.test.images.shape[-1]),
        device=args.device,
    )
    foreign = config["foreign"]
    logger.info(
        "imported %s (%s, sha256 %s…) -> %s; input contract %s",
        args.model_file,
        foreign["format"],
        foreign["sha256"][:12],
        args.out,
        foreign["contract"],
    )
    return 0
