"""Atomic file output: a result is either fully written or not there at all.

Every writer goes through ``atomic_path``: write to a temporary file in the same directory,
flush it to disk, then ``os.replace`` it over the destination (atomic on POSIX). A failed write
(full disk, no permission) removes the temporary file and raises one ``UserError`` line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robustlab.budgets import budgets, check_budget, env_name
from robustlab.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The file gets the permissions the user's umask gives a new file (``mkstemp`` alone would
    leave it 0600). Any failure - making the folder, the temporary file, writing, renaming -
    removes the temporary file and raises one ``UserError`` line.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as error:
        _discard(tmp)
        raise UserError(f"could not write {path}: {error.strerror or error}") from error
    except BaseException as error:
        _discard(tmp)
        if isinstance(error, Exception) and _disk_full(error, path.parent):
            raise UserError(f"could not write {path}: {os.strerror(errno.ENOSPC)}") from error
        raise


TEMP_SUFFIX = ".tmp"


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):  # a folder gone or read-only: nothing to clean
            tmp.unlink(missing_ok=True)


def current_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` can only set it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): set and restore, the only portable way
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | os.PathLike[str], name: str = "*") -> list[Path]:
    """Remove the temporary files ``atomic_path`` left in ``folder`` for ``name`` when killed.

    Only safe while no other process writes there: callers hold the folder's output lock.
    """
    removed = []
    for stale in Path(folder).glob(f".{name}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    return removed


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a writer's non-``OSError`` failure is a full disk.

    Writers implemented in C++/Rust (``torch.save``, safetensors' ``save_file``) report a full
    disk as ``RuntimeError``/``SafetensorError``; look for the errno in the exception chain or its
    text, then at the file system itself.
    """
    seen: BaseException | None = error
    while seen is not None:
        if getattr(seen, "errno", None) in _FULL_ERRNOS:
            return True
        text = str(seen)
        if os.strerror(errno.ENOSPC) in text or "os error 28" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # no statvfs on Windows
        return False


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    # Names from file systems may hold undecodable bytes (surrogate escapes from os.fsdecode):
    # they are written as visible \udcXX escapes, so every text file stays valid UTF-8.
    return write_bytes(path, text.encode("utf-8", "backslashreplace"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically; NaN and inf become null."""
    text = json.dumps(_finite(json.loads(json.dumps(obj, default=_json_default))), indent=1)
    return write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read JSON, turning a missing, corrupt, huge or too deeply nested file into one
    ``UserError``."""
    path = Path(path)
    try:
        check_budget("json_bytes", path.stat().st_size, f"{what} {path}", " bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except RecursionError:  # nested beyond what the parser can take
        raise too_deep(f"{what} {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:  # ValueError: a 5,000-digit int
        raise UserError(f"{what} {path} is unreadable or corrupt: {error}") from None
    check_depth(data, f"{what} {path}")
    return data


def too_deep(what: str) -> UserError:
    limit = budgets().nesting_depth
    return UserError(
        f"{what} is nested more than {limit} levels deep "
        f"(set {env_name('nesting_depth')} to raise the limit)"
    )


def check_depth(value: Any, what: str) -> None:
    """Refuse containers nested deeper than the ``nesting_depth`` budget (iteratively: a deep
    value must not overflow the stack here either)."""
    limit = budgets().nesting_depth
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth >= limit:
            raise too_deep(what)
        stack.extend((child, depth + 1) for child in children)
