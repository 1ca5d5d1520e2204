"""Raw arrays: safe ``.npy`` / ``.npz`` reading and validation of images and labels.

Everything that comes from a file is checked here once, and turned into ``RawData``:
images ``(N, H, W, C)`` uint8 (0..255) or float32 (already in [0, 1]), labels int64, class
names. Arrays in ``RawData`` are read-only because they are shared through the caches.

``.npy`` data is parsed by hand from its header (dtype, shape, order) so that a corrupt or
hostile file can only produce a ``UserError``: no pickles, and no allocation larger than the
bytes actually present.
"""

from __future__ import annotations

import functools
import logging
import lzma
import os
import struct
import tokenize
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from robustlab.budgets import check_budget
from robustlab.errors import UserError

log = logging.getLogger(__name__)

# What a broken .npy / .npz / zip can raise while being parsed (BadZipFile is a ValueError
# subclass in recent Pythons but not in all; NotImplementedError: unknown zip compression;
# RuntimeError: encrypted member; SyntaxError / TokenError: a .npy header that is not a
# Python literal, which numpy tokenizes).
READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    RuntimeError,
    NotImplementedError,
    SyntaxError,
    tokenize.TokenError,
    TypeError,
    OverflowError,
    MemoryError,
    struct.error,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
)


@dataclass(frozen=True, eq=False)
class RawData:
    """A whole data set as validated arrays, before class selection, split and conversion."""

    images: np.ndarray  # (N, H, W, C) uint8 or float32 in [0, 1], read-only
    labels: np.ndarray  # (N,) int64 in [0, len(classes)), read-only
    classes: tuple[str, ...]
    source: str
    skipped: int = 0  # files skipped as unreadable (folder sources)
    official_train: int | None = None  # images[:official_train] = the published train set


def file_stamp(path: Path) -> tuple[int, int]:
    """``(mtime_ns, size)``: part of every cache key, so an edited file is read again."""
    try:
        stat = path.stat()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    return stat.st_mtime_ns, stat.st_size


# ---------------------------------------------------------------- .npy parsing


def npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` at ``handle``'s position, which is left
    at the first data byte; None for a format version numpy does not document."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(handle)
    return None


def read_npy_stream(handle: IO[bytes], available: int, what: str) -> np.ndarray:
    """Parse one ``.npy`` from ``handle`` holding ``available`` bytes; read-only result."""
    try:
        header = npy_header(handle)
        if header is None:
            raise UserError(f"{what}: unsupported .npy format version")
        shape, fortran_order, dtype = header
    except UserError:
        raise
    except READ_ERRORS as error:
        raise UserError(f"{what} is not a valid .npy array ({_reason(error)})") from None
    if dtype.hasobject:
        raise UserError(
            f"{what} holds Python objects (a pickle), which robustlab does not load; "
            "save plain numeric or string arrays"
        )
    if dtype.itemsize == 0:
        raise UserError(f"{what} has a zero-size dtype {dtype}")
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * dtype.itemsize
    if nbytes > available:
        raise UserError(
            f"{what} is truncated or corrupt: its header promises {nbytes} bytes of data, "
            f"the file holds at most {available}"
        )
    # Before a byte is read or decompressed: an npz of zeros inflates 1000-fold.
    check_budget("array_bytes", nbytes, f"{what}: its array data", " bytes")
    try:
        data = handle.read(nbytes)
    except READ_ERRORS as error:
        raise UserError(f"{what} is corrupt ({_reason(error)})") from None
    if len(data) != nbytes:
        raise UserError(f"{what} is truncated: expected {nbytes} bytes, got {len(data)}")
    array = np.frombuffer(data, dtype=dtype, count=count)  # read-only view of the bytes
    return array.reshape(shape, order="F" if fortran_order else "C")


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def read_npy(path: Path) -> np.ndarray:
    """Read a ``.npy`` file (cached on path, mtime and size)."""
    return _read_npy_cached(str(path), file_stamp(path))


@functools.lru_cache(maxsize=8)
def _read_npy_cached(path: str, stamp: tuple[int, int]) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            return read_npy_stream(handle, stamp[1], path)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def npz_keys(path: Path) -> list[str]:
    """The array names in an ``.npz`` (without the ``.npy`` suffix)."""
    return list(_npz_members(str(path), file_stamp(path)))


@functools.lru_cache(maxsize=32)
def _npz_members(path: str, stamp: tuple[int, int]) -> dict[str, tuple[str, int]]:
    """``{key: (member name, uncompressed size)}`` of an ``.npz``."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {}
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    members[info.filename[: -len(".npy")]] = (info.filename, info.file_size)
            return members
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except READ_ERRORS as error:
        raise UserError(f"{path} is not a readable .npz archive ({_reason(error)})") from None


def read_npz_array(path: Path, key: str) -> np.ndarray:
    """One array of an ``.npz`` (cached per member on path, mtime and size)."""
    return _read_npz_member(str(path), file_stamp(path), key)


@functools.lru_cache(maxsize=16)
def _read_npz_member(path: str, stamp: tuple[int, int], key: str) -> np.ndarray:
    members = _npz_members(path, stamp)
    if key not in members:
        raise UserError(
            f"{path} has no array '{key}'; it holds: {', '.join(sorted(members)) or 'nothing'}"
        )
    member, size = members[key]
    what = f"{path} (array '{key}')"
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
            return read_npy_stream(handle, size, what)
    except UserError:
        raise
    except READ_ERRORS as error:
        raise UserError(f"{what} is corrupt ({_reason(error)})") from None


def clear_caches() -> None:
    """Forget every cached array (the caches are keyed on mtime, so this is rarely needed)."""
    _read_npy_cached.cache_clear()
    _npz_members.cache_clear()
    _read_npz_member.cache_clear()


# ---------------------------------------------------------------- validation


def to_nhwc(images: np.ndarray, what: str) -> np.ndarray:
    """Return images as ``(N, H, W, C)`` with C in {1, 3}; accepts (N, H, W) and (N, C, H, W)."""
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4:
        if images.shape[-1] in (1, 3):
            return images
        if images.shape[1] in (1, 3):  # channels-first, as torch tensors are saved
            return np.moveaxis(images, 1, -1)
        raise UserError(
            f"{what}: images must have 1 (grey) or 3 (RGB) channels, got shape "
            f"{tuple(images.shape)} ({images.shape[-1]} channels in (N, H, W, C) order)"
        )
    raise UserError(
        f"{what}: images must be (N, H, W) grey or (N, H, W, C) with C = 1 or 3, "
        f"got shape {tuple(images.shape)}"
    )


def check_images(images: np.ndarray, what: str) -> np.ndarray:
    """Validate pixel values and shape; returns (N, H, W, C) uint8 or float32, read-only."""
    if not isinstance(images, np.ndarray):
        raise UserError(f"{what}: images must be an array, got {type(images).__name__}")
    images = to_nhwc(images, what)
    n, height, width = images.shape[:3]
    if n == 0:
        raise UserError(f"{what}: the data set is empty (0 images)")
    if height == 0 or width == 0:
        raise UserError(f"{what}: images have zero size {height}x{width}")
    kind = images.dtype.kind
    if kind == "u" and images.dtype.itemsize == 1:
        out = images
    elif kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise UserError(f"{what}: integer pixels must be in 0..255, got values {low}..{high}")
        out = images.astype(np.uint8)
    elif kind == "f":
        if images.dtype.itemsize > 8:
            images = images.astype(np.float64)
        finite = np.isfinite(images)
        if not finite.all():
            bad = int(images.size - np.count_nonzero(finite))
            raise UserError(f"{what}: {bad} pixel values are NaN or infinite")
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise UserError(
                f"{what}: float pixels must be in [0, 1], got values {low:g}..{high:g} "
                "(save uint8 0..255, or divide by 255)"
            )
        out = images.astype(np.float32, copy=False)
    else:
        raise UserError(
            f"{what}: images must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}"
        )
    if out.flags.writeable:
        out = out.view()
        out.flags.writeable = False
    return out


def check_labels(labels: np.ndarray, n_images: int, what: str) -> np.ndarray:
    """Validate labels: integers >= 0, one per image; returns int64 (N,), read-only."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UserError(f"{what}: labels must be a 1-D array, got shape {tuple(labels.shape)}")
    if len(labels) != n_images:
        more_or_less = "fewer" if len(labels) < n_images else "more"
        raise UserError(
            f"{what}: {len(labels)} labels for {n_images} images ({more_or_less} labels than "
            "images); there must be exactly one label per image"
        )
    kind = labels.dtype.kind
    if kind not in "biuf":
        raise UserError(f"{what}: labels must be integer class indices, got dtype {labels.dtype}")
    if kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise UserError(f"{what}: labels must be whole numbers (class indices)")
    if len(labels):
        low, top = labels.min().item(), labels.max().item()  # Python numbers: no overflow
        if low < 0:
            raise UserError(f"{what}: labels must be >= 0, got {low:g}")
        # Labels are class indices: a label of 99999 implies 100,000 classes, a huge model
        # and a K x K confusion matrix, so it is refused before anything is built.
        check_budget("classes", top + 1, f"{what}: the number of classes its labels imply")
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return labels


def check_class_names(names: np.ndarray | None, labels: np.ndarray, what: str) -> tuple[str, ...]:
    """Class names from an array (or '0', '1', ... when None); every label must have one."""
    top = int(labels.max(initial=0))
    if names is None:
        return tuple(str(i) for i in range(top + 1))
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise UserError(f"{what}: class_names must be a 1-D array of strings")
    decoded = []
    for name in names.tolist():
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{what}: class_names are not valid UTF-8") from None
        decoded.append(str(name))
    return check_name_list(decoded, top, what)


def check_name_list(names: list[str], top_label: int, what: str) -> tuple[str, ...]:
    if not names or any(not name.strip() for name in names):
        raise UserError(f"{what}: class names must be non-empty strings")
    check_budget("classes", len(names), f"{what}: the number of class names")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise UserError(f"{what}: class names must be unique, '{repeated[0]}' repeats")
    if top_label >= len(names):
        raise UserError(
            f"{what}: label {top_label} has no class name (only {len(names)} class names given)"
        )
    return tuple(names)


def make_raw(
    images: np.ndarray,
    labels: np.ndarray,
    names: np.ndarray | list[str] | tuple[str, ...] | None,
    source: str | os.PathLike[str],
    skipped: int = 0,
) -> RawData:
    """Validate images, labels and class names together."""
    what = str(source)
    images = check_images(images, what)
    labels, classes = check_labelling(labels, names, len(images), what)
    if len(np.unique(labels)) < 2:
        log.warning(
            "%s: every image has the same class (%s): accuracy is trivially 1 and no attack "
            "can succeed, so results on it cannot mean much",
            what,
            classes[int(labels[0])],
        )
    return RawData(images=images, labels=labels, classes=classes, source=what, skipped=skipped)


def check_labelling(
    labels: np.ndarray,
    names: np.ndarray | list[str] | tuple[str, ...] | None,
    n_images: int,
    what: str,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Validated labels and class names of ``n_images`` images (also for streamed sources)."""
    labels = check_labels(labels, n_images, what)
    if isinstance(names, list | tuple):
        return labels, check_name_list(list(names), int(labels.max(initial=0)), what)
    return labels, check_class_names(names, labels, what)
