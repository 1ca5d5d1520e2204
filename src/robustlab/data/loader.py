"""``load_splits``: DataSpec -> DataSplits, for named data sets and generic sources.

Pipeline (each step works on indices; pixels are converted once, at the end):
read raw arrays (cached) -> class subset -> limit -> split -> float32 NCHW (+ grey/RGB, resize).

Generic sources (``DataSpec.name`` is a path, tried as given, then under the data dir):
- a folder of class sub-folders (ImageFolder style), read with PIL;
- a folder holding ``images.npy`` + ``labels.npy`` (optional ``class_names.npy`` or
  ``classes.txt``, one name a line), or the path of such an ``images.npy``;
- an ``.npz`` with ``images`` and ``labels`` (optional ``class_names``); ``task`` may name
  another label array in it, with names in ``<task>_names``;
- WebDataset tar shards: a folder of ``*.tar``, one ``.tar`` or ``train-{000..009}.tar``
  (``data.tarshards``), decoded per batch when streamed.
Images are (N, H, W, C) with C = 1 or 3, or (N, H, W) grey; uint8 0..255 or float in [0, 1].
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlab.data import download as dl
from robustlab.data.arrays import (
    RawData,
    check_labelling,
    file_stamp,
    make_raw,
    npz_keys,
    read_npy,
    read_npz_array,
)
from robustlab.data.prepared import FolderRows, read_folder_source
from robustlab.data.registry import (
    DATASETS,
    canonical_name,
    load_named,
    resolve_data_dir,
)
from robustlab.data.spec import (
    OFFICIAL,
    OFFICIAL_VAL,
    SPLIT_NAMES,
    DataSpec,
    DataSplits,
    ImageSet,
    summary,
)
from robustlab.data.split import select_classes, split_indices, subsample
from robustlab.data.stream import ENV_BUDGET, StreamedImages, memory_budget, open_npy_rows
from robustlab.data.tarshards import find_shards, read_shards
from robustlab.data.transforms import to_tensor
from robustlab.errors import UserError, suggestion

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SplitPlan:
    """Which raw images go where: everything but the pixel conversion."""

    raw: RawData
    task: str | None
    classes: tuple[str, ...]
    index: tuple[np.ndarray, np.ndarray, np.ndarray]  # raw positions of train, val, test
    labels: tuple[np.ndarray, np.ndarray, np.ndarray]  # their new labels (0..k-1)


def plan_splits(
    spec: DataSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    opener: dl.Opener | None = None,
) -> SplitPlan:
    """Read the source, then class subset -> limit -> split, on indices only."""
    raw, task = load_source(spec, data_dir, download=download, opener=opener)
    positions, labels, classes = select_classes(raw.labels, raw.classes, spec.classes)
    keep = subsample(labels, spec.limit, spec.seed, stratify=spec.stratify)
    positions, labels = positions[keep], labels[keep]
    if isinstance(raw.images, FolderRows):  # a folder selection: decode only what was chosen
        raw, positions, labels = raw.images.decode_selected(positions, labels)
    if spec.split == OFFICIAL:
        parts = official_split(raw, positions, spec)
    else:
        parts = split_indices(
            labels, spec.split, spec.seed, stratify=spec.stratify, classes=classes
        )
    return SplitPlan(
        raw=raw,
        task=task,
        classes=classes,
        index=tuple(positions[part] for part in parts),  # type: ignore[arg-type]
        labels=tuple(labels[part] for part in parts),  # type: ignore[arg-type]
    )


def official_split(
    raw: RawData, positions: np.ndarray, spec: DataSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test as published: test = the official test images, val = a seeded
    ``OFFICIAL_VAL`` of the official train images, train = the rest (parts index positions)."""
    if raw.official_train is None:
        raise UserError(
            f"data.split 'official' needs a data set with published train/test files "
            f"(mnist, fashion-mnist); {spec.name} has none, give three fractions instead"
        )
    in_train = np.flatnonzero(positions < raw.official_train)
    test = np.flatnonzero(positions >= raw.official_train)
    shuffled = in_train[np.random.default_rng(spec.seed).permutation(len(in_train))]
    cut = round(len(in_train) * OFFICIAL_VAL)
    parts = (np.sort(shuffled[cut:]), np.sort(shuffled[:cut]), test)
    for name, part in zip(SPLIT_NAMES, parts, strict=True):
        if len(part) == 0:
            raise UserError(f"data.split 'official': the {name} split is empty (data.limit?)")
    return parts


def load_splits(
    spec: DataSpec | str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    opener: dl.Opener | None = None,
) -> DataSplits:
    """Load, subset, split and convert the data described by ``spec``.

    ``download``: None fetches missing public files unless ``$ROBUSTLAB_OFFLINE`` is set;
    False never touches the network. ``opener`` replaces ``urllib.request.urlopen``.
    """
    if isinstance(spec, str):
        spec = DataSpec(name=spec)
    plan = plan_splits(spec, data_dir, download=download, opener=opener)
    streamed = _float_bytes(plan, spec) > memory_budget()
    sets = [
        ImageSet(
            images=_split_images(plan.raw.images, index, spec, streamed),
            labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            classes=plan.classes,
        )
        for index, labels in zip(plan.index, plan.labels, strict=True)
    ]
    if streamed:
        log.info(
            "streaming %s: its float32 pixels (%.1f GB) exceed the memory budget (%.1f GB, $%s)",
            plan.raw.source,
            _float_bytes(plan, spec) / 1e9,
            memory_budget() / 1e9,
            ENV_BUDGET,
        )
    log.debug(
        "loaded %s: %s images, classes %s",
        plan.raw.source,
        "/".join(str(len(s)) for s in sets),
        plan.classes,
    )
    return DataSplits(
        *sets, spec=spec, source=plan.raw.source, task=plan.task, skipped=plan.raw.skipped
    )


def _float_bytes(plan: SplitPlan, spec: DataSpec) -> int:
    """Bytes of the float32 pixels of every split of ``plan``, as converted in memory."""
    _, height, width, native = plan.raw.images.shape
    size = spec.image_size
    per_image = (spec.channels or native) * (size or height) * (size or width) * 4
    return sum(len(index) for index in plan.index) * per_image


def _split_images(
    rows: Any, index: np.ndarray, spec: DataSpec, streamed: bool
) -> torch.Tensor | StreamedImages:
    if streamed:
        return StreamedImages(rows, index, channels=spec.channels, size=spec.image_size)
    return to_tensor(rows, index, channels=spec.channels, size=spec.image_size)


def dataset_info(
    spec: DataSpec | str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
) -> dict[str, Any]:
    """JSON-able facts for ``robustlab data info``: sizes per split, class counts, image shape.

    Equal to ``load_splits(spec).info()`` (plus the named set's description) without
    converting a single pixel.
    """
    if isinstance(spec, str):
        spec = DataSpec(name=spec)
    plan = plan_splits(spec, data_dir, download=download)
    _, height, width, channels = plan.raw.images.shape
    size = spec.image_size
    info = summary(
        spec,
        source=plan.raw.source,
        task=plan.task,
        classes=plan.classes,
        image_shape=(spec.channels or channels, size or height, size or width),
        split_labels={
            name: labels.tolist() for name, labels in zip(SPLIT_NAMES, plan.labels, strict=True)
        },
        skipped=plan.raw.skipped,
    )
    key = canonical_name(spec.name)
    if key is not None:
        named = DATASETS[key]
        info["dataset"] = {
            "name": named.name,
            "description": named.description,
            "licence": named.licence,
        }
    return info


def load_source(
    spec: DataSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    opener: dl.Opener | None = None,
) -> tuple[RawData, str | None]:
    """The validated raw arrays of ``spec.name`` and the task used."""
    if canonical_name(spec.name) is not None:
        return load_named(spec.name, spec.task, data_dir, download=download, opener=opener)
    shards = find_shards(spec.name, resolve_data_dir(data_dir))
    if shards is not None:
        _no_task(spec, "tar shards")
        return read_shards(shards, spec), None
    path = _find_path(spec.name, data_dir)
    if path.is_dir():
        if (path / "images.npy").exists():
            _no_task(spec, "an images.npy folder")
            return _read_npy_pair(path / "images.npy"), None
        _no_task(spec, "an image folder")
        return read_folder_source(path, spec), None
    if path.suffix.lower() == ".npz":
        return _read_npz_source(path, spec.task)
    if path.suffix.lower() == ".npy":
        _no_task(spec, "an .npy pair")
        return _read_npy_pair(path), None
    raise UserError(
        f"data.name {path} is not a supported source: give a folder of class sub-folders, "
        "a folder with images.npy + labels.npy, an .npz with images and labels, or "
        "WebDataset .tar shards"
    )


def _find_path(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(name).expanduser()
    if path.exists():
        return path
    if not path.is_absolute():
        inside = resolve_data_dir(data_dir) / path
        if inside.exists():
            return inside
    looks_like_path = os.sep in name or "/" in name or Path(name).suffix != ""
    if not looks_like_path:
        raise UserError(
            f"unknown data set '{name}'{suggestion(name.lower(), DATASETS)}; choose from: "
            f"{', '.join(DATASETS)}, or give the path of a folder, .npz or images.npy"
        )
    raise UserError(f"data path not found: {path} (data.name)")


def _no_task(spec: DataSpec, what: str) -> None:
    if spec.task is not None:
        raise UserError(
            f"data.task '{spec.task}' does not apply to {what} ({spec.name}), which has one "
            "labelling; leave task unset"
        )


# ---------------------------------------------------------------- generic readers


def _read_npz_source(path: Path, task: str | None) -> tuple[RawData, str | None]:
    keys = npz_keys(path)
    label_key = task or "labels"
    if "images" not in keys:
        raise UserError(
            f"{path} has no 'images' array; it holds: {', '.join(sorted(keys)) or 'nothing'}"
        )
    if label_key not in keys:
        candidates = [k for k in keys if k != "images" and not k.endswith("_names")]
        if task is not None:
            raise UserError(
                f"data.task '{task}': {path} has no such label array"
                f"{suggestion(task, candidates)}; label arrays: {', '.join(sorted(candidates))}"
            )
        raise UserError(
            f"{path} has no 'labels' array; it holds: {', '.join(sorted(keys))} "
            "(set data.task to the label array to use)"
        )
    names_key = f"{task}_names" if task and f"{task}_names" in keys else None
    if names_key is None and label_key == "labels" and "class_names" in keys:
        names_key = "class_names"
    return _npz_cached(str(path), file_stamp(path), label_key, names_key), task


@functools.lru_cache(maxsize=4)
def _npz_cached(
    path: str, stamp: tuple[int, int], label_key: str, names_key: str | None
) -> RawData:
    file = Path(path)
    images = read_npz_array(file, "images")
    labels = read_npz_array(file, label_key)
    names = read_npz_array(file, names_key) if names_key else None
    return make_raw(images, labels, names, path)


def _read_npy_pair(images_path: Path) -> RawData:
    folder = images_path.parent
    labels_path = folder / "labels.npy"
    if not labels_path.exists():
        raise UserError(f"{images_path} needs its labels in {labels_path} (not found)")
    names_path = next(
        (p for p in (folder / "class_names.npy", folder / "classes.txt") if p.exists()), None
    )
    return _npy_pair_cached(
        str(images_path),
        file_stamp(images_path),
        str(labels_path),
        file_stamp(labels_path),
        str(names_path) if names_path else None,
        file_stamp(names_path) if names_path else None,
    )


@functools.lru_cache(maxsize=4)
def _npy_pair_cached(
    images_path: str,
    images_stamp: tuple[int, int],
    labels_path: str,
    labels_stamp: tuple[int, int],
    names_path: str | None,
    names_stamp: tuple[int, int] | None,
) -> RawData:
    labels = read_npy(Path(labels_path))
    rows = open_npy_rows(Path(images_path))  # uint8 pixels are read by row, when used
    images = rows if rows is not None else read_npy(Path(images_path))
    names: Any = None
    if names_path and names_path.endswith(".npy"):
        names = read_npy(Path(names_path))
    elif names_path:
        try:
            text = Path(names_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read class names from {names_path}: {error}") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    source = str(Path(images_path).parent)
    if rows is None:
        return make_raw(images, labels, names, source)
    labels, classes = check_labelling(labels, names, len(rows), source)
    return RawData(images=rows, labels=labels, classes=classes, source=source)  # type: ignore[arg-type]


def clear_caches() -> None:
    """Drop every cached array (sources are re-read on next use)."""
    from robustlab.data import arrays, folder, idx, registry, tarshards

    arrays.clear_caches()
    idx._read_idx_cached.cache_clear()
    folder._read_folder_cached.cache_clear()
    tarshards._index_cached.cache_clear()
    registry._npz_task_cached.cache_clear()
    registry._idx_pool_cached.cache_clear()
    registry._digits_cached.cache_clear()
    _npz_cached.cache_clear()
    _npy_pair_cached.cache_clear()


__all__ = [
    "SplitPlan",
    "clear_caches",
    "dataset_info",
    "load_source",
    "load_splits",
    "plan_splits",
]
