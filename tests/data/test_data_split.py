"""Deterministic splits, stratification, class subsets, limit; resizing and grey/RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import labelled_arrays, write_npz

from robustlab.data import DataSpec, load_splits, select_classes, split_indices, subsample
from robustlab.data.split import class_index, cut_counts
from robustlab.data.transforms import rgb_to_grey
from robustlab.errors import UserError

SPLIT = (0.7, 0.15, 0.15)


def test_split_is_the_leaf_studys_shuffle_then_cut() -> None:
    train, val, test = split_indices(np.zeros(100, dtype=np.int64), SPLIT, seed=0)
    order = np.random.default_rng(0).permutation(100)
    assert np.array_equal(np.concatenate([train, val, test]), order)
    assert (len(train), len(val), len(test)) == (70, 15, 15)


@pytest.mark.parametrize("stratify", [False, True])
def test_split_is_deterministic_disjoint_and_covering(stratify: bool) -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 10])
    first = split_indices(labels, SPLIT, seed=5, stratify=stratify)
    again = split_indices(labels, SPLIT, seed=5, stratify=stratify)
    other = split_indices(labels, SPLIT, seed=6, stratify=stratify)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    joined = np.concatenate(first)
    assert len(joined) == len(set(joined.tolist())) == len(labels)
    assert sorted(joined.tolist()) == list(range(len(labels)))


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(3), [200, 60, 20])
    parts = split_indices(labels, SPLIT, seed=0, stratify=True)
    for part, fraction in zip(parts, SPLIT, strict=True):
        counts = np.bincount(labels[part], minlength=3)
        assert np.all(np.abs(counts - fraction * np.array([200, 60, 20])) <= 1)
        assert len(np.unique(labels[part])) == 3


def test_stratified_split_refuses_a_too_small_class() -> None:
    labels = np.repeat(np.arange(2), [40, 2])
    with pytest.raises(UserError, match=r"class 'rare' has only 2 images.*stratif"):
        split_indices(labels, SPLIT, seed=0, stratify=True, classes=("common", "rare"))


def test_cut_counts_sum_to_n() -> None:
    for n in range(3, 200):
        assert sum(cut_counts(n, SPLIT)) == n


def test_split_leaving_a_split_empty_names_it(tmp_path: Path) -> None:
    images, labels = labelled_arrays([2, 2])
    path = write_npz(tmp_path / "tiny.npz", images, labels)
    with pytest.raises(UserError, match="'val' split with 0 images"):
        load_splits(DataSpec(str(path), split=(0.9, 0.05, 0.05)))


def test_load_splits_same_seed_same_split_other_seed_other_split() -> None:
    a = load_splits(DataSpec("digits", seed=1, limit=400))
    b = load_splits(DataSpec("digits", seed=1, limit=400))
    c = load_splits(DataSpec("digits", seed=2, limit=400))
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.test.images, c.test.images)


def test_class_subset_relabels_in_the_given_order(tmp_path: Path) -> None:
    images, labels = labelled_arrays([5, 6, 7])
    path = write_npz(tmp_path / "s.npz", images, labels, class_names=np.array(["a", "b", "c"]))
    splits = load_splits(DataSpec(str(path), classes=("c", 0)))
    assert splits.classes == ("c", "a")
    assert splits.info()["class_counts"]["total"] == {"c": 7, "a": 5}
    for _, part in splits.items():  # pixel 0 encodes the original class: 40 * label
        original = (part.images[:, 0, 0, 0] * 255).round().long() // 40
        assert torch.equal(original, torch.where(part.labels == 0, 2, 0))


def test_class_subset_by_index_string_and_errors() -> None:
    positions, new, classes = select_classes(np.array([0, 1, 2, 2, 1]), ("x", "y", "z"), ["2"])
    assert classes == ("z",) and positions.tolist() == [2, 3] and new.tolist() == [0, 0]
    with pytest.raises(UserError, match="did you mean 'yy'"):
        select_classes(np.array([0, 1]), ("x", "yy"), ["y"])  # 'y' is close to 'yy'
    with pytest.raises(UserError, match="twice"):
        select_classes(np.array([0, 1]), ("x", "y"), ["x", 0])
    with pytest.raises(UserError, match="out of range"):
        select_classes(np.array([0, 1]), ("x", "y"), [5])
    with pytest.raises(UserError, match="'z' has no images"):
        select_classes(np.array([0, 1]), ("x", "y", "z"), ["z"])


def test_unknown_class_name_suggests_a_close_one() -> None:
    with pytest.raises(UserError, match=r"unknown class 'Trousr'.*did you mean 'Trouser'"):
        select_classes(np.array([0, 1]), ("T-shirt/top", "Trouser"), ["Trousr"])


def test_class_index_takes_a_name_or_an_index_and_errors_name_the_field() -> None:
    classes = ("cat", "dog", "7")
    assert [class_index(wanted, classes, "f") for wanted in ("dog", 1, "0", "7")] == [1, 1, 0, 2]
    for wanted, message in [
        ("dgo", "did you mean 'dog'"),
        (3, "index 3 is out of range"),
        ("-1", "index -1"),
    ]:
        with pytest.raises(UserError) as error:
            class_index(wanted, classes, "--targeted")
        text = str(error.value)
        assert text.startswith("--targeted: ") and message in text and "\n" not in text


def test_limit_is_deterministic_and_applies_before_the_split() -> None:
    labels = np.repeat(np.arange(2), [300, 100])
    kept = subsample(labels, 100, seed=0)
    assert len(kept) == 100 and np.array_equal(kept, subsample(labels, 100, seed=0))
    assert not np.array_equal(kept, subsample(labels, 100, seed=1))
    stratified = subsample(labels, 100, seed=0, stratify=True)
    assert np.bincount(labels[stratified]).tolist() == [75, 25]
    assert len(subsample(labels, 10_000, seed=0)) == 400
    splits = load_splits(DataSpec("digits", limit=100))
    assert sum(len(p) for _, p in splits.items()) == 100


def test_resize_is_antialiased_bilinear() -> None:
    native = load_splits(DataSpec("digits"))
    resized = load_splits(DataSpec("digits", image_size=4))
    assert resized.train.image_shape == (1, 4, 4)
    expected = F.interpolate(
        native.train.images, size=(4, 4), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    assert torch.allclose(resized.train.images, expected, atol=1e-6)
    up = load_splits(DataSpec("digits", image_size=32))
    assert up.train.image_shape == (1, 32, 32)
    assert float(up.train.images.min()) >= 0 and float(up.train.images.max()) <= 1


def test_grey_to_rgb_repeats_the_channel() -> None:
    rgb = load_splits(DataSpec("digits", channels=3))
    x = rgb.train.images
    assert x.shape[1] == 3
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_rgb_to_grey_uses_itu_601_weights(tmp_path: Path) -> None:
    images = np.zeros((6, 2, 2, 3), dtype=np.uint8)
    images[:2, ..., 0] = 255  # red
    images[2:4, ..., 1] = 255  # green
    images[4:, ..., 2] = 255  # blue
    labels = np.repeat(np.arange(3), 2)
    path = write_npz(tmp_path / "rgb.npz", images, labels)
    splits = load_splits(DataSpec(str(path), channels=1, split=(1 / 3, 1 / 3, 1 / 3)))
    grey = torch.cat([p.images for _, p in splits.items()])
    label = torch.cat([p.labels for _, p in splits.items()])
    assert grey.shape[1:] == (1, 2, 2)
    for cls, weight in enumerate((0.299, 0.587, 0.114)):
        assert torch.allclose(grey[label == cls], torch.tensor(weight), atol=1e-6)
    assert torch.allclose(rgb_to_grey(torch.ones(1, 3, 2, 2)), torch.ones(1, 1, 2, 2))


def test_pixels_are_not_normalised(tmp_path: Path) -> None:
    images = np.stack([np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)] * 3)
    path = write_npz(tmp_path / "bw.npz", images, np.array([0, 1] * 3))
    splits = load_splits(DataSpec(str(path), split=(1 / 3, 1 / 3, 1 / 3)))
    values = torch.cat([p.images for _, p in splits.items()]).unique().tolist()
    assert values == [0.0, 1.0]
