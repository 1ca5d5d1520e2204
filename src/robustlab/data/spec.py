"""The data contract: ``DataSpec`` (what to load), ``ImageSet`` and ``DataSplits`` (what you get).

Pixel convention: every ``ImageSet.images`` is ``float32`` in ``[0, 1]``, shape ``(N, C, H, W)``;
labels are ``int64`` in ``[0, len(classes))``. The data layer never normalises (mean/std):
that lives inside the model.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from robustlab.errors import UserError

SPLIT_NAMES = ("train", "val", "test")
ON_CORRUPT = ("skip", "error")
OFFICIAL = "official"
OFFICIAL_VAL = 1 / 12  # of the official train set: 5,000 of MNIST's 60,000


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with their labels and class names."""

    # (N, C, H, W) float32 in [0, 1]; a StreamedImages (converted batch by batch when
    # indexed) for a split larger than the memory budget
    images: torch.Tensor
    labels: torch.Tensor  # (N,) int64 in [0, num_classes)
    classes: tuple[str, ...]  # class names, index = label

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise ValueError(
                f"ImageSet.images must be float32 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"ImageSet.labels must be int64 (N,), got {self.labels.dtype}")
        if len(self.labels) != len(self.images):
            raise ValueError(
                f"ImageSet has {len(self.images)} images but {len(self.labels)} labels"
            )
        object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> dict[str, int]:
        """Images per class name, in class order (classes with no image count 0)."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        return dict(zip(self.classes, counts, strict=True))

    def subset(self, index: torch.Tensor | slice | list[int]) -> ImageSet:
        """The images at ``index`` (same classes)."""
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.int64)
        images = self.images
        # a streamed set stays streamed: select positions, convert nothing
        subset = getattr(images, "subset", None)
        return ImageSet(
            subset(index) if subset else images[index], self.labels[index], self.classes
        )

    def head(self, limit: int | None) -> ImageSet:
        """The first ``limit`` images (all when None), without converting streamed pixels."""
        return self if limit is None else self.subset(slice(0, limit))


def _int_field(field_name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise UserError(f"data.{field_name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise UserError(f"data.{field_name} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise UserError(f"data.{field_name} must be {bound}, got {number}")
    return number


@dataclass(frozen=True)
class DataSpec:
    """What to load and how to split it; every field is JSON-serialisable.

    ``DataSpec(**json.loads(text))`` rebuilds a spec from its ``to_dict()`` (lists become
    tuples), so a run's ``config.json`` reproduces the exact same split.
    """

    name: str  # named set (see list_datasets) or a path: folder tree / .npz / images.npy dir
    task: str | None = None  # e.g. 'unhealthy' | 'disease' for plantvillage-tomato
    image_size: int | None = None  # resize (square) in the loader; None keeps native size
    channels: int | None = None  # 1 -> grey, 3 -> RGB (grey repeated); None keeps native
    classes: tuple[str | int, ...] | None = None  # class subset, relabelled 0..k-1 in this order
    # train, val, test fractions; or "official": the published train/test files of MNIST and
    # Fashion-MNIST, validation carved from train (OFFICIAL_VAL of it)
    split: tuple[float, float, float] | Literal["official"] = (0.7, 0.15, 0.15)
    seed: int = 0
    stratify: bool = False
    limit: int | None = None  # keep at most this many images in total (deterministic, before split)
    on_corrupt: Literal["skip", "error"] = "skip"  # unreadable image files in a folder source

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError(f"data.name must be a data set name or a path, got {self.name!r}")
        if self.task is not None and (not isinstance(self.task, str) or not self.task.strip()):
            raise UserError(f"data.task must be a task name or unset, got {self.task!r}")
        if self.image_size is not None:
            set_(self, "image_size", _int_field("image_size", self.image_size, 1, 4096))
        if self.channels is not None:
            channels = _int_field("channels", self.channels, 1, 3)
            if channels == 2:
                raise UserError("data.channels must be 1 (grey), 3 (RGB) or unset, got 2")
            set_(self, "channels", channels)
        if self.classes is not None:
            set_(self, "classes", _check_classes(self.classes))
        set_(self, "split", _check_split(self.split))
        set_(self, "seed", _int_field("seed", self.seed, 0, 2**63 - 1))
        if not isinstance(self.stratify, bool):
            raise UserError(f"data.stratify must be true or false, got {self.stratify!r}")
        if self.limit is not None:
            set_(self, "limit", _int_field("limit", self.limit, 1))
        if self.on_corrupt not in ON_CORRUPT:
            raise UserError(
                f"data.on_corrupt must be one of {', '.join(ON_CORRUPT)}, got {self.on_corrupt!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``DataSpec(**spec.to_dict()) == spec``."""
        out = asdict(self)
        out["split"] = self.split if self.split == OFFICIAL else list(self.split)
        out["classes"] = list(self.classes) if self.classes is not None else None
        return out


def _check_classes(classes: Any) -> tuple[str | int, ...]:
    if isinstance(classes, str | bytes) or not hasattr(classes, "__iter__"):
        raise UserError(f"data.classes must be a list of class names or indices, got {classes!r}")
    items = tuple(classes)
    if not items:
        raise UserError("data.classes must name at least one class (or be unset for all)")
    checked: list[str | int] = []
    for item in items:
        if isinstance(item, str) and item:
            checked.append(item)
        elif not isinstance(item, bool) and hasattr(item, "__index__"):
            checked.append(operator.index(item))
        else:
            raise UserError(f"data.classes entries must be names or indices, got {item!r}")
    return tuple(checked)


def _check_split(split: Any) -> tuple[float, float, float] | Literal["official"]:
    if split == OFFICIAL:
        return OFFICIAL
    if isinstance(split, str):
        raise UserError(
            f"data.split must be three fractions (train, val, test) or 'official', got {split!r}"
        )
    try:
        fractions = tuple(float(value) for value in split)
    except (TypeError, ValueError):
        raise UserError(
            f"data.split must be three fractions (train, val, test), got {split!r}"
        ) from None
    if len(fractions) != 3:
        raise UserError(
            f"data.split must be three fractions (train, val, test), got {len(fractions)}"
        )
    for name, value in zip(SPLIT_NAMES, fractions, strict=True):
        if not math.isfinite(value) or value <= 0:
            raise UserError(
                f"data.split fraction for '{name}' must be > 0 (every split needs images), "
                f"got {value:g}"
            )
    total = sum(fractions)
    if abs(total - 1.0) > 1e-6:
        raise UserError(
            f"data.split fractions must sum to 1, got {' + '.join(f'{v:g}' for v in fractions)}"
            f" = {total:g}"
        )
    return fractions  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class DataSplits:
    """The train / val / test image sets of one ``DataSpec``."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    spec: DataSpec
    source: str = ""  # the file or folder read ('' when built in memory)
    task: str | None = None  # the task actually used (the default one when spec.task is None)
    skipped: int = 0  # unreadable files skipped in a folder source

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def items(self) -> list[tuple[str, ImageSet]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]

    def info(self) -> dict[str, Any]:
        """JSON-able summary: spec, source, classes, sizes and class counts per split."""
        return summary(
            self.spec,
            source=self.source,
            task=self.task,
            classes=self.classes,
            image_shape=self.train.image_shape,
            split_labels={name: part.labels.tolist() for name, part in self.items()},
            skipped=self.skipped,
        )


def summary(
    spec: DataSpec,
    *,
    source: str,
    task: str | None,
    classes: tuple[str, ...],
    image_shape: tuple[int, int, int],
    split_labels: dict[str, list[int]],
    skipped: int,
) -> dict[str, Any]:
    """The JSON-able facts of a split (shared by ``DataSplits.info`` and ``dataset_info``)."""
    counts = {}
    total: Counter[str] = Counter()
    for name, labels in split_labels.items():
        per_class = Counter(labels)
        counts[name] = {c: per_class.get(i, 0) for i, c in enumerate(classes)}
        total.update(counts[name])
    return {
        "spec": spec.to_dict(),
        "source": source,
        "task": task,
        "classes": list(classes),
        "num_classes": len(classes),
        "image_shape": list(image_shape),
        "sizes": {name: len(labels) for name, labels in split_labels.items()},
        "total": sum(len(labels) for labels in split_labels.values()),
        "class_counts": {**counts, "total": {c: total[c] for c in classes}},
        "skipped_files": skipped,
    }
