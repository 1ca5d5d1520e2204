"""Streamed splits, folder selections decoded before nothing else, and the prepared cache.

Every streamed result is compared with the in-memory one: the two modes must be identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import labelled_arrays, write_folder, write_npy_dir

from robustlab.data import DataSpec, clear_caches, load_splits, prepared
from robustlab.data.prepared import cache_dir, prepare_folder
from robustlab.data.stream import (
    ENV_BUDGET,
    ENV_WORKERS,
    StreamedImages,
    batches,
    memory_budget,
    take,
)
from robustlab.errors import UserError

WRITE_SHARD = prepared._write_shard  # the real one, before any test wraps it


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    clear_caches()


def both_modes(spec: DataSpec, monkeypatch: pytest.MonkeyPatch):
    """The splits of ``spec`` in memory and streamed (budget 0)."""
    in_memory = load_splits(spec)
    monkeypatch.setenv(ENV_BUDGET, "0")
    clear_caches()
    streamed = load_splits(spec)
    monkeypatch.delenv(ENV_BUDGET)
    return in_memory, streamed


@pytest.mark.parametrize(
    "options", [{}, {"image_size": 4}, {"channels": 1, "image_size": 3}, {"limit": 20}]
)
def test_streamed_splits_equal_in_memory_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict
) -> None:
    images, labels = labelled_arrays([9, 12, 7], size=(6, 5))
    folder = write_npy_dir(tmp_path / "set", images, labels)
    memory, streamed = both_modes(DataSpec(str(folder), **options), monkeypatch)
    for (name, part), (_, lazy) in zip(memory.items(), streamed.items(), strict=True):
        assert isinstance(part.images, torch.Tensor), name
        assert isinstance(lazy.images, StreamedImages), name
        assert lazy.images.shape == part.images.shape
        assert torch.equal(lazy.images[:], part.images)
        assert torch.equal(lazy.labels, part.labels)
    assert streamed.info() == memory.info()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_loader_batches_follow_the_given_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    monkeypatch.setenv(ENV_WORKERS, workers)
    images, labels = labelled_arrays([10, 10], size=(4, 4))
    memory, streamed = both_modes(
        DataSpec(str(write_npy_dir(tmp_path / "s", images, labels))), monkeypatch
    )
    order = torch.randperm(len(memory.train), generator=torch.Generator().manual_seed(3))
    index = [order[start : start + 3] for start in range(0, len(order), 3)]
    got = list(batches(streamed.train.images, index))
    assert len(got) == len(index)
    for batch, part in zip(got, index, strict=True):
        assert batch.dtype == torch.float32 and batch.shape[0] == len(part)
        assert torch.equal(batch, memory.train.images[part])


def test_subsets_stay_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = labelled_arrays([8, 8])
    memory, streamed = both_modes(
        DataSpec(str(write_npy_dir(tmp_path / "s", images, labels))), monkeypatch
    )
    keep = streamed.test.labels == 1
    part = take(streamed.test.images, keep)
    assert isinstance(part, StreamedImages) and len(part) == int(keep.sum())
    assert torch.equal(part[:], memory.test.images[keep])
    head = streamed.test.head(2)
    assert isinstance(head.images, StreamedImages) and len(head) == 2


def test_training_is_bit_identical_streamed_and_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from robustlab.models import ModelSpec, create_model
    from robustlab.training import TrainConfig, fit

    images, labels = labelled_arrays([20, 20, 20], size=(12, 12))
    spec = DataSpec(str(write_npy_dir(tmp_path / "s", images, labels)))
    weights = []
    for splits in both_modes(spec, monkeypatch):
        torch.manual_seed(0)
        model = create_model(ModelSpec("small-cnn", num_classes=3, input_size=12))
        config = TrainConfig(strategy="scratch", optimizer="adam", lr=1e-2, epochs=2, batch_size=8)
        train = (splits.train.images, splits.train.labels)
        history = fit(model, train, (splits.val.images, splits.val.labels), config, progress=False)
        weights.append((model.state_dict(), history))
    (first, history_a), (second, history_b) = weights
    assert all(torch.equal(first[k], second[k]) for k in first)
    drop = [{k: v for k, v in h.items() if k != "seconds"} for h in history_a]
    assert drop == [{k: v for k, v in h.items() if k != "seconds"} for h in history_b]


def test_a_file_truncated_while_streaming_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_WORKERS, "1")
    images, labels = labelled_arrays([10, 10])
    folder = write_npy_dir(tmp_path / "s", images, labels)
    _, streamed = both_modes(DataSpec(str(folder)), monkeypatch)
    path = folder / "images.npy"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(UserError, match="truncated while being read") as error:
        list(batches(streamed.train.images, [torch.arange(len(streamed.train))]))
    assert "\n" not in str(error.value)


def test_budget_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BUDGET, "512M")
    assert memory_budget() == 512 << 20
    monkeypatch.setenv(ENV_BUDGET, "lots")
    with pytest.raises(UserError, match=ENV_BUDGET):
        memory_budget()


def test_ranks_on_one_machine_share_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks that would each fit the whole set in the budget stream it instead."""
    images, labels = labelled_arrays([10, 10], size=(6, 5))
    folder = write_npy_dir(tmp_path / "set", images, labels)
    whole = 20 * 3 * 6 * 5 * 4  # float32 bytes of every split
    monkeypatch.setenv(ENV_BUDGET, str(whole + 100))
    assert isinstance(load_splits(DataSpec(str(folder))).train.images, torch.Tensor)
    monkeypatch.setenv("RANK", "1")  # as torchrun starts each of 2 local ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert memory_budget() == (whole + 100) // 2
    clear_caches()
    assert isinstance(load_splits(DataSpec(str(folder))).train.images, StreamedImages)


# ---------------------------------------------------------------- folders


def test_folder_too_large_to_decode_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 6, "b": 6}, size=(20, 20))
    monkeypatch.setenv(ENV_BUDGET, "1000")  # 12 images x 20 x 20 x 3 = 14 400 bytes
    with pytest.raises(UserError, match=r"memory budget.*ROBUSTLAB_MEMORY_BUDGET.*data prepare"):
        load_splits(DataSpec(str(root)))
    # a limit is applied to the file list first: 3 images fit, and only they are decoded
    monkeypatch.setenv(ENV_BUDGET, "4000")
    splits = load_splits(DataSpec(str(root), limit=3, split=(0.34, 0.33, 0.33)))
    assert sum(len(part) for _, part in splits.items()) == 3


def test_folder_selection_decodes_only_the_chosen_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 5, "b": 5, "c": 5})
    full = load_splits(DataSpec(str(root), classes=("c", "a")))
    assert full.classes == ("c", "a")
    assert sum(len(part) for _, part in full.items()) == 10
    decoded: list[str] = []

    original = prepared._decode
    monkeypatch.setattr(
        prepared, "_decode", lambda p, s: decoded.append(p.parent.name) or original(p, s)
    )
    clear_caches()
    load_splits(DataSpec(str(root), classes=("b",), split=(0.4, 0.2, 0.4)))
    assert decoded and set(decoded) == {"b"}


def test_prepared_cache_is_used_and_equals_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 7, "b": 6}, size=(9, 9))
    (root / "b" / "broken.png").write_bytes(b"\x89PNG broken")
    direct = load_splits(DataSpec(str(root), image_size=6))
    folder = prepare_folder(root, 6, workers=1)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shards"][0]["sha256"]
    clear_caches()
    monkeypatch.setattr("robustlab.data.prepared.read_folder", _never)  # no decoding now
    cached = load_splits(DataSpec(str(root), image_size=6))
    assert cached.skipped == direct.skipped == 1
    for (_, a), (_, b) in zip(direct.items(), cached.items(), strict=True):
        assert torch.equal(a.images, b.images[:]) and torch.equal(a.labels, b.labels)
    with pytest.raises(UserError, match="unreadable image"):
        load_splits(DataSpec(str(root), image_size=6, on_corrupt="error"))


def _never(*args: object) -> None:
    raise AssertionError("the folder was decoded although a prepared cache exists")


def test_stale_foreign_and_unfinished_caches_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 4, "b": 4})
    folder = prepare_folder(root, None, workers=1)
    (root / "a" / "000.png").write_bytes((root / "b" / "000.png").read_bytes())
    os.utime(root / "a" / "000.png", ns=(1, 1))
    with pytest.raises(UserError, match=r"stale.*data prepare"):
        load_splits(DataSpec(str(root)))
    prepare_folder(root, None, workers=1)  # rebuilt, never mixed
    assert len(load_splits(DataSpec(str(root))).train) > 0
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(UserError, match="format version 99"):
        load_splits(DataSpec(str(root)))
    (folder / "manifest.json").write_text(json.dumps({**manifest, "source": "/elsewhere"}))
    with pytest.raises(UserError, match="belongs to /elsewhere"):
        load_splits(DataSpec(str(root)))
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(UserError, match="unfinished"):
        load_splits(DataSpec(str(root)))


@pytest.fixture
def ten_images_in_shards_of_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of 10 images (classes a, b) that ``prepare_folder`` writes as 4 shards."""
    monkeypatch.setattr(prepared, "SHARD_SIZE", 3)
    root = tmp_path / "set"
    write_folder(root, {"a": 5, "b": 5})
    return root


def record_shard_writes(monkeypatch: pytest.MonkeyPatch, kill_after: int = -1) -> list[int]:
    """The shards ``prepare_folder`` writes from now on, in order; with ``kill_after``, a kill
    (KeyboardInterrupt) once that many were written."""
    written: list[int] = []

    def write(folder: Path, k: int, *rest: object) -> object:
        if len(written) == kill_after:
            raise KeyboardInterrupt
        written.append(k)
        return WRITE_SHARD(folder, k, *rest)

    monkeypatch.setattr(prepared, "_write_shard", write)
    return written


def test_prepare_resumes_from_its_finished_shards(
    ten_images_in_shards_of_3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ten_images_in_shards_of_3
    record_shard_writes(monkeypatch, kill_after=2)  # a kill -9 after two shards were written
    with pytest.raises(KeyboardInterrupt):
        prepare_folder(root, None, workers=1)
    folder = cache_dir(root, None)
    assert not any(p.name.endswith(".tmp") for p in folder.iterdir())
    written = record_shard_writes(monkeypatch)
    prepare_folder(root, None, workers=1)
    assert written == [2, 3]  # shards 0 and 1 were kept
    direct_images = [np.load(folder / f"shard-{k:05d}.npy") for k in range(4)]
    assert sum(len(a) for a in direct_images) == 10


def test_disk_full_while_preparing_is_one_line_and_resumable(
    ten_images_in_shards_of_3: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import errno

    from robustlab.cli import main

    root = ten_images_in_shards_of_3
    real_save = np.save
    saved: list[int] = []

    def fills_the_disk(handle, array, *args, **kwargs):  # the third shard finds the disk full
        if len(saved) == 4:  # two shards of (images, labels) written
            handle.write(b"\x93NUMPY half a shard")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saved.append(len(array))
        return real_save(handle, array, *args, **kwargs)

    monkeypatch.setattr(prepared.np, "save", fills_the_disk)
    code = main(["data", "prepare", str(root), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("robustlab: error:") and "No space left on device" in err
    folder = cache_dir(root, None)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # nothing half-written
    manifest = json.loads((folder / "manifest.json").read_text())
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0, 1]
    with pytest.raises(UserError, match="unfinished"):
        load_splits(DataSpec(str(root)))
    monkeypatch.setattr(prepared.np, "save", real_save)  # space freed: the rerun resumes
    written = record_shard_writes(monkeypatch)
    assert main(["data", "prepare", str(root), "--workers", "1"]) == 0
    assert written == [2, 3]
    clear_caches()
    cached = load_splits(DataSpec(str(root)))
    monkeypatch.setattr(prepared, "open_prepared", lambda *args: None)  # the folder itself
    clear_caches()
    direct = load_splits(DataSpec(str(root)))
    for (_, a), (_, b) in zip(direct.items(), cached.items(), strict=True):
        assert torch.equal(a.images, b.images[:]) and torch.equal(a.labels, b.labels)
