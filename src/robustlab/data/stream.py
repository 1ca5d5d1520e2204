"""Streaming images: uint8 rows stay where they are until a batch is formed.

A split whose float32 pixels would not fit the memory budget (``memory_budget``) is not
converted up front: its ``ImageSet.images`` is a ``StreamedImages``, which holds only the
positions of its images in a row source and converts them to float32 ``(B, C, H, W)`` in
[0, 1] when indexed (``images[batch_index]``), with exactly the arithmetic of the in-memory
path, so both modes give bit-identical batches. Row sources:

- ``numpy.ndarray``: raw uint8 pixels already in memory (npz, idx, decoded folders): the
  float32 copy (4x the bytes) is what streaming saves;
- ``NpyRows``: a uint8 ``images.npy`` read row by row with ``os.pread`` at its offsets.
  Not ``np.memmap``: pages of a mapping count in the process' RSS once touched, so a mapped
  epoch over 48 000 images at 224 px would hold 7 GB; read pages live in the page cache only.

``batches`` is the one loader of every consumer that walks a split in a given order: a
``torch.utils.data.DataLoader`` with worker processes (reading, and decoding where there is
something to decode, overlaps the model's work) and pinned memory when a GPU is present.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from robustlab.data.arrays import npy_header
from robustlab.data.transforms import convert_chunk
from robustlab.errors import UserError

ENV_BUDGET = "ROBUSTLAB_MEMORY_BUDGET"  # bytes of float32 pixels a data set may hold in memory
ENV_WORKERS = "ROBUSTLAB_DATA_WORKERS"  # DataLoader worker processes for streamed splits
DEFAULT_BUDGET_CAP = 2 << 30  # 2 GiB: larger sets stream (they gain little from being in RAM)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str, what: str) -> int:
    """``'512M'``, ``'2G'``, ``'1000000'`` -> bytes; anything else is a UserError naming ``what``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise UserError(f"{what} must be a size such as 512M or 2G, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def memory_budget() -> int:
    """Bytes of float32 pixels a split set may take in memory before it streams instead.

    ``$ROBUSTLAB_MEMORY_BUDGET`` (e.g. ``4G``; ``0`` streams everything), else the smaller of
    2 GiB and an eighth of the machine's memory. The budget is the machine's: under torchrun
    each of the ranks on this machine gets an equal share of it, so ranks that would each hold
    the whole set in memory stream it instead, each reading only its batches.
    """
    return _machine_budget() // local_processes()


def _machine_budget() -> int:
    text = os.environ.get(ENV_BUDGET)
    if text:
        return parse_bytes(text, f"${ENV_BUDGET}")
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform reports it
        return DEFAULT_BUDGET_CAP
    return min(DEFAULT_BUDGET_CAP, total // 8)


def local_processes() -> int:
    """Processes sharing this machine's memory: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    text = os.environ.get("LOCAL_WORLD_SIZE", "1") if "RANK" in os.environ else "1"
    return max(1, int(text)) if text.strip().isdigit() else 1


def data_workers() -> int:
    """Worker processes of a streamed loader: ``$ROBUSTLAB_DATA_WORKERS``, else one per spare
    core up to 4 (the main process trains; workers only read and convert)."""
    text = os.environ.get(ENV_WORKERS)
    if text:
        if not text.strip().isdigit():
            raise UserError(f"${ENV_WORKERS} must be a whole number >= 0, got {text!r}")
        return int(text)
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class NpyRows:
    """The rows of a C-ordered uint8 ``.npy`` of shape (N, H, W, C), read on demand."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, int, int, int]) -> None:
        self.path = Path(path)
        self.offset = offset
        self.shape = shape
        self.dtype = np.dtype(np.uint8)
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd: int | None = None
        self._pid = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # a worker opens its own descriptor
        return {**self.__dict__, "_fd": None, "_pid": 0}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # forked: never share an offset
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as error:
                raise UserError(f"cannot read {self.path}: {error.strerror or error}") from None
            self._pid = os.getpid()
        return self._fd

    def __getitem__(self, positions: Any) -> np.ndarray:
        """Rows at ``positions`` (an integer array or a slice) as (B, H, W, C) uint8."""
        index = np.arange(self.shape[0])[positions]
        index = np.atleast_1d(index)
        out = np.empty((len(index), *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(index), self.row_bytes)
        fd = self._descriptor()
        for row, position in enumerate(index.tolist()):
            data = os.pread(fd, self.row_bytes, self.offset + position * self.row_bytes)
            if len(data) != self.row_bytes:
                raise UserError(f"{self.path} was truncated while being read (row {position})")
            flat[row] = np.frombuffer(data, dtype=np.uint8)
        return out

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def open_npy_rows(path: Path) -> NpyRows | None:
    """A row reader for a uint8 C-ordered image ``.npy``; None when another reader must be used
    (other dtype, Fortran order, odd shape: ``read_npy`` validates those)."""
    try:
        with open(path, "rb") as handle:
            header = npy_header(handle)
            if header is None:
                return None
            shape, fortran, dtype = header
            offset = handle.tell()
        size = path.stat().st_size
    except Exception:  # anything odd: the validating reader gives the one-line error
        return None
    if fortran or dtype != np.uint8 or len(shape) not in (3, 4) or 0 in shape:
        return None
    if len(shape) == 3:
        shape = (*shape, 1)
    if shape[-1] not in (1, 3) or offset + int(np.prod(shape)) > size:
        return None
    return NpyRows(path, offset, tuple(int(d) for d in shape))  # type: ignore[arg-type]


class StreamedImages:
    """Float32 (N, C, H, W) images in [0, 1], converted from uint8 rows batch by batch.

    Behaves like the tensor it stands for where the code base reads images: ``len``,
    ``shape``, ``dtype``, ``dim()``, and indexing, which returns a real float32 tensor.
    ``subset`` selects without converting.
    """

    dtype = torch.float32
    ndim = 4

    def __init__(
        self, rows: Any, index: np.ndarray, *, channels: int | None, size: int | None
    ) -> None:
        self.rows = rows
        self.index = np.asarray(index, dtype=np.int64)
        self.channels = channels
        self.size = size
        _, height, width, native = rows.shape
        self.shape = torch.Size(
            (len(self.index), channels or native, size or height, size or width)
        )

    def __len__(self) -> int:
        return len(self.index)

    def dim(self) -> int:
        return 4

    def is_floating_point(self) -> bool:
        return True

    @property
    def nbytes(self) -> int:
        """Bytes the float32 tensor would take."""
        return int(np.prod(self.shape)) * 4

    def positions(self, key: Any) -> np.ndarray:
        """Row-source positions of ``key`` (slice, int, list, bool mask or index tensor)."""
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return np.atleast_1d(self.index[key])

    def __getitem__(self, key: Any) -> torch.Tensor:
        batch = self.convert(self.read(self.positions(key)))
        return batch[0] if isinstance(key, int) else batch

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Raw (B, H, W, C) rows: what a loader worker does."""
        return np.ascontiguousarray(self.rows[positions])

    def convert(self, chunk: np.ndarray) -> torch.Tensor:
        """Raw rows -> float32 (B, C, H, W) in [0, 1]: the in-memory path's arithmetic."""
        return convert_chunk(chunk, channels=self.channels, size=self.size)

    def subset(self, key: Any) -> StreamedImages:
        return StreamedImages(
            self.rows, self.positions(key), channels=self.channels, size=self.size
        )

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The whole set as a tensor (small sets only: prefer indexing by batch)."""
        return self[:].to(*args, **kwargs)


class _BatchRows(Dataset):
    """``dataset[list of positions]`` -> one raw uint8 batch (read in a worker)."""

    def __init__(self, images: StreamedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, batch: Sequence[int] | slice) -> torch.Tensor | _Failed:
        try:
            return torch.from_numpy(self.images.read(self.images.positions(batch)))
        except UserError as error:  # re-raised by the main process as the same one line
            return _Failed(str(error))


class _Failed:
    """A worker's UserError, carried back as a value (DataLoader would add its traceback)."""

    def __init__(self, message: str) -> None:
        self.message = message


def batches(
    images: torch.Tensor | StreamedImages, index_batches: Iterable[Any]
) -> Iterator[torch.Tensor]:
    """Float32 batches of ``images`` at each index in ``index_batches``, in order.

    In-memory tensors are indexed directly; streamed images go through a DataLoader whose
    workers read the uint8 rows while the caller computes, converted here in the main process
    (the same arithmetic as in memory, so results do not depend on the mode).
    """
    if not isinstance(images, StreamedImages):
        for index in index_batches:
            yield images[index]
        return
    plan = [_numpy(index) for index in index_batches]  # positions within ``images``
    # rows already in memory are copied faster than a worker could send them
    workers = 0 if isinstance(images.rows, np.ndarray) else data_workers()
    loader = DataLoader(
        _BatchRows(images),
        sampler=plan,
        batch_size=None,  # the sampler yields whole batches of positions
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        # the loader draws its workers' seed from this, not from the global RNG, so dropout
        # and random starts see the same random stream as on in-memory tensors
        generator=torch.Generator(),
    )
    if workers:
        release_free_memory()  # before the workers are forked (when the loop starts)
    for raw in loader:
        if isinstance(raw, _Failed):
            raise UserError(raw.message)
        yield images.convert(raw.numpy())


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system, before forking loader workers.

    A forked worker shares the parent's pages copy-on-write. tcmalloc (which the CLI preloads)
    keeps freed activations mapped, and the parent reuses exactly those pages for the next
    batch: each rewritten page is then duplicated for as long as the worker lives, +2.5 GB at
    224 px with one worker (issue 13). Released pages are not shared, so nothing is duplicated.
    """
    if not sys.platform.startswith("linux"):  # elsewhere workers are spawned, not forked
        return
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return
    release = getattr(process, "MallocExtension_ReleaseFreeMemory", None)  # tcmalloc
    if release is not None:
        release()
    elif hasattr(process, "malloc_trim"):  # glibc
        process.malloc_trim(0)


def _numpy(index: Any) -> Any:
    return index.cpu().numpy() if isinstance(index, torch.Tensor) else index


def take(images: torch.Tensor | StreamedImages, key: Any) -> torch.Tensor | StreamedImages:
    """``images[key]`` that keeps streamed images streamed (positions only, nothing read)."""
    return images.subset(key) if isinstance(images, StreamedImages) else images[key]


def is_streamed(images: Any) -> bool:
    return isinstance(images, StreamedImages)


__all__ = [
    "ENV_BUDGET",
    "ENV_WORKERS",
    "NpyRows",
    "StreamedImages",
    "batches",
    "data_workers",
    "is_streamed",
    "memory_budget",
    "open_npy_rows",
    "parse_bytes",
    "take",
]
