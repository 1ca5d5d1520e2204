"""Index arithmetic: class subsets, deterministic subsampling and train/val/test splits.

Everything works on label arrays and returns positions, so no image is touched here.
The split is the leaf study's shuffle-then-cut: ``default_rng(seed).permutation(n)``, then
cut at ``round(n * train)`` and ``round(n * (train + val))``. Stratified splits do the same
inside each class (one generator, classes in label order) and shuffle each split afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robustlab.data.spec import SPLIT_NAMES
from robustlab.errors import UserError, unknown_name


def select_classes(
    labels: np.ndarray, classes: tuple[str, ...], wanted: Sequence[str | int] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Keep the images of ``wanted`` classes (names or indices), relabelled 0..k-1 in that order.

    Returns ``(positions, new_labels, new_classes)``; ``wanted=None`` keeps everything.
    """
    if wanted is None:
        return np.arange(len(labels)), labels, classes
    chosen: list[int] = []
    for item in wanted:
        index = class_index(item, classes, "data.classes")
        if index in chosen:
            raise UserError(f"data.classes names class '{classes[index]}' twice")
        chosen.append(index)
    mapping = np.full(len(classes), -1, dtype=np.int64)
    mapping[chosen] = np.arange(len(chosen))
    new = mapping[labels]
    positions = np.flatnonzero(new >= 0)
    counts = np.bincount(new[positions], minlength=len(chosen))
    for k, count in enumerate(counts):
        if count == 0:
            raise UserError(f"data.classes: class '{classes[chosen[k]]}' has no images")
    return positions, new[positions], tuple(classes[i] for i in chosen)


def class_index(wanted: str | int, classes: Sequence[str], field: str) -> int:
    """A class given by name or index -> its index in ``classes``; the one-line error names
    ``field`` (``data.classes``, ``--targeted``, ``target_class``). Text that is a whole number
    (``'3'`` from a command line) is an index."""
    if isinstance(wanted, str):
        if wanted in classes:
            return list(classes).index(wanted)
        if not wanted.strip().lstrip("-").isdigit():
            raise UserError(f"{field}: {unknown_name('class', wanted, classes)}")
        wanted = int(wanted)
    if not 0 <= wanted < len(classes):
        raise UserError(
            f"{field}: class index {wanted} is out of range; there are {len(classes)} classes "
            f"(0..{len(classes) - 1})"
        )
    return int(wanted)


def cut_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Sizes of the three splits of ``n`` items: cumulative rounding, so they sum to n."""
    first = int(np.floor(n * fractions[0] + 0.5))
    second = int(np.floor(n * (fractions[0] + fractions[1]) + 0.5))
    second = max(first, min(second, n))
    return first, second - first, n - second


def min_per_class(fractions: Sequence[float]) -> int:
    """The smallest class size for which every split gets at least one image."""
    for n in range(3, 100_000):
        if min(cut_counts(n, fractions)) > 0:
            return n
    return 100_000


def subsample(
    labels: np.ndarray, limit: int | None, seed: int, *, stratify: bool = False
) -> np.ndarray:
    """Sorted positions of at most ``limit`` items, chosen at random with ``seed``.

    With ``stratify`` each class keeps its share (largest-remainder rounding).
    """
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, 1])  # its own stream: independent of the split's
    if not stratify:
        return np.sort(rng.permutation(n)[:limit])
    counts = np.bincount(labels)
    share = counts * (limit / n)
    keep = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - keep), kind="stable")
    keep[order[: limit - int(keep.sum())]] += 1
    chosen = []
    for label, k in enumerate(keep):
        members = np.flatnonzero(labels == label)
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


def split_indices(
    labels: np.ndarray,
    fractions: Sequence[float],
    seed: int,
    *,
    stratify: bool = False,
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the train, val and test items; disjoint and covering ``range(len(labels))``."""
    n = len(labels)
    rng = np.random.default_rng(seed)
    if not stratify:
        order = rng.permutation(n)
        counts = cut_counts(n, fractions)
        for name, count in zip(SPLIT_NAMES, counts, strict=True):
            if count == 0:
                raise UserError(
                    f"data.split leaves the '{name}' split with 0 images ({n} images split "
                    f"{_fmt(fractions)}); use more images or a larger '{name}' fraction"
                )
        first, second = counts[0], counts[0] + counts[1]
        return order[:first], order[first:second], order[second:]
    parts: list[list[np.ndarray]] = [[], [], []]
    need = min_per_class(fractions)
    for label in range(int(labels.max(initial=-1)) + 1):
        members = np.flatnonzero(labels == label)
        if len(members) == 0:
            continue
        counts = cut_counts(len(members), fractions)
        if min(counts) == 0:
            name = classes[label] if classes is not None else str(label)
            raise UserError(
                f"class '{name}' has only {len(members)} images, too few for a stratified "
                f"split {_fmt(fractions)} (needs at least {need} per class); use more images, "
                "drop the class with data.classes, or set data.stratify to false"
            )
        members = members[rng.permutation(len(members))]
        first, second = counts[0], counts[0] + counts[1]
        for part, chunk in zip(
            parts, (members[:first], members[first:second], members[second:]), strict=True
        ):
            part.append(chunk)
    out = []
    for part in parts:
        joined = np.concatenate(part) if part else np.zeros(0, dtype=np.int64)
        out.append(joined[rng.permutation(len(joined))])
    return out[0], out[1], out[2]


def _fmt(fractions: Sequence[float]) -> str:
    return "/".join(f"{f:g}" for f in fractions)
