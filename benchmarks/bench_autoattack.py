"""robustlab's ``autoattack`` beside ``torchattacks.AutoAttack(version="standard")``, one run.

Models (trained here, small, Fashion-MNIST ``small-cnn`` from scratch, eps 0.1 Linf):

* ``pgd-at``: PGD adversarial training at eps 0.1 (robustlab's ``pgd`` defence);
* ``plain``: the same network trained on clean images (undefended);
* ``quantised``: ``plain`` behind a round(x * 255) / 255 input quantiser, whose gradient is
  zero everywhere (gradient masking by construction).

Printed, on the same test images and side by side: robust accuracy and CPU seconds of robustlab
``autoattack`` and torchattacks' AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square), with the
robust accuracy after each member of robustlab's cascade; APGD-CE-100 vs PGD-100; and on the
quantised model white-box PGD vs Square, with the evaluation grade and the sanity verdict that
says which one to trust.

torchattacks' ``AutoAttack(version="standard")`` runs APGD, APGD-T and FAB with 10 steps (its
attacks' default; the reference package uses 100), so robustlab runs both budgets: 100 steps
for the accuracy, 10 steps for a time ratio at equal work.

Targets: autoattack accuracy <= torchattacks' + 0.5 pp; time ratio <= 0.8; APGD-CE-100 accuracy
<= PGD-100; Square >= 20 pp below PGD on the quantised model. Each line says whether its target
is met.

``--tasks leaf`` adds (or, alone, runs only) the leaf comparison: tf_efficientnet_lite0 (offline
ImageNet weights) fine-tuned with PGD-AT at eps 2/255 on the leaf study's healthy/unhealthy
tomato leaves at 96 px, shrunk to run in about ten minutes on two CPU cores (``--leaf-train``
images, ``--leaf-epochs``, ``--leaf-images`` attacked, ``--leaf-queries`` Square queries on both
sides; the output says so). The model has 2 classes, where targeted DLR cannot apply, so both
suites run without APGD-T: robustlab's cascade skips it itself, torchattacks' members are run
the same way (APGD-CE, FAB-T, Square as its MultiAttack). Both at 100 steps; APGD-CE-100 vs
PGD-100 too.

    .venv/bin/python benchmarks/bench_autoattack.py [--tasks fmnist,leaf] [--images 200]
        [--train 6000] [--epochs 3] [--square-queries 5000] [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks import get_attack, sweep
from robustlab.data import DataSpec, load_splits
from robustlab.defences import PGDTrainingConfig, make_defence
from robustlab.evaluation.grade import evaluation_grade
from robustlab.evaluation.sanity import gradient_flags
from robustlab.io import write_json
from robustlab.models import ModelSpec, create_model
from robustlab.training import TrainConfig, fit

REPO = Path(__file__).resolve().parents[1]
EPS = 0.1
LEAF_EPS = 2 / 255
TIME_TARGET, GAP_TARGET_PP = 0.8, 0.5


class Quantiser(nn.Module):
    """round(x * 255) / 255 before the model: a non-differentiable preprocessing step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * 255) / 255)


class Counted(nn.Module):
    """Counts the images forwarded through ``model``: torchattacks' work, in robustlab's unit
    (``SweepResult.images_forwarded``), a figure the machine's load cannot blur."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0
        self.train(model.training)  # torchattacks restores this mode on the wrapper after a run

    def forward(self, x: Tensor) -> Tensor:
        self.images += x.shape[0]
        return self.model(x)


def stratified_splits(name: str, task: str | None, train: int, val: int, test: int) -> Any:
    """The first ``train + val + test`` images of a data set, split stratified (seed 0)."""
    total = train + val + test
    split = (train / total, val / total, test / total)
    spec = DataSpec(name=name, task=task, limit=total, split=split, seed=0, stratify=True)
    return load_splits(spec, data_dir())


def train_models(args: argparse.Namespace) -> tuple[dict[str, nn.Module], Tensor, Tensor]:
    splits = stratified_splits("fashion-mnist", None, args.train, 500, args.images)
    config = TrainConfig(
        strategy="scratch", optimizer="adam", lr=1e-3, epochs=args.epochs, batch_size=64
    )
    models = {}
    for name, defence in (
        ("plain", None),
        ("pgd-at", make_defence(PGDTrainingConfig(eps=EPS, steps=3, step_size=1.25 * EPS / 3))),
    ):
        started = time.perf_counter()
        model = create_model(ModelSpec(arch="small-cnn", num_classes=10, in_chans=1, input_size=28))
        torch.manual_seed(0)
        train, val = (
            (splits.train.images, splits.train.labels),
            (splits.val.images, splits.val.labels),
        )
        fit(model, train, val, config, defence, progress=False)
        models[name] = model.eval()
        print(f"trained {name} in {time.perf_counter() - started:.0f} s")
    models["quantised"] = Quantiser(models["plain"]).eval()
    return models, splits.test.images[: args.images], splits.test.labels[: args.images]


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    """``(value, CPU seconds of this process)``: on a shared machine other jobs stretch the
    wall clock of both sides unevenly, not this process's CPU time (one thread by default)."""
    started = time.process_time()
    value = run()
    return value, time.process_time() - started


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def data_dir() -> str:
    return os.environ.get("ROBUSTLAB_DATA_DIR") or str(REPO.parent / "shared" / "data")


def robustlab_autoattack(
    model: nn.Module, x: Tensor, y: Tensor, queries: int, steps: int = 100, eps: float = EPS
) -> dict[str, Any]:
    attack = get_attack("autoattack", eps=eps, queries=queries, steps=steps)
    result, seconds = timed(
        lambda: sweep(attack, model, x, y, [eps], keep_adversarials=False, batch_size=len(x))
    )
    grade = evaluation_grade(attack, result.stage)
    stages = {row["attack"]: row["robust_accuracy"][0] for row in grade["robust_after"]}
    return {
        "accuracy": result.accuracy()[0],
        "seconds": seconds,
        "robust_after": stages,
        "images_forwarded": result.images_forwarded,
    }


def torchattacks_run(
    attack: Callable[[Tensor, Tensor], Tensor], counted: Counted, x: Tensor, y: Tensor
) -> dict[str, Any]:
    x_adv, seconds = timed(lambda: attack(x, y))
    with torch.no_grad():
        accuracy = float((counted.model(x_adv).argmax(1) == y).double().mean())
    return {"accuracy": accuracy, "seconds": seconds, "images_forwarded": counted.images}


def torchattacks_autoattack(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    import torchattacks

    counted = Counted(model)
    attack = torchattacks.AutoAttack(
        counted, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0
    )
    return torchattacks_run(attack, counted, x, y)


def accuracy_under(
    name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float = EPS, **settings: Any
) -> float:
    attack = get_attack(name, eps=eps, **settings)
    result = sweep(attack, model, x, y, [eps], keep_adversarials=False, batch_size=len(x))
    return result.accuracy()[0]


def compare_on(name: str, model: nn.Module, x: Tensor, y: Tensor, queries: int) -> dict[str, Any]:
    """One F-MNIST model: both suites side by side, the gap and the time ratio with verdicts."""
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    ours = robustlab_autoattack(model, x, y, queries)
    # torchattacks' "standard" runs APGD, APGD-T and FAB with its default 10 steps (the
    # reference uses 100): the time ratio is measured at that same budget
    same_budget = robustlab_autoattack(model, x, y, queries, steps=10)
    theirs = torchattacks_autoattack(model, x, y)
    pgd = accuracy_under("pgd", model, x, y, steps=100)
    apgd = accuracy_under("apgd", model, x, y, steps=100)
    print(f"\n{name}: clean {clean:.3f}")
    for label, run in (("100 steps (reference)", ours), ("10 steps (torchattacks')", same_budget)):
        stages = ", ".join(f"{k} {v:.3f}" for k, v in run["robust_after"].items())
        print(
            f"  robustlab autoattack, {label}: {run['accuracy']:.3f} {run['seconds']:7.1f} s"
            f"  after: {stages}"
        )
    print(
        f"  torchattacks AutoAttack (10 steps): {theirs['accuracy']:.3f} {theirs['seconds']:7.1f} s"
    )
    gap = 100 * (ours["accuracy"] - theirs["accuracy"])
    gap_same = 100 * (same_budget["accuracy"] - theirs["accuracy"])
    ratio = same_budget["seconds"] / theirs["seconds"]
    print(
        f"  time ratio at the same budget {ratio:.2f} (target <= {TIME_TARGET}: {met(ratio <= TIME_TARGET)})"
        f" | accuracy gap {gap:+.1f} pp at the reference budget, {gap_same:+.1f} pp at the same"
        f" budget (target <= +{GAP_TARGET_PP}: {met(max(gap, gap_same) <= GAP_TARGET_PP)})"
    )
    print(
        f"  time ratio at the reference budget {ours['seconds'] / theirs['seconds']:.2f} (100 vs 10"
        f" steps); images forwarded at the same budget: robustlab {same_budget['images_forwarded']},"
        f" torchattacks {theirs['images_forwarded']}"
        f" (ratio {same_budget['images_forwarded'] / theirs['images_forwarded']:.2f})"
    )
    print(f"  PGD-100 {pgd:.3f}, APGD-CE-100 {apgd:.3f} (target APGD <= PGD: {met(apgd <= pgd)})")
    return {
        "clean": clean,
        "robustlab": ours,
        "robustlab_10_steps": same_budget,
        "torchattacks": theirs,
        "pgd-100": pgd,
        "apgd-ce-100": apgd,
        "time_ratio": ratio,
        "gap_pp": gap,
        "gap_pp_same_budget": gap_same,
    }


def quantised_check(quantised: nn.Module, x: Tensor, y: Tensor, queries: int) -> dict[str, Any]:
    """Zero gradients: white-box PGD is blind, Square is not; the sanity flags say so."""
    pgd = accuracy_under("pgd", quantised, x, y, steps=100)
    square_attack = get_attack("square", eps=EPS, queries=queries)
    square = sweep(square_attack, quantised, x, y, [EPS], keep_adversarials=False).accuracy()[0]
    flags = [flag.code for flag in gradient_flags(quantised, x, y)]
    trust = "square" if square < pgd else "pgd"
    drop = 100 * (pgd - square)
    print(
        f"\nquantised: PGD-100 {pgd:.3f}, Square {square:.3f} ({drop:.1f} pp lower, target >= 20:"
        f" {met(drop >= 20)})"
    )
    print(
        f"  sanity flags: {', '.join(flags) or 'none'}; trust: {trust} (the lower robust accuracy;"
        " gradients are masked)"
    )
    return {
        "pgd-100": pgd,
        "square": square,
        "flags": flags,
        "trust": trust,
        "square_grade": evaluation_grade(square_attack)["grade"],
    }


def run_fmnist(args: argparse.Namespace) -> dict[str, Any]:
    models, x, y = train_models(args)
    results: dict[str, Any] = {"images": len(y), "eps": EPS}
    for name in ("pgd-at", "plain"):
        results[name] = compare_on(name, models[name], x, y, args.square_queries)
    results["quantised"] = quantised_check(models["quantised"], x, y, args.square_queries)
    return results


def leaf_model(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor]:
    """Lite0 (offline ImageNet weights) fine-tuned with PGD-AT at 2/255 on the leaf task."""
    splits = stratified_splits(
        "plantvillage-tomato", "unhealthy", args.leaf_train, 100, args.leaf_images
    )
    model = create_model(
        ModelSpec(arch="tf_efficientnet_lite0", num_classes=2, input_size=96, pretrained="offline")
    )
    config = TrainConfig(
        strategy="finetune", optimizer="rmsprop", lr=1e-3, epochs=args.leaf_epochs, head_epochs=1
    )
    defence = make_defence(PGDTrainingConfig(eps=LEAF_EPS, steps=3, step_size=1.25 * LEAF_EPS / 3))
    torch.manual_seed(0)
    started = time.perf_counter()
    train, val = (splits.train.images, splits.train.labels), (splits.val.images, splits.val.labels)
    fit(model, train, val, config, defence, progress=False)
    print(f"trained leaf lite0 PGD-AT in {time.perf_counter() - started:.0f} s")
    return (
        model.eval(),
        splits.test.images[: args.leaf_images],
        splits.test.labels[: args.leaf_images],
    )


def run_leaf(args: argparse.Namespace) -> dict[str, Any]:
    import torchattacks

    model, x, y = leaf_model(args)
    print(
        f"\nleaf (shrunk to run here: {args.leaf_train} training images, {args.leaf_epochs} epochs,"
        f" {len(y)} attacked images, Square {args.leaf_queries} queries on both sides; 2 classes,"
        " so APGD-T is skipped by both)"
    )
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    ours = robustlab_autoattack(model, x, y, args.leaf_queries, eps=LEAF_EPS)
    common = {"eps": LEAF_EPS, "norm": "Linf", "seed": 0, "steps": 100}
    counted = Counted(model)
    members = [
        torchattacks.APGD(counted, loss="ce", n_restarts=1, **common),
        torchattacks.FAB(counted, multi_targeted=True, n_classes=2, n_restarts=1, **common),
        torchattacks.Square(
            counted, eps=LEAF_EPS, norm="Linf", seed=0, n_queries=args.leaf_queries
        ),
    ]
    theirs = torchattacks_run(torchattacks.MultiAttack(members), counted, x, y)
    pgd = accuracy_under("pgd", model, x, y, eps=LEAF_EPS, steps=100)
    apgd = accuracy_under("apgd", model, x, y, eps=LEAF_EPS, steps=100)
    gap = 100 * (ours["accuracy"] - theirs["accuracy"])
    stages = ", ".join(f"{k} {v:.3f}" for k, v in ours["robust_after"].items())
    print(f"  clean {clean:.3f}")
    print(
        f"  robustlab autoattack: {ours['accuracy']:.3f} {ours['seconds']:7.1f} s  after: {stages}"
    )
    print(
        f"  torchattacks APGD-CE, FAB-T, Square: {theirs['accuracy']:.3f} {theirs['seconds']:7.1f} s"
    )
    print(
        f"  accuracy gap {gap:+.1f} pp (target <= +{GAP_TARGET_PP}: {met(gap <= GAP_TARGET_PP)});"
        f" time ratio {ours['seconds'] / theirs['seconds']:.2f} (both 100 steps)"
    )
    print(f"  PGD-100 {pgd:.3f}, APGD-CE-100 {apgd:.3f} (target APGD <= PGD: {met(apgd <= pgd)})")
    return {"images": len(y), "eps": LEAF_EPS, "clean": clean, "robustlab": ours,
            "torchattacks": theirs, "pgd-100": pgd, "apgd-ce-100": apgd, "gap_pp": gap,
            "shrunk": {"train": args.leaf_train, "epochs": args.leaf_epochs, "queries": args.leaf_queries}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="fmnist", help="comma list of: fmnist, leaf")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--square-queries", type=int, default=5000)
    parser.add_argument("--leaf-train", type=int, default=300)
    parser.add_argument("--leaf-epochs", type=int, default=2)
    parser.add_argument("--leaf-images", type=int, default=16)
    parser.add_argument("--leaf-queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    unknown = sorted(set(tasks) - {"fmnist", "leaf"})
    if unknown or not tasks:
        parser.error(f"--tasks: unknown {', '.join(unknown) or '(none given)'}; use fmnist, leaf")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict[str, Any] = {}
    if "fmnist" in tasks:
        results["fmnist"] = run_fmnist(args)
    if "leaf" in tasks:
        results["leaf"] = run_leaf(args)
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
