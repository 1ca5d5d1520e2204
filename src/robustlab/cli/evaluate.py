"""``robustlab evaluate``: clean accuracy, robustness curves with sanity flags, transfer matrices.

Three forms:

* ``robustlab evaluate RUN_DIR [--split test|val|train|all]``: clean accuracy, per-class
  accuracy and confusion matrix per split, merged into ``RUN_DIR/metrics.json``;
* ``robustlab evaluate RUN_DIR --attack fgsm --eps 0.01:0.05:5 [--surrogate OTHER_RUN ...]
  [--noise]``: white-box, black-box (per surrogate) and noise curves, per-sample records,
  example figures, saved adversarials, sanity flags and ``report.html`` in
  ``--out`` (default ``RUN_DIR/robustness/<attack>``);
* ``robustlab evaluate --transfer RUN1 RUN2 ... --attack pgd --eps 0.03 --out DIR``: the
  N x N transfer matrix on the first run's test split, as JSON, heat map and report.

Runs must share classes and input size to be compared; the data split is rebuilt from the
(first) run's ``config.json``. Attack names, settings and epsilons are checked before any model
or data is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from robustlab.cli import common
from robustlab.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
# options that mean nothing without --attack (besides the attack's own settings)
ROBUSTNESS_OPTIONS = ("surrogate", "noise", "settings", "target_class", "per_eps")


def register(subparsers: argparse._SubParsersAction) -> None:
    summary = "clean accuracy, robustness curves with sanity checks, transfer matrix, report"
    parser = common.add_command(subparsers, "evaluate", summary, __doc__)
    parser.add_argument("run_dir", nargs="?", type=Path, help="run directory (robustlab train)")
    parser.add_argument(
        "--split", default="test", choices=(*SPLITS, "all"), help="data split (test)"
    )
    common.add_data_dir(parser)
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch (128)")
    common.add_device_option(parser)
    group = parser.add_argument_group("robustness (with --attack)")
    group.add_argument(
        "--surrogate",
        action="append",
        default=[],
        type=Path,
        metavar="RUN_DIR",
        help="black-box: craft on this run's model, score on the target (repeatable)",
    )
    group.add_argument("--noise", action="store_true", help="add the random-noise baseline curve")
    group.add_argument("--target-class", metavar="CLASS", help="targeted attack (index or name)")
    group.add_argument(
        "--per-eps",
        action="store_true",
        help="white-box: attack afresh at every eps (leaf study) instead of the worst case",
    )
    group.add_argument("--limit", type=int, help="use only the first N images of the split")
    group.add_argument("--examples", type=int, default=4, help="example figures (4)")
    group.add_argument(
        "--save-adversarials",
        type=int,
        default=32,
        metavar="N",
        help="save the first N white-box adversarials as safetensors + PNG (32)",
    )
    group.add_argument(
        "--no-unbounded-check",
        action="store_true",
        help="skip the PGD eps=1 gradient-masking check (the one costly sanity check)",
    )
    group.add_argument("--out", type=Path, help="results directory")
    group.add_argument(
        "--transfer", nargs="+", type=Path, metavar="RUN_DIR", help="transfer matrix over runs"
    )
    common.add_attack_options(parser, group)
    parser.set_defaults(func=run, distributed=True)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if (args.attack or args.transfer) and args.split == "all":
        raise UserError("--split all is for clean accuracy; attack one split (test, val, train)")
    if args.transfer:
        if args.run_dir is not None:
            raise UserError("give either RUN_DIR or --transfer RUN1 RUN2 ..., not both")
        if len(args.transfer) < 2:
            raise UserError(f"--transfer needs at least 2 runs, got {len(args.transfer)}")
        if not is_main():  # the transfer matrix is not sharded: rank 0 alone runs it
            return 0
        with claim_results(args, args.transfer[0], "transfer"):
            return run_transfer(args)
    if args.run_dir is None:
        raise UserError("RUN_DIR is required (or --transfer RUN1 RUN2 ...)")
    if args.attack:
        if args.examples < 0 or args.save_adversarials < 0:
            raise UserError("--examples and --save-adversarials must be >= 0")
        with claim_results(args, args.run_dir, "robustness"):
            return run_robustness(args)
    from robustlab.cli.spec_args import attack_settings_from_args

    given = [name for name in ROBUSTNESS_OPTIONS if getattr(args, name) not in (None, False, [])]
    used = [*given, *attack_settings_from_args(args)]
    if used or args.eps:
        shown = "--" + ", --".join(n.replace("_", "-") for n in used or ["eps"])
        raise UserError(f"{shown} need(s) --attack")
    if not is_main():  # clean accuracy is one pass: rank 0 alone runs it
        return 0
    with claim_results(args, args.run_dir, None):
        return run_clean(args)


def is_main() -> bool:
    """Rank 0 under torchrun (or the only process): the one that writes and prints."""
    from robustlab import distributed

    return distributed.is_main()


def claim_results(args: argparse.Namespace, run_dir: Path, kind: str | None) -> Any:
    """Lock the folder the command writes (made and probed first), before any model or data.

    ``kind``: the default results folder ``RUN_DIR/<kind>/<attack>``; None: ``RUN_DIR`` itself
    (clean metrics). A missing or broken run is left for ``load_run`` to report.
    """
    import contextlib

    from robustlab.outdir import claim_output

    if kind is None:
        folder, flag = run_dir, "RUN_DIR"
    else:
        attack, _ = build_attack(args)  # bad settings are reported before any folder is made
        folder, flag = args.out or run_dir / kind / attack.name, "--out"
    if not (run_dir / "model.safetensors").is_file() or not is_main():
        return contextlib.nullcontext()  # only rank 0 writes, so only it claims the folder
    return claim_output(folder, flag)


# ----------------------------------------------------------------------------- shared steps


@dataclasses.dataclass
class LoadedRun:
    name: str
    path: Path
    model: Any  # robustlab.models.ImageClassifier, eval mode
    config: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.config.get("classes", [])]


def load_run(path: Path, device: str, name: str | None = None) -> LoadedRun:
    """The run's model in eval mode on ``device`` and its config (UserError for a broken run)."""
    from robustlab.models import load_checkpoint

    model, config = load_checkpoint(path)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as error:  # unknown or unavailable device
        raise UserError(f"--device {device}: {str(error).splitlines()[0]}") from None
    return LoadedRun(name or path.resolve().name, path, model.eval(), config)


def load_split(run: LoadedRun, split: str, data_dir: Path | None) -> Any:
    """The run's data splits, rebuilt from its config (``DataSplits``)."""
    from robustlab.data import DataSpec, load_splits

    if "data" not in run.config:
        raise UserError(f"{run.path}/config.json has no 'data' entry to rebuild the data split")
    return load_splits(DataSpec(**run.config["data"]), data_dir)


def check_same_task(reference: LoadedRun, other: LoadedRun) -> None:
    """Two runs can only be compared on one test set if they share classes and input shape."""
    if other.classes != reference.classes:
        raise UserError(
            f"run {other.path} was trained on classes {other.classes} but {reference.path} on "
            f"{reference.classes}; adversarials can only be scored within one label space"
        )
    shape = [(run.model.spec.in_chans, run.model.spec.input_size) for run in (reference, other)]
    if shape[0] != shape[1]:
        (c0, s0), (c1, s1) = shape
        raise UserError(
            f"run {other.path} takes {c1}x{s1}x{s1} images but {reference.path} takes "
            f"{c0}x{s0}x{s0}; retrain it on the same input size"
        )


def unique_names(paths: list[Path]) -> list[str]:
    """Run directory names, disambiguated by their full path when two share a name."""
    names = [path.resolve().name for path in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def build_attack(args: argparse.Namespace) -> tuple[Any, list[float]]:
    """The attack (at the largest epsilon) and the sorted epsilons, validated without I/O."""
    attack, epsilons = common.attack_from_args(args)
    return attack, sorted(epsilons)


def run_clean(args: argparse.Namespace) -> int:
    """Clean metrics per split, merged into ``RUN_DIR/metrics.json`` (other splits kept)."""
    from robustlab.evaluation import clean_metrics
    from robustlab.io import read_json, write_json
    from robustlab.reporting.results import METRICS_FILE, METRICS_FORMAT
    from robustlab.schemas import MetricsFile, validate_record

    run = load_run(args.run_dir, args.device)
    splits = load_split(run, args.split, args.data_dir)
    names = SPLITS if args.split == "all" else (args.split,)
    path = run.path / METRICS_FILE
    previous = read_json(path, "metrics file") if path.is_file() else {}
    results = {}
    if isinstance(previous, dict) and previous.get("format") == METRICS_FORMAT:
        results = dict(validate_record(previous, MetricsFile, str(path))["splits"])
    for name in names:
        results[name] = clean_metrics(run.model, getattr(splits, name), args.batch_size)
        print(f"{name}: accuracy {results[name]['accuracy']:.4f} ({results[name]['n']} images)")
    write_json(
        path,
        {
            "format": METRICS_FORMAT,
            "format_version": 1,
            "run_dir": str(run.path),
            "model": run.config["model"],
            "data": run.config.get("data"),
            "classes": run.classes,
            "splits": dict(sorted(results.items(), key=lambda item: SPLITS.index(item[0]))),
            "settings": {"batch_size": args.batch_size, "data_dir": args.data_dir},
        },
    )
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- robustness


@dataclasses.dataclass
class AttackImages:
    """The images an evaluation attacks: a streamed split stays streamed (positions only)."""

    x: Any  # (N, C, H, W) tensor or StreamedImages
    y: Any  # (N,) labels
    indices: Any  # (N,) positions in the split
    target_labels: Any  # (N,) the class of a targeted attack, else None
    classes: list[str]


def attack_images(args: argparse.Namespace, target: LoadedRun) -> AttackImages:
    """The split's first ``--limit`` images, without those of ``--target-class`` if given."""
    import torch

    from robustlab.data.split import class_index
    from robustlab.data.stream import take

    imageset = getattr(load_split(target, args.split, args.data_dir), args.split)
    classes = target.classes or list(imageset.classes)
    x, y = take(imageset.images, slice(args.limit)), imageset.labels[: args.limit]
    indices = torch.arange(len(y))
    target_labels = None
    if args.target_class is not None:
        wanted = class_index(args.target_class, classes, "--target-class")
        keep = y != wanted  # a targeted attack on an image of the target class is moot
        x, y, indices = take(x, keep), y[keep], indices[keep]
        target_labels = torch.full_like(y, wanted)
    if len(y) == 0:
        raise UserError(f"no images to attack in split '{args.split}'")
    return AttackImages(x, y, indices, target_labels, classes)


def run_robustness(args: argparse.Namespace) -> int:
    """Curves (white-box, black-box per surrogate, noise), records, examples, flags, report.

    Under torchrun every rank attacks its own batches (``sweep_chunks``) and rank 0 writes.
    """
    from robustlab.evaluation import robustness_curves
    from robustlab.evaluation.robustness import CurveRequest

    attack, epsilons = build_attack(args)
    names = unique_names([args.run_dir, *args.surrogate])
    target = load_run(args.run_dir, args.device, names[0])
    surrogates = [
        load_run(path, args.device, name)
        for path, name in zip(args.surrogate, names[1:], strict=True)
    ]
    for surrogate in surrogates:
        check_same_task(target, surrogate)
    images = attack_images(args, target)
    n = len(images.y)
    kept = range(min(n, max(args.save_adversarials, 8 * args.examples)))
    if is_main():
        shown = ", ".join(f"{eps:.4g}" for eps in epsilons)
        print(f"{attack.name} on {target.name}: {n} {args.split} images, eps {shown}")
    request = CurveRequest(
        attack,
        tuple(epsilons),
        target_name=target.name,
        noise=args.noise,
        worst_case=not args.per_eps,
        batch_size=args.batch_size,
        keep_examples=tuple(kept),
        unbounded_check=not args.no_unbounded_check,
        seed=common.global_seed(attack),
    )
    result = robustness_curves(
        target.model,
        images.x,
        images.y,
        request,
        surrogate_models={s.name: s.model for s in surrogates},
        target_classes=images.target_labels,
    )
    target_labels = images.target_labels
    result.settings |= {
        "run_dir": str(args.run_dir),
        "surrogate_runs": {s.name: str(s.path) for s in surrogates},
        "split": args.split,
        "limit": args.limit,
        "target_class": None if target_labels is None else images.classes[int(target_labels[0])],
        "data": target.config.get("data"),
    }
    for run in [target, *surrogates]:
        result.models[run.name] |= {"run_dir": str(run.path), "arch": run.model.spec.arch}
    if is_main():
        out = args.out or args.run_dir / "robustness" / attack.name
        write_robustness(args, out, result, target, images)
    return 0


def write_robustness(
    args: argparse.Namespace, out: Path, result: Any, target: LoadedRun, images: AttackImages
) -> None:
    """``--out``: curves, records, examples, adversarials and the report; the curves printed."""
    from robustlab.evaluation import predict_logits, write_robustness_outputs
    from robustlab.evaluation.outputs import OutputRequest
    from robustlab.evaluation.records import EvaluatedImages
    from robustlab.reporting import build_report

    clean_logits = predict_logits(target.model, images.x, args.batch_size)
    evaluated = EvaluatedImages(images.x, images.y, clean_logits, images.classes, images.indices)
    outputs = OutputRequest(
        examples=args.examples,
        adversarials=args.save_adversarials,
        show_filter=images.target_labels is not None,
        batch_size=args.batch_size,
    )
    write_robustness_outputs(out, result, target.model, evaluated, outputs)
    report = build_report(out)
    _print_curves(result.to_dict())
    print(f"wrote {out} (open {report})")


def _print_curves(data: dict[str, Any]) -> None:
    header = f"{'eps':>8} {'/255':>6} " + " ".join(f"{c['label'][:28]:>28}" for c in data["curves"])
    print(header)
    for i, eps in enumerate(data["epsilons"]):
        row = " ".join(f"{c['accuracy'][i]:>28.4f}" for c in data["curves"])
        print(f"{eps:>8.4g} {eps * 255:>6.3g} {row}")
    for flag in data["flags"]:
        print(f"{flag['severity'].upper()} {flag['code']}: {flag['message']}")


# ----------------------------------------------------------------------------- transfer


def run_transfer(args: argparse.Namespace) -> int:
    """The N x N transfer matrix on the first run's split, as JSON, heat map and report."""
    from robustlab.data.stream import take
    from robustlab.evaluation import TransferRequest, transfer_matrix
    from robustlab.io import write_json
    from robustlab.reporting import build_report
    from robustlab.reporting.results import TRANSFER_FILE

    attack, epsilons = build_attack(args)
    if len(epsilons) != 1:
        raise UserError(f"--transfer takes one epsilon, got {len(epsilons)} ({args.eps})")
    runs = [
        load_run(path, args.device, name)
        for path, name in zip(args.transfer, unique_names(args.transfer), strict=True)
    ]
    for other in runs[1:]:
        check_same_task(runs[0], other)
    imageset = getattr(load_split(runs[0], args.split, args.data_dir), args.split)
    x, y = take(imageset.images, slice(args.limit)), imageset.labels[: args.limit]
    out = args.out or args.transfer[0] / "transfer" / attack.name
    print(f"{attack.name} at eps {epsilons[0]:.4g}: {len(runs)} models, {len(y)} images")
    request = TransferRequest(attack, batch_size=args.batch_size, seed=common.global_seed(attack))
    matrix = transfer_matrix({run.name: run.model for run in runs}, x, y, request)
    matrix.settings |= {
        "runs": {run.name: str(run.path) for run in runs},
        "split": args.split,
        "limit": args.limit,
        "data": runs[0].config.get("data"),
    }
    write_json(out / TRANSFER_FILE, matrix.to_dict())
    report = build_report(out)
    width = max(len(name) for name in matrix.models) + 6
    print(" " * width + " ".join(f"{name:>12}" for name in matrix.models))
    for source, row in zip(matrix.models, matrix.accuracy, strict=True):
        print(f"{'from ' + source:<{width}}" + " ".join(f"{value:>12.4f}" for value in row))
    for flag in matrix.flags:
        print(f"{flag['severity'].upper()} {flag['code']}: {flag['message']}")
    print(f"wrote {out} (open {report})")
    return 0
