"""Downloading public data files: progress bar, sha256 check, atomic write.

The opener is injectable (``opener=``, or monkeypatch ``robustlab.data.download.urlopen``) so
tests never touch the network; ``file://`` URLs work with the default opener. Downloads are
refused when ``ROBUSTLAB_OFFLINE`` is set to anything but ``0``/``false``/empty.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from robustlab.errors import UserError
from robustlab.io import atomic_path

Opener = Callable[..., Any]  # urlopen-like: opener(url, timeout=...) -> context manager response

urlopen: Opener = urllib.request.urlopen
TIMEOUT_S = 30.0
CHUNK = 1 << 20


class DownloadError(UserError):
    """A download failed (network, HTTP status, or checksum)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of a named data set: where it goes under the data dir and where to fetch it."""

    path: str  # relative to the data dir, e.g. 'mnist/train-images-idx3-ubyte.gz'
    sha256: str | None = None  # of the downloaded bytes; None: not downloadable
    urls: tuple[str, ...] = ()  # mirrors, tried in order


def offline() -> bool:
    """True when ``ROBUSTLAB_OFFLINE`` forbids network access."""
    return os.environ.get("ROBUSTLAB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    opener: Opener | None = None,
    timeout: float = TIMEOUT_S,
    progress: bool | None = None,
) -> Path:
    """Fetch ``url`` to ``dest`` atomically; a checksum mismatch leaves nothing behind.

    ``progress=None`` shows the tqdm bar only on a terminal.
    """
    opener = opener or urlopen
    try:
        return _download(url, dest, sha256, opener, timeout, progress)
    except OSError as error:  # the data dir itself cannot be created or written
        raise DownloadError(f"cannot write {dest}: {error.strerror or error}") from None


def _download(
    url: str, dest: Path, sha256: str | None, opener: Opener, timeout: float, progress: bool | None
) -> Path:
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp:
        try:
            with opener(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = _content_length(response)
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=None if progress is None else not progress,
                    leave=False,
                ) as bar:
                    while chunk := response.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        except OSError as error:  # URLError, HTTPError, timeouts, connection resets
            raise DownloadError(f"{url}: {getattr(error, 'reason', None) or error}") from None
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise DownloadError(
                f"{url}: sha256 checksum mismatch (expected {sha256}, got {actual}); "
                "the file was not kept"
            )
    return dest


def _content_length(response: Any) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def fetch_files(
    files: Sequence[RemoteFile],
    data_dir: Path,
    *,
    opener: Opener | None = None,
    progress: bool | None = None,
) -> list[str]:
    """Download each missing file from its mirrors; returns the failures (empty = all there)."""
    failures: list[str] = []
    for remote in files:
        dest = data_dir / remote.path
        if dest.exists():
            continue
        reasons = []
        for url in remote.urls:
            try:
                download(url, dest, remote.sha256, opener=opener, progress=progress)
                break
            except UserError as error:  # DownloadError, or an unwritable data dir
                reasons.append(str(error))
        else:
            failures.append(f"{remote.path}: " + ("; ".join(reasons) or "no download address"))
    return failures
