"""WebDataset tar shards as a source: the same splits as the image folder they were made from,
streamed (decoded per batch, never all at once), corrupt samples skipped and counted or refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_folder

from robustlab.cli import main
from robustlab.data import DataSpec, clear_caches, load_splits
from robustlab.data.stream import ENV_BUDGET, ENV_WORKERS, StreamedImages, batches
from robustlab.data.tarshards import TarRows, expand_braces
from robustlab.errors import UserError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    clear_caches()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, images: Path, per_shard: int, extra: dict | None = None) -> Path:
    """WebDataset shards of an image folder's files (class order, then file name), with
    ``.cls`` labels; ``extra``: members added to the last shard as ``{name: bytes}``."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in images.iterdir())
    samples = [
        (f"{label}-{path.stem}", path.read_bytes(), label)
        for label, name in enumerate(classes)
        for path in sorted((images / name).iterdir())
    ]
    starts = range(0, len(samples), per_shard)
    for number, start in enumerate(starts):
        with tarfile.open(folder / f"part-{number:03d}.tar", "w") as archive:
            for key, data, label in samples[start : start + per_shard]:
                _add(archive, f"{key}.png", data)
                _add(archive, f"{key}.cls", str(label).encode())
            for name, data in (extra or {}).items() if number == len(starts) - 1 else ():
                _add(archive, name, data)
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    return folder


def test_brace_patterns_expand_with_their_padding() -> None:
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert expand_braces("a{1..2}b{0..1}") == ["a1b0", "a1b1", "a2b0", "a2b1"]
    with pytest.raises(UserError, match="empty"):
        expand_braces("s-{3..1}.tar")


@pytest.mark.parametrize("budget", [None, "0"])
def test_shards_give_the_splits_of_the_image_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str | None
) -> None:
    images = tmp_path / "images"
    write_folder(images, {"cat": 9, "dog": 8, "owl": 7}, size=(8, 8))
    shards = write_shards(tmp_path / "shards", images, per_shard=10)
    folder = load_splits(DataSpec(str(images), image_size=6))
    if budget is not None:
        monkeypatch.setenv(ENV_BUDGET, budget)
    names = [str(shards), str(shards / "part-{000..002}.tar")]
    for name in names:
        clear_caches()
        tarred = load_splits(DataSpec(name, image_size=6))
        assert tarred.train.classes == ("cat", "dog", "owl")
        assert isinstance(tarred.train.images, StreamedImages) == (budget == "0")
        for (_, a), (_, b) in zip(folder.items(), tarred.items(), strict=True):
            assert torch.equal(a.images, b.images[:]) and torch.equal(a.labels, b.labels)


def test_streamed_shards_decode_only_the_batch_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    write_folder(images, {"a": 10, "b": 10}, size=(5, 5))
    shards = write_shards(tmp_path / "shards", images, per_shard=7)
    decoded: list[str] = []
    original = TarRows._decode
    monkeypatch.setattr(
        TarRows,
        "_decode",
        lambda self, member: decoded.append(member.name) or original(self, member),
    )
    monkeypatch.setenv(ENV_BUDGET, "0")
    train = load_splits(DataSpec(str(shards))).train
    assert decoded == []  # indexing reads headers only
    batch = train.images[:3]
    assert batch.shape == (3, 3, 5, 5) and len(decoded) == 3
    monkeypatch.setenv(ENV_WORKERS, "1")  # a worker process opens the shards itself
    (loaded,) = batches(train.images, [np.arange(3)])
    assert torch.equal(loaded, batch)


def test_a_corrupt_sample_is_skipped_and_counted_or_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_folder(images, {"a": 6, "b": 6}, size=(5, 5))
    broken = {"zz-broken.png": b"\x89PNG not really", "zz-broken.cls": b"1", "yy-nolabel.png": b""}
    shards = write_shards(tmp_path / "shards", images, per_shard=5, extra=broken)
    splits = load_splits(DataSpec(str(shards)))
    assert splits.skipped == 2
    assert sum(len(part) for _, part in splits.items()) == 12
    with pytest.raises(UserError, match=r"zz-broken.*on_corrupt='skip'"):
        load_splits(DataSpec(str(shards), on_corrupt="error"))


def test_bad_shards_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    write_folder(images, {"a": 4, "b": 4}, size=(5, 5))
    shards = write_shards(tmp_path / "shards", images, per_shard=8)
    assert main(["data", "info", str(shards / "part-000.tar")]) == 0  # one shard alone
    assert "8" in capsys.readouterr().out
    assert main(["data", "prepare", str(shards)]) == 0
    assert "nothing to prepare" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"shard .*part-001\.tar not found"):
        load_splits(DataSpec(str(shards / "part-{000..009}.tar")))
    packed = tmp_path / "packed"
    packed.mkdir()
    with tarfile.open(packed / "x.tar", "w:gz") as archive:
        _add(archive, "0.cls", b"0")
    with pytest.raises(UserError, match="uncompressed tar"):
        load_splits(DataSpec(str(packed)))
    (shards / "classes.txt").write_text("a\n")  # fewer names than labels
    clear_caches()
    code = main(["data", "info", str(shards)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("robustlab: error:") and len(err.strip().splitlines()) == 1
