"""The data contract: ``DataSpec`` (what to load), ``ImageSet`` and ``DataSplits`` (what you get).

Pixel convention: every ``ImageSet.images`` is ``float32`` in ``[0, 1]``, shape ``(N, C, H, W)``;
labels are ``int64`` in ``[0, len(classes))``. The data layer never normalises (mean/std):
that lives inside the model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, Field, StrictBool

from robustlab.errors import UserError
from robustlab.specs import spec

SPLIT_NAMES = ("train", "val", "test")
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


Split = Annotated[
    tuple[float, float, float] | Literal["official"], BeforeValidator(lambda v: _check_split(v))
]
Classes = Annotated[tuple[str | int, ...] | None, BeforeValidator(lambda v: _check_classes(v))]


@spec("data")
class DataSpec:
    """What to load and how to split it; every field is JSON-serialisable.

    ``DataSpec(**json.loads(text))`` rebuilds a spec from its ``to_dict()`` (lists become
    tuples), so a run's ``config.json`` reproduces the exact same split.
    """

    name: str = Field(description="data set name or path (see 'robustlab data list')")
    task: str | None = Field(
        default=None, description="task of a named data set (e.g. unhealthy, disease)"
    )
    image_size: int | None = Field(
        default=None, ge=1, le=4096, strict=True, description="resize images to this square size"
    )
    channels: Literal[1, 3] | None = Field(
        default=None, description="force grey (1) or RGB (3; grey repeated); unset keeps native"
    )
    classes: Classes = Field(
        default=None, description="class subset (names or indices), relabelled 0..k-1 in order"
    )
    split: Split = Field(
        default=(0.7, 0.15, 0.15),
        description="train,val,test fractions, or 'official' (the published train/test files "
        "of MNIST and Fashion-MNIST, validation carved from train)",
    )
    seed: int = Field(
        default=0, ge=0, le=2**63 - 1, strict=True, description="seed of the split shuffle"
    )
    stratify: StrictBool = Field(default=False, description="keep class proportions in every split")
    limit: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="use at most this many images (before the split)",
    )
    on_corrupt: Literal["skip", "error"] = Field(
        default="skip",
        description="unreadable files in an image folder: skip them with a warning and a count "
        "(recorded in config.json) or refuse the data set",
    )

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise UserError(f"data.name must be a data set name or a path, got {self.name!r}")
        if self.task is not None and not self.task.strip():
            raise UserError(f"data.task must be a task name or unset, got {self.task!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``DataSpec(**spec.to_dict()) == spec``."""
        out = asdict(self)
        out["split"] = self.split if self.split == OFFICIAL else list(self.split)
        out["classes"] = list(self.classes) if self.classes is not None else None
        return out


def _check_classes(classes: Any) -> tuple[str | int, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str | bytes) or not hasattr(classes, "__iter__"):
        raise UserError(f"data.classes must be a list of class names or indices, got {classes!r}")
    items = tuple(classes)
    if not items:
        raise UserError("data.classes must name at least one class (or be unset for all)")
    for item in items:
        if not (isinstance(item, str) and item) and (
            isinstance(item, bool) or not isinstance(item, int)
        ):
            raise UserError(f"data.classes entries must be names or indices, got {item!r}")
    return items


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
