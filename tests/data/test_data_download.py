"""Downloads without the network: file:// URLs and injected openers."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from robustlab.data import DataSpec, DownloadError, fetch_dataset, load_splits, registry
from robustlab.data import download as dl
from robustlab.data.idx import encode_idx, parse_idx
from robustlab.errors import UserError

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def copy_mirror(mirror: dict[str, tuple[str, str]], folder: Path, *, unzip: bool = False) -> Path:
    """The mirror's files copied into ``folder`` as a data dir holds them (``unzip``: the
    uncompressed idx files instead of the ``.gz``)."""
    folder.mkdir()
    for name, (url, _) in mirror.items():
        data = Path(url[len("file://") :]).read_bytes()
        if unzip:
            name, data = name.removesuffix(".gz"), gzip.decompress(data)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def mirror(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """A tiny MNIST in idx.gz files on disk: {file name: (file:// URL, sha256)}."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(20, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.arange(10, dtype=np.uint8) % 10,
    }
    out = {}
    for name, array in arrays.items():
        data = gzip.compress(encode_idx(array))
        (folder / name).write_bytes(data)
        out[name] = ((folder / name).as_uri(), hashlib.sha256(data).hexdigest())
    return out


@pytest.fixture
def local_mnist(
    monkeypatch: pytest.MonkeyPatch, mirror: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    """Point the registry's mnist files at the local mirror (a dead mirror first, then it)."""
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    files = tuple(
        dl.RemoteFile(f"mnist/{name}", sha, (dead + name, url))
        for name, (url, sha) in mirror.items()
    )
    entry = dataclasses.replace(registry.DATASETS["mnist"], files=files)
    monkeypatch.setitem(registry.DATASETS, "mnist", entry)


def test_download_checks_sha256_and_writes_atomically(
    tmp_path: Path, mirror: dict[str, tuple[str, str]]
) -> None:
    url, sha = mirror["train-labels-idx1-ubyte.gz"]
    dest = tmp_path / "data" / "labels.gz"
    dl.download(url, dest, sha, progress=False)
    assert dest.read_bytes() == Path(url[len("file://") :]).read_bytes()
    assert leftovers(dest.parent) == []


def test_checksum_mismatch_keeps_nothing(
    tmp_path: Path, mirror: dict[str, tuple[str, str]]
) -> None:
    url, _ = mirror["train-labels-idx1-ubyte.gz"]
    dest = tmp_path / "data" / "labels.gz"
    with pytest.raises(DownloadError, match="sha256 checksum mismatch"):
        dl.download(url, dest, "0" * 64, progress=False)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_missing_mnist_is_downloaded_when_allowed(tmp_path: Path, local_mnist: None) -> None:
    data_dir = tmp_path / "data"
    splits = load_splits(DataSpec("mnist", split=(0.6, 0.2, 0.2)), data_dir, download=True)
    assert sum(len(p) for _, p in splits.items()) == 30
    assert splits.train.image_shape == (1, 28, 28)
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(FILES)
    assert leftovers(data_dir) == []


def test_fetch_dataset_uses_the_injected_opener(tmp_path: Path, local_mnist: None) -> None:
    calls: list[str] = []

    def opener(url: str, timeout: float):
        calls.append(url)
        if "no-such-mirror" in url:
            raise urllib.error.URLError("no network in tests")
        return open(url[len("file://") :], "rb")

    fetch_dataset("mnist", tmp_path, opener=opener)
    assert len(calls) == 8  # each file: the dead mirror, then the local one
    images = (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    assert parse_idx(gzip.decompress(images)).shape == (10, 28, 28)


def test_failed_download_is_one_clear_error(tmp_path: Path) -> None:
    def opener(url: str, timeout: float):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(UserError) as error:
        load_splits(DataSpec("mnist"), tmp_path, download=True, opener=opener)
    message = str(error.value)
    assert "\n" not in message
    assert "download failed" in message and "Name or service not known" in message
    assert all(name in message for name in FILES)
    assert str(tmp_path / "mnist") in message
    assert not (tmp_path / "mnist").exists() or leftovers(tmp_path) == []


def test_an_unwritable_data_dir_is_one_clear_error(tmp_path: Path, local_mnist: None) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UserError, match=r"download failed.*could not write"):
        load_splits(DataSpec("mnist"), tmp_path / "a-file" / "data", download=True)


def test_a_corrupted_download_is_refused(tmp_path: Path) -> None:
    def opener(url: str, timeout: float):
        return io.BytesIO(b"an error page, not the file")

    with pytest.raises(UserError, match="checksum mismatch"):
        load_splits(DataSpec("mnist"), tmp_path, download=True, opener=opener)
    assert not any((tmp_path / "mnist").glob("*.gz"))


def test_offline_never_calls_the_opener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def opener(url: str, timeout: float):
        raise AssertionError("network used while offline")

    monkeypatch.setattr(dl, "urlopen", opener)
    assert dl.offline()
    with pytest.raises(UserError, match="ROBUSTLAB_OFFLINE"):
        load_splits(DataSpec("fashion-mnist"), tmp_path)
    with pytest.raises(UserError, match="download=False"):
        load_splits(DataSpec("mnist"), tmp_path, download=False)


def test_uncompressed_idx_files_are_accepted(
    tmp_path: Path, mirror: dict[str, tuple[str, str]]
) -> None:
    copy_mirror(mirror, tmp_path / "mnist", unzip=True)
    splits = load_splits(DataSpec("mnist", split=(0.6, 0.2, 0.2)), tmp_path)
    assert sum(len(p) for _, p in splits.items()) == 30


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x02\x08\x01", "magic"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x00", "type code"),
        (b"\x00\x00\x08\x03\x00\x00", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated"),
    ],
)
def test_corrupt_idx(data: bytes, match: str) -> None:
    with pytest.raises(UserError, match=match):
        parse_idx(data)


def test_corrupt_gzip_idx_in_the_data_dir(
    tmp_path: Path, mirror: dict[str, tuple[str, str]]
) -> None:
    folder = copy_mirror(mirror, tmp_path / "mnist")
    (folder / FILES[0]).write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(UserError, match="gzip"):
        load_splits(DataSpec("mnist"), tmp_path)
