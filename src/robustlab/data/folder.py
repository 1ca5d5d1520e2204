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
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import IO

import numpy as np
from PIL import Image

from robustlab.data.arrays import RawData, make_raw
from robustlab.errors import UserError

log = logging.getLogger(__name__)

MAX_PIXELS = (
    1 << 26
)  # 67 M pixels (8192 x 8192): larger is a corrupt header or not a data set image
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


FOLLOW_OUTSIDE_ENV = "ROBUSTLAB_FOLLOW_LINKS_OUTSIDE"


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class _Walk:
    """What one scan has seen: followed folders and files by (device, inode), skipped links."""

    root: str  # real path of the data set's root
    claimed: list[str]  # real paths of the class folders: links into them are duplicates
    follow_outside: bool
    seen_dirs: set[tuple[int, int]] = field(default_factory=set)
    seen_files: set[tuple[int, int]] = field(default_factory=set)
    duplicates: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)

    def link_target(self, path: str) -> str | None:
        """The real target of a link when it may be followed, else None (and why is noted)."""
        target = os.path.realpath(path)
        if any(_inside(target, folder) for folder in self.claimed):
            self.duplicates.append(path)  # reached by its real path, under its own class
            return None
        if not _inside(target, self.root) and not self.follow_outside:
            self.outside.append(path)
            return None
        return target

    def first_visit(self, seen: set[tuple[int, int]], path: str, info: os.stat_result) -> bool:
        key = (info.st_dev, info.st_ino)
        if key in seen:
            self.duplicates.append(path)
            return False
        seen.add(key)
        return True

    def files(self, folder: str) -> list[Path]:
        """Every visible file below ``folder``, depth first in name order, each once."""
        found: list[Path] = []
        stack = [folder]
        while stack:
            current = stack.pop()
            try:
                entries = sorted(os.scandir(current), key=lambda entry: entry.name)
            except OSError:  # an unreadable sub-folder holds nothing we can use
                continue
            subdirs = []
            for entry in entries:
                if not _visible(entry.name):
                    continue
                if entry.is_symlink():
                    if not os.path.exists(entry.path):  # dangling or looping: counted unreadable
                        found.append(Path(entry.path))
                        continue
                    if self.link_target(entry.path) is None:
                        continue
                try:
                    info = entry.stat()  # follows a link; lstat-cheap for plain entries
                except OSError:  # vanished meanwhile: the decoder counts it unreadable
                    found.append(Path(entry.path))
                    continue
                if S_ISDIR(info.st_mode):
                    if self.first_visit(self.seen_dirs, entry.path, info):
                        subdirs.append(entry.path)
                elif self.first_visit(self.seen_files, entry.path, info):
                    found.append(Path(entry.path))  # FIFOs etc. too: the decoder skips them
            stack.extend(reversed(subdirs))
        return found


def _class_folder(walk: _Walk, root: Path, name: str) -> str:
    """The real path of class folder ``name``; a class that is a link must be a new folder."""
    path = str(root / name)
    if not os.path.islink(path):
        return os.path.realpath(path)
    target = os.path.realpath(path)
    if any(_inside(target, folder) or _inside(folder, target) for folder in walk.claimed):
        raise UserError(
            f"{root}: class folder '{name}' is a link into another class folder ({target}); "
            "each image must belong to one class"
        )
    if not _inside(target, walk.root) and not walk.follow_outside:
        raise UserError(
            f"{root}: class folder '{name}' is a link to {target}, outside the data set; set "
            f"{FOLLOW_OUTSIDE_ENV}=1 to follow links outside it"
        )
    return target


def scan_folder(root: Path) -> tuple[list[str], list[list[Path]], list[Path]]:
    """Class names, the files of each class (sorted), and files lying loose in ROOT.

    Links never duplicate, re-label or loop: a link into a class folder is skipped (its target
    is read under its own class), a link outside ROOT is followed only when
    ``$ROBUSTLAB_FOLLOW_LINKS_OUTSIDE`` is set, and every folder and file is read once (by
    device and inode).
    """
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
    follow = os.environ.get(FOLLOW_OUTSIDE_ENV, "").strip().lower() not in ("", "0", "false", "no")
    walk = _Walk(os.path.realpath(root), [], follow)
    walk.seen_dirs.add(_dir_key(walk.root))
    # Plain class folders first, so that a class that is a link cannot claim one of them.
    for name in sorted(classes, key=lambda name: os.path.islink(root / name)):
        walk.claimed.append(_class_folder(walk, root, name))
    walk.seen_dirs.update(_dir_key(folder) for folder in walk.claimed)
    files = [walk.files(str(root / name)) for name in classes]
    _report_skipped_links(root, walk)
    return [printable(name) for name in classes], files, loose


def printable(name: str) -> str:
    """A folder name as a class name every writer and plot can take: bytes that are not UTF-8
    (surrogate escapes from ``os.fsdecode``) become visible ``\\udcXX`` escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _dir_key(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _report_skipped_links(root: Path, walk: _Walk) -> None:
    if walk.duplicates:
        log.warning(
            "%s: skipped %d link(s) or hard link(s) to images or folders already in the data "
            "set (e.g. %s)",
            root,
            len(walk.duplicates),
            walk.duplicates[0],
        )
    if walk.outside:
        log.warning(
            "%s: skipped %d link(s) pointing outside the data set (e.g. %s); set %s=1 to "
            "follow them",
            root,
            len(walk.outside),
            walk.outside[0],
            FOLLOW_OUTSIDE_ENV,
        )


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:120]}" if lines else type(error).__name__


def _open_regular(path: Path) -> IO[bytes]:
    """Open a regular file for reading; a FIFO, socket or device raises without blocking."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    try:
        mode = os.fstat(fd).st_mode
        if not S_ISREG(mode):
            raise ValueError(f"not a regular file (mode {stat.filemode(mode)})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decode(path: Path, size: int | None) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8; any decoding problem raises."""
    with warnings.catch_warnings(), _open_regular(path) as handle:
        warnings.simplefilter("ignore")  # DecompressionBombWarning, palette/transparency notes
        with Image.open(handle) as image:
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
                info = path.stat()
            except OSError:  # vanished or unreadable: the decoder reports it
                stamps.append((index, str(path), 0, -1))
                continue
            stamps.append((index, str(path), info.st_mtime_ns, info.st_size))
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
    check_one_size(images, root)
    if any(array.ndim == 3 for array in images):
        images = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in images]
    stacked = np.stack(images)
    return make_raw(stacked, np.asarray(labels, dtype=np.int64), list(classes), root, len(skipped))


def check_one_size(arrays: list[np.ndarray], root: Path | str) -> None:
    """Refuse decoded images of several sizes: they cannot form one (N, H, W, C) array."""
    sizes = {array.shape[:2] for array in arrays}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3])
        raise UserError(
            f"{root}: images have different sizes ({shown}, ...); set image_size to resize "
            "them all to one square size"
        )
