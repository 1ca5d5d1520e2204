"""``split: official``: the published train/test files of Fashion-MNIST, validation from train."""

from __future__ import annotations

import numpy as np
import pytest

from robustlab.data import DataSpec, dataset_info, plan_splits
from robustlab.data.loader import official_split
from robustlab.data.spec import OFFICIAL_VAL
from robustlab.errors import UserError


def test_official_split_uses_the_published_test_set() -> None:
    spec = DataSpec("fashion-mnist", split="official")
    plan = plan_splits(spec, download=False)
    train, val, test = plan.index
    assert plan.raw.official_train == 60_000
    assert len(test) == 10_000 and test.min() == 60_000  # exactly the t10k files
    assert len(val) == round(60_000 * OFFICIAL_VAL) and len(train) + len(val) == 60_000
    assert not set(train.tolist()) & set(val.tolist())
    assert DataSpec(**spec.to_dict()) == spec  # config.json round trip
    assert dataset_info(spec, download=False)["sizes"]["test"] == 10_000


def test_default_split_is_unchanged() -> None:
    plan = plan_splits(DataSpec("fashion-mnist"), download=False)
    assert [len(part) for part in plan.index] == [49_000, 10_500, 10_500]


def test_official_split_needs_published_files() -> None:
    with pytest.raises(UserError, match="split 'official' needs a data set with published"):
        plan_splits(DataSpec("digits", split="official"))
    with pytest.raises(UserError, match="or 'official'"):
        DataSpec("digits", split="officially")


def test_official_parts_index_positions_after_a_limit() -> None:
    class Raw:
        official_train = 40

    positions = np.arange(0, 50, 2)  # what a limit keeps: 20 train images, 5 test images
    spec = DataSpec("x", split="official")
    train, val, test = official_split(Raw(), positions, spec)  # type: ignore[arg-type]
    assert positions[test].tolist() == [40, 42, 44, 46, 48]
    assert len(val) == 2  # round(20 / 12)
    assert sorted(positions[np.concatenate([train, val])].tolist()) == list(range(0, 40, 2))
