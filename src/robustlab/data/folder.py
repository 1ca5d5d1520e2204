"""ImageFolder-style sources: ``ROOT/<class name>/<any depth>/<image file>``.

Classes are the sub-folders of ROOT in sorted order. Every non-hidden file under a class
folder is tried with PIL; a file PIL cannot decode (corrupt, truncated, not an image) is
skipped with a warning and counted, or refused when ``on_corrupt='error'``.
Images that are all grey stay grey (C = 1); if any is in colour all become RGB.
When ``image_size`` is given each image is resized with PIL's antialiased bilinear filter
while decoding; otherwise all images must already share one size.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from robustlab.data.arrays import RawData, make_raw
from robustlab.errors import UserError

log = logging.getLogger(__name__)

MAX_PIXELS = (
    1 << 26
)  # 67 M pixels (8192 x 8192): larger is a corrupt header or not a data set image
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan_folder(root: Path) -> tuple[list[str], list[list[Path]], list[Path]]:
    """Class names, the files of each class (sorted), and files lying loose in ROOT."""
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError as error:
        raise UserError(f"cannot read folder {root}: {error.strerror or error}") from None
    classes = [e.name for e in entries if _visible(e.name) and e.is_dir()]
    loose = [Path(e.path) for e in entries if _visible(e.name) and e.is_file()]
    if not classes:
        raise UserError(
            f"{root} has no class sub-folders; an image folder must look like "
            f"{root}/<class name>/<image files>"
        )
    files: list[list[Path]] = []
    for name in classes:
        found: list[Path] = []
        for folder, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            found.extend(Path(folder) / f for f in sorted(filenames) if _visible(f))
        files.append(found)
    return classes, files, loose


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:120]}" if lines else type(error).__name__


def _decode(path: Path, size: int | None) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8; any decoding problem raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, palette/transparency notes
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels is larger than {MAX_PIXELS} pixels")
            image.load()
            if image.mode in _GREY_MODES:
                if image.mode.startswith("I;16") or image.mode == "I":
                    array = np.asarray(image, dtype=np.float64)
                    image = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8))
                else:
                    image = image.convert("L")
            else:
                image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)


def read_folder(root: Path, image_size: int | None = None, on_corrupt: str = "skip") -> RawData:
    """Decode a class-per-folder tree (cached on every file's path, mtime and size)."""
    classes, files, loose = scan_folder(root)
    stamps = []  # (class index, path, mtime_ns, size): the cache key
    for index, group in enumerate(files):
        for path in group:
            try:
                stat = path.stat()
            except OSError:  # vanished or unreadable: the decoder reports it
                stamps.append((index, str(path), 0, -1))
                continue
            stamps.append((index, str(path), stat.st_mtime_ns, stat.st_size))
    if loose:
        log.warning(
            "%s: ignored %d file(s) outside class folders (e.g. %s)",
            root,
            len(loose),
            loose[0].name,
        )
    return _read_folder_cached(str(root), tuple(classes), tuple(stamps), image_size, on_corrupt)


@functools.lru_cache(maxsize=4)
def _read_folder_cached(
    root: str,
    classes: tuple[str, ...],
    stamps: tuple[tuple[int, str, int, int], ...],
    image_size: int | None,
    on_corrupt: str,
) -> RawData:
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[tuple[Path, str]] = []
    for label, name, _, _ in stamps:
        path = Path(name)
        try:
            array = _decode(path, image_size)
        except Exception as error:
            reason = _reason(error)
            if on_corrupt == "error":
                raise UserError(
                    f"cannot decode image {path} ({reason}); remove it, or use "
                    "on_corrupt='skip' to skip unreadable files"
                ) from None
            skipped.append((path, reason))
            continue
        images.append(array)
        labels.append(label)
    if skipped:
        log.warning(
            "%s: skipped %d unreadable file(s), e.g. %s (%s)",
            root,
            len(skipped),
            skipped[0][0],
            skipped[0][1],
        )
    if not images:
        raise UserError(f"{root}: no readable images found in its class folders (0 images)")
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(
            f"{root}: class folder '{empty[0]}' has no readable images; remove it or add images"
        )
    sizes = {array.shape[:2] for array in images}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3])
        raise UserError(
            f"{root}: images have different sizes ({shown}, ...); set image_size to resize "
            "them all to one square size"
        )
    if any(array.ndim == 3 for array in images):
        images = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in images]
    stacked = np.stack(images)
    return make_raw(stacked, np.asarray(labels, dtype=np.int64), list(classes), root, len(skipped))
