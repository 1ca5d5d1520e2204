"""Image folders at scale: decide from file headers, decode only what is used, or decode once.

Three ways a folder source is read (``read_folder_source``), chosen without decoding a pixel:

1. a **prepared cache** (``robustlab data prepare PATH``) when one exists for the folder and
   image size: uint8 ``.npy`` shards read by row (``NpyRows``), nothing decoded at all;
2. a **selection** (``data.limit`` or ``data.classes``): files are listed and their headers
   read, the subset is chosen from that list, and only the chosen files are decoded;
3. otherwise the whole folder is decoded as before (``folder.read_folder``).

Before anything is decoded the decoded size (from the headers) is checked against the memory
budget (``stream.memory_budget``): a folder too large to decode in memory is refused with one
line that says how to prepare it instead.

A prepared cache is a folder (under ``$ROBUSTLAB_CACHE_DIR``, else
``~/.cache/robustlab/prepared``) holding ``manifest.json`` and ``shard-NNNNN.npy`` /
``labels-NNNNN.npy`` pairs. The manifest records the source's fingerprint (every file's path,
size and mtime), the image size, classes, and each finished shard's SHA-256. Shards are written
atomically one at a time, so a killed preparation resumes at the first missing shard; a source
that changed since is refused as stale (never mixed), as is a cache of another format version
or of another folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robustlab.data.arrays import RawData, check_labelling
from robustlab.data.folder import (
    _GREY_MODES,
    MAX_PIXELS,
    _decode,
    _reason,
    check_one_size,
    read_folder,
    scan_folder,
)
from robustlab.data.stream import ENV_BUDGET, NpyRows, memory_budget, open_npy_rows
from robustlab.errors import UserError
from robustlab.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

FORMAT = "robustlab-prepared"
FORMAT_VERSION = 1
ENV_CACHE_DIR = "ROBUSTLAB_CACHE_DIR"
MANIFEST = "manifest.json"
SHARD_SIZE = 1024  # images per shard: the unit of resuming and of checksumming

Stamp = tuple[int, str, int, int]  # (class index, path, mtime_ns, size)


@dataclass(frozen=True)
class FolderIndex:
    """A folder source as listed: files whose header reads, their labels, decoded shape."""

    root: Path
    classes: tuple[str, ...]
    stamps: tuple[Stamp, ...]  # every file found: the source's fingerprint
    files: tuple[str, ...]  # those whose header is readable
    labels: np.ndarray
    areas: np.ndarray  # decoded H * W of each readable file (after resizing)
    shape: tuple[int, int, int]  # decoded (H, W, C); H = W = 0 when sizes differ
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of unreadable headers


def folder_stamps(root: Path) -> tuple[tuple[str, ...], tuple[Stamp, ...]]:
    """Class names and ``(class, path, mtime_ns, size)`` of every file, as ``read_folder`` keys."""
    classes, files, _ = scan_folder(root)
    stamps = []
    for index, group in enumerate(files):
        for path in group:
            try:
                stat = path.stat()
            except OSError:
                stamps.append((index, str(path), 0, -1))
                continue
            stamps.append((index, str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(classes), tuple(stamps)


def _header(path: str) -> tuple[int, int, bool]:
    """``(width, height, is_grey)`` from the file's header alone (no pixel is decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels is larger than {MAX_PIXELS} pixels")
            return width, height, image.mode in _GREY_MODES


def _unreadable(path: str, reason: str) -> UserError:
    """The one line for an image that cannot be decoded under on_corrupt='error'."""
    return UserError(
        f"cannot decode image {path} ({reason}); remove it, or use on_corrupt='skip' "
        "(--on-corrupt skip) to skip unreadable files"
    )


def index_folder(root: Path, image_size: int | None, on_corrupt: str) -> FolderIndex:
    """List a folder and read every header: what can be decided before decoding."""
    classes, stamps = folder_stamps(root)
    files, labels, areas, sizes, skipped = [], [], [], set(), []
    colour = False
    for label, name, _, _ in stamps:
        try:
            width, height, grey = _header(name)
        except Exception as error:
            if on_corrupt == "error":
                raise _unreadable(name, _reason(error)) from None
            skipped.append((name, _reason(error)))
            continue
        files.append(name)
        labels.append(label)
        areas.append(image_size * image_size if image_size else width * height)
        sizes.add((height, width))
        colour = colour or not grey
    if not files:
        raise UserError(f"{root}: no readable images found in its class folders (0 images)")
    height, width = (image_size, image_size) if image_size else (0, 0)
    if not image_size and len(sizes) == 1:
        height, width = sizes.pop()
    return FolderIndex(
        root=root,
        classes=classes,
        stamps=stamps,
        files=tuple(files),
        labels=np.asarray(labels, dtype=np.int64),
        areas=np.asarray(areas, dtype=np.int64),
        shape=(height, width, 3 if colour else 1),
        skipped=tuple(skipped),
    )


def check_decode_budget(index: FolderIndex, positions: np.ndarray | None = None) -> None:
    """Refuse to decode more uint8 pixels than the memory budget allows, before decoding."""
    areas = index.areas if positions is None else index.areas[positions]
    count, total = len(areas), int(areas.sum()) * index.shape[2]
    budget, root = memory_budget(), index.root
    if total > budget:
        raise UserError(
            f"{root}: decoding {count} images needs {total / 1e9:.2f} GB of pixels, more than "
            f"the memory budget of {budget / 1e9:.2f} GB (${ENV_BUDGET}); set data.image_size "
            f"or data.limit, or run `robustlab data prepare {root}` to stream it from disk"
        )


class FolderRows:
    """Files of an indexed folder, decoded only when selected (``decode_selected``)."""

    def __init__(self, index: FolderIndex, image_size: int | None, on_corrupt: str) -> None:
        self.index = index
        self.image_size = image_size
        self.on_corrupt = on_corrupt
        self.shape = (len(index.files), *index.shape)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.index.files)

    def decode_selected(
        self, positions: np.ndarray, labels: np.ndarray
    ) -> tuple[RawData, np.ndarray, np.ndarray]:
        """Decode the files at ``positions``: a RawData of those that decode, their new
        positions (0..k-1) and labels. Unreadable ones are skipped and counted as before."""
        index = self.index
        check_decode_budget(index, positions)
        paths = [index.files[p] for p in positions.tolist()]
        arrays, failed = decode_files(paths, self.image_size, self.on_corrupt)
        kept = np.asarray([k for k, a in enumerate(arrays) if a is not None], dtype=np.int64)
        if len(kept) == 0:
            raise UserError(f"{index.root}: none of the selected images could be decoded")
        images = stack_images([arrays[k] for k in kept.tolist()], index.root, index.shape[2])
        raw = RawData(
            images=images,
            labels=index.labels,  # unused after selection; kept for info
            classes=index.classes,
            source=str(index.root),
            skipped=len(index.skipped) + failed,
        )
        return raw, np.arange(len(kept)), labels[kept]


def decode_files(
    paths: Sequence[str], image_size: int | None, on_corrupt: str
) -> tuple[list[np.ndarray | None], int]:
    """Decode ``paths`` in order: arrays (None where unreadable) and the number that failed."""
    arrays: list[np.ndarray | None] = []
    failed: list[tuple[str, str]] = []
    for path in paths:
        try:
            arrays.append(_decode(Path(path), image_size))
        except Exception as error:
            if on_corrupt == "error":
                raise _unreadable(path, _reason(error)) from None
            failed.append((path, _reason(error)))
            arrays.append(None)
    if failed:
        log.warning("skipped %d unreadable file(s), e.g. %s (%s)", len(failed), *failed[0])
    return arrays, len(failed)


def stack_images(arrays: list[np.ndarray], root: Path, channels: int) -> np.ndarray:
    """One (N, H, W, C) uint8 array: grey repeated to RGB when the folder has colour."""
    check_one_size(arrays, root)
    if channels == 3:
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    stacked = np.stack(arrays)
    stacked = stacked if stacked.ndim == 4 else stacked[..., None]
    stacked.flags.writeable = False
    return stacked


def read_folder_source(root: Path, spec: Any) -> RawData:
    """The RawData of a folder source for ``spec`` (see the module docstring)."""
    prepared = open_prepared(root, spec.image_size, spec.on_corrupt)
    if prepared is not None:
        return prepared
    index = index_folder(root, spec.image_size, spec.on_corrupt)
    if spec.limit is not None or spec.classes is not None:
        rows = FolderRows(index, spec.image_size, spec.on_corrupt)
        return RawData(
            images=rows,  # type: ignore[arg-type]
            labels=index.labels,
            classes=index.classes,
            source=str(root),
            skipped=len(index.skipped),
        )
    check_decode_budget(index)
    return read_folder(root, spec.image_size, spec.on_corrupt)


# ---------------------------------------------------------------- the prepared cache


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "robustlab" / "prepared")


def cache_dir(root: Path, image_size: int | None) -> Path:
    """Where the prepared cache of ``root`` at ``image_size`` lives (one per pair)."""
    source = str(root.resolve())
    key = hashlib.sha256(f"{source}\0{image_size}".encode()).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", root.resolve().name)[:40] or "data"
    return cache_root() / f"{label}-{image_size or 'native'}-{key}"


def fingerprint(stamps: Sequence[Stamp]) -> str:
    return hashlib.sha256(json.dumps(list(stamps)).encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path, root: Path, image_size: int | None) -> dict[str, Any] | None:
    """The manifest of a cache folder, refused when it is not one for this source."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{folder} is not a robustlab prepared cache; remove it")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"prepared cache {folder} has format version {manifest.get('format_version')!r}, "
            f"this robustlab reads {FORMAT_VERSION}; remove it and prepare again"
        )
    if manifest.get("source") != str(root.resolve()) or manifest.get("image_size") != image_size:
        raise UserError(
            f"prepared cache {folder} belongs to {manifest.get('source')} at image size "
            f"{manifest.get('image_size')}, not {root.resolve()} at {image_size}; remove it"
        )
    return manifest


def open_prepared(root: Path, image_size: int | None, on_corrupt: str) -> RawData | None:
    """The prepared cache of ``root`` as RawData read by row, or None when there is none.

    A stale or unfinished cache is refused (one line saying how to rebuild it), never mixed.
    """
    folder = cache_dir(root, image_size)
    manifest = _read_manifest(folder, root, image_size)
    if manifest is None:
        return None
    classes, stamps = folder_stamps(root)
    if manifest["fingerprint"] != fingerprint(stamps) or tuple(manifest["classes"]) != classes:
        raise UserError(
            f"the prepared cache of {root} ({folder}) is stale: files were added, removed or "
            f"changed since it was made; run `robustlab data prepare {root}` to rebuild it"
        )
    if not manifest.get("complete"):
        raise UserError(
            f"the prepared cache of {root} is unfinished; run `robustlab data prepare {root}` "
            "to finish it"
        )
    skipped = [*manifest["skipped"], *(i for s in manifest["shards"] for i in s["skipped"])]
    if on_corrupt == "error" and skipped:
        raise UserError(
            f"{root}: {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}; remove them, "
            "or use on_corrupt='skip'"
        )
    kept = [shard for shard in manifest["shards"] if shard["images"]]
    shards = [_open_shard(folder / shard["file"]) for shard in kept]
    labels = np.concatenate([np.load(folder / s["labels"]) for s in kept])
    labels, classes_checked = check_labelling(labels, list(classes), len(labels), str(root))
    return RawData(
        images=ShardRows(shards),  # type: ignore[arg-type]
        labels=labels,
        classes=classes_checked,
        source=str(root),
        skipped=len(skipped),
    )


def _open_shard(path: Path) -> NpyRows:
    rows = open_npy_rows(path)
    if rows is None:
        raise UserError(f"prepared shard {path} is missing or corrupt; prepare again")
    return rows


class ShardRows:
    """Rows of several uint8 shards as one (N, H, W, C) source."""

    def __init__(self, shards: list[NpyRows]) -> None:
        self.shards = shards
        self.starts = np.cumsum([0, *(len(s) for s in shards)])
        self.shape = (int(self.starts[-1]), *shards[0].shape[1:])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, positions: Any) -> np.ndarray:
        index = np.atleast_1d(np.arange(self.shape[0])[positions])
        out = np.empty((len(index), *self.shape[1:]), dtype=np.uint8)
        shard_of = np.searchsorted(self.starts, index, side="right") - 1
        for shard in np.unique(shard_of).tolist():
            where = np.flatnonzero(shard_of == shard)
            out[where] = self.shards[shard][index[where] - self.starts[shard]]
        return out


def _decode_chunk(job: tuple[list[str], int | None]) -> list[tuple[np.ndarray | None, str]]:
    """Worker: decode one shard's files (errors as reasons; the parent decides)."""
    paths, image_size = job
    out: list[tuple[np.ndarray | None, str]] = []
    for path in paths:
        try:
            out.append((_decode(Path(path), image_size), ""))
        except Exception as error:
            out.append((None, _reason(error)))
    return out


def prepare_folder(
    root: Path, image_size: int | None, on_corrupt: str = "skip", workers: int | None = None
) -> Path:
    """Decode (and resize) ``root`` once into a prepared cache; resumes an unfinished one."""
    index = index_folder(root, image_size, on_corrupt)
    if not index.shape[0]:
        raise UserError(
            f"{root}: images have different sizes; set --image-size to resize them all to one "
            "square size"
        )
    folder = cache_dir(root, image_size)
    old = _read_manifest(folder, root, image_size)
    stamp = fingerprint(index.stamps)
    if old is not None and old["fingerprint"] != stamp:
        log.info("%s changed since it was prepared: rebuilding %s", root, folder)
        old = None
    done = {s["index"]: s for s in (old or {}).get("shards", []) if _shard_intact(folder, s)}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": str(root.resolve()),
        "image_size": image_size,
        "classes": list(index.classes),
        "fingerprint": stamp,
        "files": len(index.stamps),
        "shape": list(index.shape),
        "shard_size": SHARD_SIZE,
        "skipped": [list(item) for item in index.skipped],
        "complete": False,
        "shards": [done[k] for k in sorted(done)],
    }
    write_json(folder / MANIFEST, manifest)
    starts = range(0, len(index.files), SHARD_SIZE)
    jobs = [
        (k, list(index.files[s : s + SHARD_SIZE]), index.labels[s : s + SHARD_SIZE])
        for k, s in enumerate(starts)
        if k not in done
    ]
    processes = workers or os.cpu_count() or 1
    # fork: workers only decode with PIL, and a spawned one would import torch again first
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(processes) if processes > 1 else _Serial() as pool:
        decoded = pool.imap(_decode_chunk, [(paths, image_size) for _, paths, _ in jobs])
        for (k, paths, labels), results in zip(jobs, decoded, strict=True):
            manifest["shards"].append(
                _write_shard(folder, k, paths, labels, results, index, on_corrupt)
            )
            manifest["shards"].sort(key=lambda shard: shard["index"])
            write_json(folder / MANIFEST, manifest)  # a kill now keeps this shard
    manifest["complete"] = True
    write_json(folder / MANIFEST, manifest)
    return folder


class _Serial:
    """``Pool``'s ``imap`` in this process (one core, or tests)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, fn: Any, jobs: list[Any]) -> Any:
        return map(fn, jobs)


def _write_shard(
    folder: Path,
    k: int,
    paths: list[str],
    labels: np.ndarray,
    results: list[tuple[np.ndarray | None, str]],
    index: FolderIndex,
    on_corrupt: str,
) -> dict[str, Any]:
    """Write shard ``k`` atomically; its manifest entry (with checksums)."""
    pairs = zip(results, labels.tolist(), strict=True)
    good = [(array, label) for (array, _), label in pairs if array is not None]
    skipped = []
    for path, (array, reason) in zip(paths, results, strict=True):
        if array is None:
            if on_corrupt == "error":
                raise _unreadable(path, reason)
            skipped.append([path, reason])
    height, width, channels = index.shape
    if good:
        images = stack_images([a for a, _ in good], index.root, channels)
    else:
        images = np.zeros((0, height, width, channels), dtype=np.uint8)
    entry: dict[str, Any] = {
        "index": k, "file": f"shard-{k:05d}.npy", "labels": f"labels-{k:05d}.npy",
        "skipped": skipped,
    }  # fmt: skip
    label_array = np.asarray([label for _, label in good], dtype=np.int64)
    for name, array in ((entry["file"], images), (entry["labels"], label_array)):
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, array)
    entry["images"] = len(good)
    entry["sha256"] = _sha256(folder / entry["file"])
    entry["labels_sha256"] = _sha256(folder / entry["labels"])
    return entry


def _shard_intact(folder: Path, shard: dict[str, Any]) -> bool:
    """A finished shard whose files are still there and match their checksums."""
    try:
        return (
            _sha256(folder / shard["file"]) == shard["sha256"]
            and _sha256(folder / shard["labels"]) == shard["labels_sha256"]
        )
    except (OSError, KeyError, TypeError):
        return False
