"""WebDataset tar shards as a data source: ``SHARDS/*.tar``, one ``.tar``, or a brace pattern.

A WebDataset shard is a plain tar whose members are grouped into samples by key (the member
path up to the first dot of its file name): ``0001.jpg`` + ``0001.cls`` is one sample, its
image and its class index as text. Accepted image extensions: ``IMAGE_EXTENSIONS``; the label:
``.cls`` (also ``.cls.txt``, ``.label``). Class names come from a ``classes.txt`` (one a line)
next to the shards, else they are the indices ``"0"``, ``"1"``, ...

``data.name`` may be a folder holding ``*.tar`` (and no sub-folders), a ``.tar`` file, or a
pattern such as ``shards/train-{000..009}.tar`` (expanded like the shell's brace ranges).

Read with the standard library (``tarfile``), not the ``webdataset`` package: that one walks
shards as a sequential stream, while splits, ``limit``, class subsets and torchrun sharding
here pick images by position. An uncompressed tar stores each member contiguously, so one
pass over the headers gives every image's offset and size; after that an image is one
``os.pread`` and a decode, in whichever process (DataLoader worker, rank) needs it. The index
holds offsets, labels and sizes only, never pixels, so a shard set streams when it is over the
memory budget like any other source (``stream.StreamedImages``).

Corrupt samples: an image whose header does not read, or a sample without image or label, is
skipped and counted (``on_corrupt='skip'``) or refused (``'error'``) while indexing, before any
pixel is decoded. An image whose header reads but whose body is broken is found only when it is
decoded; that stops the command with one line naming the member (remove it from the shard).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robustlab.data.arrays import RawData, check_labelling, file_stamp
from robustlab.data.folder import _GREY_MODES, MAX_PIXELS, _reason
from robustlab.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "pgm", "bmp", "webp", "tif", "tiff")
LABEL_EXTENSIONS = ("cls", "cls.txt", "label")
CLASS_NAMES_FILE = "classes.txt"
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{00..02}.tar`` -> ``a-00.tar, a-01.tar, a-02.tar`` (zero padding kept, any count)."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    low, high = match.group(1), match.group(2)
    if int(high) < int(low):
        raise UserError(f"data.name {pattern}: the range {{{low}..{high}}} is empty")
    width = len(low) if low.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        expanded
        for number in range(int(low), int(high) + 1)
        for expanded in expand_braces(f"{head}{number:0{width}d}{tail}")
    ]


def find_shards(name: str, data_dir: Path) -> list[Path] | None:
    """The shard files ``name`` stands for, or None when it is not a tar shard source.

    Relative names are tried as given, then under ``data_dir`` (as every path source).
    """
    if _BRACES.search(name):
        for base in (Path(), data_dir):
            paths = [base / Path(p).expanduser() for p in expand_braces(name)]
            if all(p.is_file() for p in paths):
                return paths
        missing = next(p for p in expand_braces(name) if not Path(p).expanduser().is_file())
        raise UserError(f"data.name {name}: shard {missing} not found")
    for path in (Path(name).expanduser(), data_dir / name):
        if path.is_file() and path.suffix.lower() == ".tar":
            return [path]
        if path.is_dir():
            return _folder_shards(path)
    return None


def _folder_shards(folder: Path) -> list[Path] | None:
    """``folder/*.tar`` when the folder holds shards and no class sub-folders."""
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError:
        return None  # the folder reader reports an unreadable folder
    shards = sorted(Path(e.path) for e in entries if e.is_file() and e.name.endswith(".tar"))
    if not shards or any(e.is_dir() for e in entries):
        return None
    return shards


@dataclass(frozen=True)
class Member:
    """Where one image's bytes lie: shard number, data offset and size in that shard."""

    shard: int
    offset: int
    size: int
    name: str


def _sample_key(member_name: str) -> tuple[str, str]:
    """``dir/0001.seg.png`` -> (``dir/0001``, ``seg.png``): WebDataset's key and extension."""
    folder, _, base = member_name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _samples(shard: int, path: Path) -> dict[str, dict[str, Any]]:
    """Every sample of one shard by key: its image ``Member`` and its label text."""
    samples: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:") as archive:  # "r:": compressed shards are refused
            for info in archive:
                if not info.isfile():
                    continue
                key, extension = _sample_key(info.name)
                sample = samples.setdefault(key, {})
                if extension in IMAGE_EXTENSIONS:
                    sample["image"] = Member(shard, info.offset_data, info.size, info.name)
                elif extension in LABEL_EXTENSIONS:
                    handle = archive.extractfile(info)
                    sample["label"] = handle.read(64) if handle else b""
    except tarfile.ReadError as error:
        raise UserError(
            f"cannot read tar shard {path} ({error}); shards must be uncompressed tar files"
        ) from None
    except OSError as error:
        raise UserError(f"cannot read tar shard {path}: {error.strerror or error}") from None
    return samples


def _read_member(path: Path, member: Member) -> bytes:
    with open(path, "rb") as handle:
        data = os.pread(handle.fileno(), member.size, member.offset)
    if len(data) != member.size:
        raise ValueError("the shard is shorter than its tar header says (truncated)")
    return data


def _header(data: bytes) -> tuple[int, int, bool]:
    """``(width, height, is_grey)`` of an encoded image; a PNG's chunk checksums verified."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels is larger than {MAX_PIXELS} pixels")
            grey = image.mode in _GREY_MODES
            image.verify()  # cheap: checksums and structure, no pixel decoded
    return width, height, grey


def _label(sample: dict[str, Any]) -> int:
    text = sample.get("label")
    if text is None:
        raise ValueError("no .cls label member")
    try:
        return int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"label {text[:20]!r} is not a class index") from None


@dataclass(frozen=True)
class ShardIndex:
    """Every usable sample of a shard set: where its image is, its label, the decoded shape."""

    paths: tuple[Path, ...]
    members: tuple[Member, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # decoded (H, W, C)
    skipped: int


def index_shards(paths: list[Path], image_size: int | None, on_corrupt: str) -> ShardIndex:
    """Read every shard's headers once (cached on the shards' paths, sizes and mtimes)."""
    key = tuple((str(p), *file_stamp(p)) for p in paths)
    return _index_cached(key, image_size, on_corrupt)


@functools.lru_cache(maxsize=4)
def _index_cached(
    key: tuple[tuple[str, int, int], ...], image_size: int | None, on_corrupt: str
) -> ShardIndex:
    paths = [Path(entry[0]) for entry in key]
    members, labels, sizes, skipped = [], [], set(), []
    colour = False
    for shard, path in enumerate(paths):
        for name, sample in _samples(shard, path).items():
            try:
                if "image" not in sample:
                    raise ValueError("no image member")
                label = _label(sample)
                width, height, grey = _header(_read_member(path, sample["image"]))
            except Exception as error:
                if on_corrupt == "error":
                    raise UserError(
                        f"sample {name} of shard {path} is unreadable ({_reason(error)}); "
                        "remove it, or use on_corrupt='skip' (--on-corrupt skip) to skip it"
                    ) from None
                skipped.append((f"{path}:{name}", _reason(error)))
                continue
            members.append(sample["image"])
            labels.append(label)
            sizes.add((height, width))
            colour = colour or not grey
    root = str(paths[0].parent)
    if skipped:
        log.warning(
            "%s: skipped %d unreadable sample(s), e.g. %s (%s)", root, len(skipped), *skipped[0]
        )
    if not members:
        raise UserError(f"{root}: no readable samples in its tar shards (0 images)")
    if image_size is None and len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3])
        raise UserError(
            f"{root}: shard images have different sizes ({shown}, ...); set image_size to "
            "resize them all to one square size"
        )
    height, width = (image_size, image_size) if image_size else sizes.pop()
    return ShardIndex(
        paths=tuple(paths),
        members=tuple(members),
        labels=np.asarray(labels, dtype=np.int64),
        classes=_class_names(paths[0].parent, labels),
        shape=(height, width, 3 if colour else 1),
        skipped=len(skipped),
    )


def _class_names(folder: Path, labels: list[int]) -> tuple[str, ...]:
    path = folder / CLASS_NAMES_FILE
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read class names from {path}: {error}") from None
        return tuple(line.strip() for line in text.splitlines() if line.strip())
    return tuple(str(i) for i in range(max(max(labels) + 1, 0)))


class TarRows:
    """The images of a shard index as (N, H, W, C) uint8 rows, decoded when indexed.

    A worker process opens its own descriptors (none are pickled), so a DataLoader reads in
    parallel without sharing file offsets.
    """

    def __init__(self, index: ShardIndex, image_size: int | None) -> None:
        self.index = index
        self.image_size = image_size
        self.shape = (len(index.members), *index.shape)
        self.dtype = np.dtype(np.uint8)
        self._fds: dict[int, int] = {}
        self._pid = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}, "_pid": 0}

    def _descriptor(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: never share a descriptor's state
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            path = self.index.paths[shard]
            try:
                self._fds[shard] = os.open(path, os.O_RDONLY)
            except OSError as error:
                raise UserError(f"cannot read {path}: {error.strerror or error}") from None
        return self._fds[shard]

    def __getitem__(self, positions: Any) -> np.ndarray:
        """Images at ``positions`` (an integer array or a slice), decoded, as (B, H, W, C)."""
        chosen = np.atleast_1d(np.arange(self.shape[0])[positions])
        out = np.empty((len(chosen), *self.shape[1:]), dtype=np.uint8)
        for row, position in enumerate(chosen.tolist()):
            out[row] = self._decode(self.index.members[position])
        return out

    def _decode(self, member: Member) -> np.ndarray:
        height, width, channels = self.shape[1:]
        try:
            data = os.pread(self._descriptor(member.shard), member.size, member.offset)
            with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
                warnings.simplefilter("ignore")
                image = image.convert("RGB" if channels == 3 else "L")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except UserError:
            raise
        except Exception as error:
            raise UserError(
                f"cannot decode {member.name} in shard {self.index.paths[member.shard]} "
                f"({_reason(error)}); remove it from the shard"
            ) from None
        return array.reshape(height, width, channels)

    def __del__(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)


def read_shards(paths: list[Path], spec: Any) -> RawData:
    """The RawData of a shard set for ``spec``: labels now, pixels when rows are indexed."""
    index = index_shards(paths, spec.image_size, spec.on_corrupt)
    source = str(paths[0].parent if len(paths) > 1 else paths[0])
    labels, classes = check_labelling(index.labels, list(index.classes), len(index.labels), source)
    return RawData(
        images=TarRows(index, spec.image_size),  # type: ignore[arg-type]
        labels=labels,
        classes=classes,
        source=source,
        skipped=index.skipped,
    )


__all__ = ["IMAGE_EXTENSIONS", "TarRows", "expand_braces", "find_shards", "read_shards"]
