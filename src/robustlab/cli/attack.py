"""``robustlab attack RUN_DIR --attack NAME --eps ... --out DIR``: robust accuracy per epsilon.

Loads the run's model (``robustlab.models.load_checkpoint``) and rebuilds its data split from
the run's ``config.json`` (``DataSpec(**config["data"])`` + ``load_splits``), sweeps the
attack over the epsilons in batches, and writes into ``--out`` (atomically):

* ``attack.json``: settings, epsilons, clean and robust accuracy, success rates, perturbation
  norms, timing (keys listed in ``write_results``);
* ``adversarials.safetensors``: one ``(N, C, H, W)`` float32 tensor per epsilon under
  ``eps_<repr(eps)>`` (e.g. ``eps_0.03``), plus ``labels``, ``clean_pred``, ``indices``
  (positions in the split), ``min_eps`` (minimum-norm attacks) and ``target`` (targeted).

Everything the user can get wrong (epsilons, attack name, settings) is checked before any
model or data is loaded, and nothing is written unless the whole run succeeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from robustlab.cli import common
from robustlab.errors import UserError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def register(subparsers: Any) -> None:
    summary = "attack a trained run's model; robust accuracy per epsilon"
    parser = common.add_command(subparsers, "attack", summary, __doc__)
    parser.add_argument("run_dir", type=Path, help="run directory written by `robustlab train`")
    common.add_attack_options(parser, parser.add_argument_group("attack"))
    parser.add_argument("--targeted", metavar="CLASS", help="target class (index or name)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="data split (test)")
    parser.add_argument("--limit", type=int, help="attack only the first N images of the split")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (64)")
    parser.add_argument(
        "--independent",
        action="store_true",
        help="attack every epsilon independently (default: per-sample worst case over eps)",
    )
    parser.add_argument(
        "--no-adversarials",
        action="store_true",
        help="do not keep or write the adversarial images (faster: fooled samples stop early)",
    )
    common.add_data_dir(parser)
    common.add_device_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results already in --out (kept until the new ones are complete)",
    )
    parser.set_defaults(func=run, distributed=True)


@dataclasses.dataclass(frozen=True)
class AttackJob:
    """Everything ``run`` needs, validated before any model or data is loaded."""

    attack: Any  # robustlab.attacks.Attack
    epsilons: list[float]
    target: str | None
    split: str
    limit: int | None
    batch_size: int
    keep_adversarials: bool
    worst_case: bool


def build_job(args: argparse.Namespace) -> AttackJob:
    """Parse and validate the command line into an ``AttackJob`` (no I/O)."""
    attack, epsilons = common.attack_from_args(args)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    return AttackJob(
        attack=attack,
        epsilons=epsilons,
        target=args.targeted,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        keep_adversarials=not args.no_adversarials,
        worst_case=not args.independent,
    )


def load_run(run_dir: Path, split: str, data_dir: Path | None) -> tuple[Any, dict, Any]:
    """The run's model (eval mode), its config, and the ``ImageSet`` of ``split``."""
    from robustlab.data import DataSpec, load_splits
    from robustlab.models import load_checkpoint

    model, config = load_checkpoint(run_dir)
    if "data" not in config:
        raise UserError(f"{run_dir}/config.json has no 'data' entry to rebuild the data split")
    splits = load_splits(DataSpec(**config["data"]), data_dir)
    return model.eval(), config, getattr(splits, split)


def run(args: argparse.Namespace) -> int:
    from robustlab import distributed

    job = build_job(args)
    # a missing or broken run is reported by load_run, without making --out first
    claim = distributed.is_main() and (args.run_dir / "model.safetensors").is_file()
    lock = claim_results_folder(args.out, args.overwrite) if claim else None
    try:
        code = _attack(args, job)
    except BaseException:
        if lock is not None:
            lock.release(failed=True)
        raise
    if lock is not None:
        lock.release()
    return code


def claim_results_folder(out: Path, overwrite: bool) -> Any:
    """Make and lock ``out`` before any work; finished results are replaced only on request."""
    from robustlab.outdir import claim

    lock = claim(out)
    if (out / "attack.json").exists() and not overwrite:
        lock.release(failed=True)
        raise UserError(f"{out} already holds attack results; pass --overwrite to replace them")
    return lock


def _attack(args: argparse.Namespace, job: AttackJob) -> int:
    from robustlab import distributed
    from robustlab.attacks import sweep_dataset
    from robustlab.data.split import class_index

    model, config, imageset = load_run(args.run_dir, job.split, args.data_dir)
    classes = [str(name) for name in (config.get("classes") or imageset.classes)]
    target = None if job.target is None else class_index(job.target, classes, "--targeted")
    check_classes = getattr(job.attack, "check_classes", None)  # apgd-t, fab: top_k vs classes
    if check_classes is not None:
        check_classes(len(classes))
    images, labels, indices, excluded = select_images(imageset, job, target)
    model.to(args.device)
    logger.info(
        "%s on %d %s images at eps %s",
        job.attack.name,
        images.shape[0],
        job.split,
        ", ".join(f"{eps:.4g}" for eps in job.epsilons),
    )
    started = time.perf_counter()
    store = chunk_store(args, job, config, target)
    result = sweep_dataset(
        job.attack,
        model,
        images,
        labels,
        job.epsilons,
        target=target,
        batch_size=job.batch_size,
        keep_adversarials=job.keep_adversarials,
        worst_case=job.worst_case,
        device=args.device,
        progress=True,
        store=store,
    )
    seconds = time.perf_counter() - started
    context = {
        "run_dir": str(args.run_dir),
        "split": job.split,
        "limit": job.limit,
        "seed": common.global_seed(job.attack),
        "batch_size": job.batch_size,
        "device": str(args.device),
        "worst_case": job.worst_case,
        "target_class": target,
        "target_name": None if target is None else classes[target],
        "excluded_target_class": excluded,
        "data": config.get("data"),
    }
    if distributed.is_main():
        write_results(
            args.out, job.attack, result, labels, indices, context, seconds, target, len(classes)
        )
        store.clear()
        for eps, accuracy in zip(job.epsilons, result.accuracy(), strict=True):
            logger.info("eps %.4g: robust accuracy %.4f", eps, accuracy)
        logger.info("wrote %s", args.out)
    distributed.barrier()
    return 0


def select_images(imageset: Any, job: AttackJob, target: int | None) -> tuple[Any, Any, Any, int]:
    """The first ``job.limit`` images of the split, without those of the target class:
    ``(images, labels, indices in the split, images excluded)``; a streamed split stays
    streamed (positions only, nothing read)."""
    import torch

    from robustlab.data.stream import take

    images, labels = imageset.images, imageset.labels
    indices = torch.arange(images.shape[0])
    if job.limit is not None:
        head = slice(job.limit)
        images, labels, indices = take(images, head), labels[head], indices[head]
    excluded = 0
    if target is not None:  # a targeted attack on an image of the target class is moot
        keep = labels != target
        excluded = int((~keep).sum())
        images, labels, indices = take(images, keep), labels[keep], indices[keep]
    if images.shape[0] == 0:
        raise UserError(f"no images to attack in split '{job.split}'")
    return images, labels, indices, excluded


def chunk_store(args: argparse.Namespace, job: AttackJob, config: dict, target: int | None) -> Any:
    """Finished chunks are kept in OUT/.chunks: a killed sweep resumes from the last one, and
    under torchrun every process takes its own chunks."""
    from robustlab import distributed

    return distributed.ChunkStore(
        args.out / ".chunks",
        {
            "run_dir": str(args.run_dir), "model": config.get("model"), "data": config.get("data"),
            "attack": job.attack.settings(), "epsilons": job.epsilons, "split": job.split,
            "limit": job.limit, "target": target, "batch_size": job.batch_size,
            "worst_case": job.worst_case, "keep_adversarials": job.keep_adversarials,
        },
    )  # fmt: skip


def summarise(attack: Any, result: Any, labels: Any, seconds: float) -> dict[str, Any]:
    """The per-epsilon numbers of ``attack.json`` (see ``write_results``)."""
    import math

    n = int(labels.shape[0])
    clean_correct = result.clean_pred == labels
    correct_count = int(clean_correct.sum())
    success_on_correct = [
        float(row[clean_correct].double().mean()) if correct_count else math.nan
        for row in result.success
    ]
    summary: dict[str, Any] = {
        "n": n,
        "clean_accuracy": float(clean_correct.double().mean()),
        "robust_accuracy": result.accuracy(),
        "success_rate": result.success_rate(),
        "success_rate_on_correct": success_on_correct,
        "delta_linf_mean": result.delta_linf.mean(1).tolist(),
        "delta_linf_max": result.delta_linf.amax(1).tolist(),
        "delta_l2_mean": result.delta_l2.mean(1).tolist(),
        "delta_l2_max": result.delta_l2.amax(1).tolist(),
        "images_forwarded": result.images_forwarded,
        "seconds": seconds,
        "seconds_per_image": seconds / n,
    }
    if result.min_eps is not None:
        from robustlab.attacks import accuracy_from_min_eps

        found = result.min_eps[result.min_eps.isfinite()]
        summary["min_eps_median"] = float(found.median()) if found.numel() else None
        summary["min_eps_found_fraction"] = found.numel() / n
        summary["robust_accuracy_from_min_eps"] = accuracy_from_min_eps(
            result.min_eps, result.epsilons
        )
    return summary


def write_results(
    out: Path,
    attack: Any,
    result: Any,
    labels: Any,
    indices: Any,
    context: dict[str, Any],
    seconds: float,
    target: int | None,
    classes: int | None = None,
) -> None:
    """Write ``adversarials.safetensors`` (when kept) and then ``attack.json`` into ``out``.

    ``attack.json`` keys: ``format`` ("robustlab-attack"), ``format_version``, ``attack``
    ({``name``, ``norm``, ``settings``}), ``evaluation`` (grade and, for ``autoattack``, robust
    accuracy after each member: see ``robustlab.evaluation.grade``), ``epsilons``, ``n``,
    ``clean_accuracy``, and per epsilon (lists parallel to ``epsilons``): ``robust_accuracy``, ``success_rate``,
    ``success_rate_on_correct``, ``delta_linf_mean``, ``delta_linf_max``, ``delta_l2_mean``,
    ``delta_l2_max``; for minimum-norm attacks ``min_eps_median``,
    ``min_eps_found_fraction``, ``robust_accuracy_from_min_eps``; then ``images_forwarded``,
    ``seconds``, ``seconds_per_image``, ``adversarials_file``, ``robustlab_version`` and the
    run context
    (``run_dir``, ``split``, ``limit``, ``seed``, ``batch_size``, ``device``, ``worst_case``,
    ``target_class``, ``target_name``, ``excluded_target_class``, ``data``).
    """
    from safetensors.torch import save_file

    from robustlab.evaluation.grade import evaluation_grade
    from robustlab.io import atomic_path, write_json

    out = Path(out)
    # old results (--overwrite) go only now that the new ones are complete, attack.json first:
    # a kill in between leaves no results rather than a mixed pair
    (out / "attack.json").unlink(missing_ok=True)
    (out / "adversarials.safetensors").unlink(missing_ok=True)
    adversarials_file = None
    if result.adversarials is not None:
        adversarials_file = "adversarials.safetensors"
        tensors = adversarial_tensors(result, labels, indices, target)
        with atomic_path(out / adversarials_file) as tmp:
            save_file(tensors, str(tmp))
    record = {
        "format": "robustlab-attack",
        "format_version": 1,
        "robustlab_version": _version(),
        "attack": {"name": attack.name, "norm": attack.norm, "settings": attack.settings()},
        "evaluation": evaluation_grade(attack, result.stage, classes),
        "epsilons": list(result.epsilons),
        **summarise(attack, result, labels, seconds),
        "adversarials_file": adversarials_file,
        **context,
    }
    write_json(out / "attack.json", record)


def adversarial_tensors(
    result: Any, labels: Any, indices: Any, target: int | None
) -> dict[str, Any]:
    """What ``adversarials.safetensors`` holds (see the module docstring)."""
    import torch

    tensors = {
        f"eps_{eps!r}": adv.float().contiguous()
        for eps, adv in zip(result.epsilons, result.adversarials, strict=True)
    }
    tensors["labels"] = labels.long().contiguous()
    tensors["clean_pred"] = result.clean_pred.long().contiguous()
    tensors["indices"] = indices.long().contiguous()
    if result.min_eps is not None:
        tensors["min_eps"] = result.min_eps.float().contiguous()
    if target is not None:
        tensors["target"] = torch.full_like(tensors["labels"], target)
    return tensors


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("robustlab")
    except PackageNotFoundError:
        return None
