"""Output folders: checked writable up front, owned by one process at a time, replaced whole.

* ``claim_output(folder, flag)`` makes ``folder`` (and its parents), proves it can hold a new
  file, and takes an exclusive, non-blocking ``flock`` on ``folder/.robustlab.lock``: a second
  process on the same output gets one line naming the folder instead of mixing its files in.
  The lock file is removed on release; one a kill left behind is not locked and is reused.
* ``check_writable(folder, flag)`` is the same proof without making anything, for outputs that
  are written later by another process or step.
* ``Replacement`` builds a new version of a folder beside it (``.NAME.overwrite``) and swaps
  it in only when it is complete, so an error or Ctrl-C leaves the old folder as it was.

Every problem is a ``UserError`` naming the flag and the path, raised before any real work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from robustlab.errors import UserError
from robustlab.io import remove_stale_temporaries

log = logging.getLogger(__name__)

LOCK_FILE = ".robustlab.lock"


def check_writable(folder: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Raise a ``UserError`` unless ``folder`` exists as a writable folder or could be made.

    Nothing is created: the nearest existing ancestor must be a folder that accepts a new file
    (probed with a temporary file, since permission bits lie for root, immutable folders,
    read-only mounts and ``/proc``).
    """
    folder = Path(folder)
    try:
        existing = _nearest_existing(folder, flag)
    except OSError as error:  # e.g. a name longer than the file system allows
        raise UserError(f"{flag} {folder} cannot be made: {_reason(error)}") from None
    if not existing.is_dir():
        what = "exists" if existing == folder else f"cannot be made: {existing} exists"
        raise UserError(f"{flag} {folder} {what} and is not a folder")
    _probe(existing, folder, flag)
    return folder


def _nearest_existing(folder: Path, flag: str) -> Path:
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # a dangling link cannot be made into a folder
            raise UserError(f"{flag} {folder}: {existing} is a broken symbolic link")
        existing = existing.parent
    return existing


def _probe(existing: Path, folder: Path, flag: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".robustlab-probe.", dir=existing)
    except OSError as error:
        raise UserError(f"{flag} {folder} is not writable: {_reason(error)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "read-only file system"
    if error.errno == errno.ENOENT:  # an existing folder refusing a new name: /proc, /sys
        return "the folder accepts no new files"
    return error.strerror or str(error)


def make_folder(folder: Path, flag: str) -> list[Path]:
    """``mkdir -p folder`` with the failure as one line naming ``flag``; the folders it made."""
    check_writable(folder, flag)
    made = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_empty(made)
        raise UserError(f"{flag} {folder} cannot be made: {_reason(error)}") from None
    return made


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (deepest first) where they are empty: what a failed output made."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty: something was written, keep it
            folder.rmdir()


class OutputLock:
    """An exclusive ``flock`` on ``folder/.robustlab.lock``, held until ``release``."""

    def __init__(self, folder: Path, flag: str, made: Sequence[Path] = ()) -> None:
        self.folder = folder
        self.flag = flag
        self.made = list(made)  # folders made for this output: removed if it fails while empty
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        path = self.folder / LOCK_FILE
        for _ in range(10):  # the file can be swapped under us (Replacement): lock the current one
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as error:
                raise UserError(
                    f"{self.flag} {self.folder} is not writable: {_reason(error)}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    raise UserError(
                        f"{self.flag} {self.folder} is in use by another robustlab process; "
                        "wait for it to finish or choose another output folder"
                    ) from None
                raise UserError(
                    f"{self.flag} {self.folder}: cannot lock: {_reason(error)}"
                ) from None
            if _same_file(fd, path):
                self.fd = fd
                return self
            os.close(fd)
        raise UserError(
            f"{self.flag} {self.folder} keeps changing; is another process replacing it?"
        )

    def release(self, failed: bool = False) -> None:
        """Remove the lock file (while still holding it) and drop the lock.

        A process that opened the file just before is not fooled: after its ``flock`` it finds
        the path gone or pointing at another file, and starts again (``acquire``).
        failed: the command failed; folders made for it that are still empty are removed.
        """
        if self.fd is None:
            return
        path = self.folder / LOCK_FILE
        if _same_file(self.fd, path):
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None
        if failed:
            _remove_empty(self.made)


def claim(folder: Path, flag: str = "--out") -> OutputLock:
    """Make ``folder`` (probed first), lock it, remove what killed writes left in it.

    ``release(failed=...)`` when done.
    """
    made = make_folder(folder, flag)
    try:
        lock = OutputLock(folder, flag, made).acquire()
    except UserError:
        _remove_empty(made)
        raise
    remove_stale_temporaries(folder)  # ours now: a temporary file here is a killed write's
    return lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, current = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)


@contextlib.contextmanager
def claim_output(folder: str | os.PathLike[str], flag: str = "--out") -> Iterator[Path]:
    """Make ``folder`` and hold its lock for the ``with`` block (see the module docstring)."""
    lock = claim(Path(folder), flag)
    try:
        yield lock.folder
    except BaseException:
        lock.release(failed=True)
        raise
    lock.release()


def is_empty_output(folder: Path) -> bool:
    """True when ``folder`` holds nothing but robustlab's lock file."""
    return not folder.exists() or all(entry.name == LOCK_FILE for entry in folder.iterdir())


class Replacement:
    """A new version of ``target`` built in ``.NAME.overwrite`` beside it, swapped in by ``commit``.

    The caller holds ``target``'s lock; ``start`` removes what an interrupted replacement left
    and locks the staging folder too, so after the swap the lock file at ``target`` is still ours.
    """

    def __init__(self, target: Path, flag: str = "--out") -> None:
        self.target = target
        self.flag = flag
        self.staging = target.parent / f".{target.name}.overwrite"
        self.retired = target.parent / f".{target.name}.replaced"
        self.lock: OutputLock | None = None

    def recover(self) -> None:
        """Finish what a kill cut short in ``commit``.

        Between the two renames: the old folder comes back. After them: the retired one goes.
        """
        if not self.retired.exists():
            return
        # its lock file is the one the swapping process holds: a live swap is left alone
        lock = OutputLock(self.retired, self.flag).acquire()
        try:
            if self.target.exists():
                shutil.rmtree(self.retired, ignore_errors=True)
            else:
                log.warning("restoring %s from an interrupted --overwrite", self.target)
                os.rename(self.retired, self.target)
                lock.folder = self.target
        finally:
            lock.release()

    def start(self) -> Path:
        for stale in (self.staging, self.retired):
            if stale.exists():
                log.info("removing %s left by an interrupted --overwrite", stale)
                shutil.rmtree(stale)
        make_folder(self.staging, self.flag)
        self.lock = OutputLock(self.staging, self.flag).acquire()
        return self.staging

    def commit(self) -> None:
        """Swap: target -> retired, staging -> target, then delete retired.

        Ctrl-C and SIGTERM wait until both renames are done (SIGKILL cannot: ``recover``).
        """
        signals = {signal.SIGINT, signal.SIGTERM}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            os.rename(self.target, self.retired)
            os.rename(self.staging, self.target)
            if self.lock is not None:  # the staging lock file is now the target's
                self.lock.folder = self.target
            shutil.rmtree(self.retired, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def abandon(self) -> None:
        """Release the staging folder; after an error or Ctrl-C remove it (the target is as it was).

        After ``commit`` the staging folder is the target: only the lock is released.
        """
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
