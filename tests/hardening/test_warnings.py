"""Warnings where results cannot mean much, and model/data mismatches found before any step."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.data.arrays import make_raw
from robustlab.errors import UserError
from robustlab.models import ModelSpec, create_model, load_checkpoint, save_checkpoint
from robustlab.studies import load_study


def test_a_data_set_with_one_class_is_warned(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        make_raw(np.zeros((4, 8, 8), np.uint8), np.zeros(4, np.int64), None, "one.npz")
    assert "every image has the same class" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_raw(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1]), None, "two.npz")
    assert "same class" not in caplog.text


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_warned(value: float, tmp_path: Path, caplog) -> None:
    model = create_model(ModelSpec("small-cnn", 2, in_chans=1, input_size=12))
    with torch.no_grad():
        next(model.head.parameters()).view(-1)[0] = value
    save_checkpoint(tmp_path, model, {"classes": ["a", "b"]})
    with caplog.at_level(logging.WARNING):
        load_checkpoint(tmp_path)
    assert "NaN or infinite" in caplog.text


def test_a_surrogate_that_is_the_target_is_warned(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        load_study("leaf", ["surrogate=finetune-top3"])
    assert "'finetune-top3' is also the target" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_study("leaf")
    assert "also the target" not in caplog.text


def test_a_cnn_too_deep_for_the_images_is_refused_before_any_step() -> None:
    deep = ["models[0].arch=inception_v3", "models[0].pretrained=null"]
    with pytest.raises(UserError, match=r"leaf\.yaml: models\[0\]: .*cannot take 16x16"):
        load_study("leaf", ["data.image_size=16", *deep])
    load_study("leaf", ["data.image_size=96", *deep])  # and 96 px it can take
    load_study("leaf", ["data.image_size=16"])  # the online-only InceptionV3 is not checked
