"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

Layout (big-endian): two zero bytes, a type code, the number of dimensions, one uint32 per
dimension, then the data in C order. http://yann.lecun.com/exdb/mnist/ describes it.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from robustlab.data.arrays import file_stamp
from robustlab.errors import UserError

_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, what: str = "idx data") -> np.ndarray:
    """Parse IDX bytes into an array (read-only, native byte order for uint8)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{what} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise UserError(f"{what} is not an IDX file (unknown type code 0x{code:02x})")
    if ndim == 0:
        raise UserError(f"{what} is not an IDX file (0 dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{what} is truncated (header cut short)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _TYPES[code]
    count = 1
    for dim in shape:
        count *= dim
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise UserError(
            f"{what} is truncated or corrupt: shape {shape} needs {expected} bytes, "
            f"the file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
        array.flags.writeable = False
    return array


def read_idx(path: Path) -> np.ndarray:
    """Read an ``.idx`` file, gunzipping when its name ends in ``.gz`` (cached on mtime/size)."""
    return _read_idx_cached(str(path), file_stamp(path))


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, stamp: tuple[int, int]) -> np.ndarray:
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{path} is not a valid gzip file ({error})") from None
    return parse_idx(raw, path)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (used by tests and to write small fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()
