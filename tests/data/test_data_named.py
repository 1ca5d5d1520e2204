"""Named data sets on the real shared files, the registry and the data dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.data import (
    DataSpec,
    DataSplits,
    dataset_info,
    list_datasets,
    load_source,
    load_splits,
    resolve_data_dir,
)
from robustlab.data.registry import FASHION_CLASSES, canonical_name
from robustlab.errors import UserError


def need(data_dir: Path, relpath: str) -> Path:
    path = data_dir / relpath
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def check_splits(splits: DataSplits, shape: tuple[int, int, int], total: int) -> None:
    sizes = [len(part) for _, part in splits.items()]
    assert sum(sizes) == total
    for _, part in splits.items():
        assert part.images.dtype == torch.float32
        assert part.labels.dtype == torch.int64
        assert part.images.shape[1:] == shape
        assert part.images.is_contiguous()
        assert float(part.images.min()) >= 0.0 and float(part.images.max()) <= 1.0
        assert int(part.labels.min()) >= 0 and int(part.labels.max()) < splits.num_classes


def total_counts(splits: DataSplits) -> dict[str, int]:
    return splits.info()["class_counts"]["total"]


def test_plantvillage_unhealthy_is_the_default_task(data_dir: Path) -> None:
    splits = load_splits(DataSpec("plantvillage-tomato"), data_dir)
    check_splits(splits, (3, 96, 96), 3997)
    assert splits.task == "unhealthy"
    assert splits.classes == ("healthy", "unhealthy")
    assert total_counts(splits) == {"healthy": 1585, "unhealthy": 2412}
    assert [len(p) for _, p in splits.items()] == [2798, 599, 600]  # 70/15/15, cut by rounding
    assert splits.source.endswith("plantvillage_tomato_96px.npz")


def test_plantvillage_disease_reads_class_names_from_the_file(data_dir: Path) -> None:
    splits = load_splits(DataSpec("plantvillage-tomato", task="disease", stratify=True), data_dir)
    check_splits(splits, (3, 96, 96), 3997)
    assert len(splits.classes) == 10
    assert splits.classes[-1] == "Tomato___healthy"
    counts = total_counts(splits)
    assert counts["Tomato___healthy"] == 1585
    assert all(counts[name] == 268 for name in splits.classes[:-1])
    # stratified: every disease is 70/15/15 within one image
    train = splits.train.class_counts()
    assert all(abs(train[name] - 0.7 * 268) <= 1 for name in splits.classes[:-1])


def test_fashion_mnist_merges_train_and_test(data_dir: Path) -> None:
    need(data_dir, "fashion_mnist/train-images-idx3-ubyte.gz")
    splits = load_splits(DataSpec("fashion-mnist"), data_dir)
    check_splits(splits, (1, 28, 28), 70_000)
    assert splits.classes == FASHION_CLASSES
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    assert set(total_counts(splits).values()) == {7000}
    assert [len(p) for _, p in splits.items()] == [49_000, 10_500, 10_500]


def test_utkface_gender_and_race(data_dir: Path) -> None:
    need(data_dir, "utkface_gender_96px.npz")
    splits = load_splits(DataSpec("utkface-gender"), data_dir)
    check_splits(splits, (3, 96, 96), 2000)
    assert splits.classes == ("male", "female")
    assert total_counts(splits) == {"male": 1000, "female": 1000}
    race = load_splits(DataSpec("utkface-gender", task="race", channels=1, image_size=48), data_dir)
    check_splits(race, (1, 48, 48), 2000)
    assert len(race.classes) == 5


def test_digits_are_always_available() -> None:
    splits = load_splits(DataSpec("digits"))
    check_splits(splits, (1, 8, 8), 1797)
    assert splits.classes == tuple(str(i) for i in range(10))
    assert float(splits.train.images.max()) == 1.0  # 16/16, not normalised


def test_digits_are_exactly_sklearns_load_digits() -> None:
    from sklearn.datasets import load_digits

    from robustlab.data.registry import _read_digits_csv

    images, target = _read_digits_csv()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)


def test_a_named_set_can_be_spelled_loosely() -> None:
    assert canonical_name("Fashion_MNIST") == "fashion-mnist"
    assert canonical_name("DIGITS") == "digits"
    assert canonical_name("cifar10") is None


def test_raw_arrays_are_cached_and_read_only(data_dir: Path) -> None:
    spec = DataSpec("plantvillage-tomato", limit=64)
    first, _ = load_source(spec, data_dir)
    second, _ = load_source(spec, data_dir)
    assert first is second
    assert not first.images.flags.writeable
    # the tensors handed out are fresh copies: changing one leaves the cache intact
    splits = load_splits(spec, data_dir)
    splits.train.images.zero_()
    assert load_splits(spec, data_dir).train.images.max() > 0


def test_mnist_offline_gives_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        load_splits(DataSpec("mnist"), tmp_path)
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message
    assert "ROBUSTLAB_OFFLINE" in message
    assert "https://" in message  # how to get it
    assert "\n" not in message


def test_missing_leaf_file_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"plantvillage_tomato_96px\.npz.*PlantVillage"):
        load_splits(DataSpec("plantvillage-tomato"), tmp_path, download=True)


def test_list_datasets_reports_presence(data_dir: Path, tmp_path: Path) -> None:
    infos = {info.name: info for info in list_datasets(data_dir)}
    assert set(infos) == {
        "plantvillage-tomato",
        "fashion-mnist",
        "mnist",
        "utkface-gender",
        "digits",
    }
    assert infos["plantvillage-tomato"].present
    assert infos["plantvillage-tomato"].tasks == {"unhealthy": 2, "disease": 10}
    assert infos["plantvillage-tomato"].default_task == "unhealthy"
    assert infos["mnist"].downloadable and infos["fashion-mnist"].downloadable
    assert not infos["utkface-gender"].downloadable
    assert infos["digits"].present
    assert infos["plantvillage-tomato"].files == (str(data_dir / "plantvillage_tomato_96px.npz"),)
    json.dumps([info.to_dict() for info in infos.values()])
    empty = {info.name: info.present for info in list_datasets(tmp_path)}
    assert empty == {n: n == "digits" for n in empty}


def test_dataset_info_is_json(data_dir: Path) -> None:
    info = dataset_info(DataSpec("digits", classes=("3", "5"), stratify=True), data_dir)
    text = json.dumps(info)
    # stratified: each class is cut on its own (183 -> 128/28/27, 182 -> 127/28/27)
    assert json.loads(text)["sizes"] == {"train": 255, "val": 56, "test": 54}
    assert info["classes"] == ["3", "5"]
    assert info["image_shape"] == [1, 8, 8]
    assert info["class_counts"]["total"] == {"3": 183, "5": 182}
    assert info["dataset"]["name"] == "digits"
    spec = DataSpec("plantvillage-tomato", task="disease", image_size=32, channels=1, limit=500)
    info = dataset_info(spec, data_dir)
    del info["dataset"]
    assert info == load_splits(spec, data_dir).info()  # same facts, no pixels converted


def test_spec_round_trips_through_json_to_the_same_split(data_dir: Path) -> None:
    spec = DataSpec("digits", classes=("1", 7), split=(0.6, 0.2, 0.2), seed=3, limit=300)
    again = DataSpec(**json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    a, b = load_splits(spec), load_splits(again)
    for (_, x), (_, y) in zip(a.items(), b.items(), strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROBUSTLAB_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("ROBUSTLAB_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "robustlab" / "data"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        resolve_data_dir(tmp_path / "file")
