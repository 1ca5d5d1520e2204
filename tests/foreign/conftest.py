"""Foreign models built by the tests themselves: a robustlab CNN exported to ONNX and
TorchScript, a small Keras 3 CNN saved as .keras and .h5, and a tiny data set they classify."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

os.environ["KERAS_BACKEND"] = "torch"  # before anything imports keras

from robustlab.models import ModelSpec, create_model

REPO_README = Path(__file__).resolve().parents[2] / "README.md"
CLASSES = ["cat", "dog", "fox"]
SIZE = 16


def torch_cnn() -> nn.Module:
    """A robustlab simple-cnn (random weights, its normalisation inside), eval mode."""
    torch.manual_seed(3)
    spec = ModelSpec(arch="simple-cnn", num_classes=len(CLASSES), input_size=SIZE)
    return create_model(spec).eval()


class Rescaled(nn.Module):
    """``model`` behind another input contract: 0-255 pixels, BGR, NHWC (as Keras/OpenCV feed)."""

    def __init__(self, model: nn.Module, scale: str, bgr: bool, nhwc: bool) -> None:
        super().__init__()
        self.model, self.scale, self.bgr, self.nhwc = model, scale, bgr, nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        if self.bgr:
            x = x.flip(1)
        x = x / 255.0 if self.scale == "0-255" else (x + 1.0) / 2.0 if self.scale == "-1-1" else x
        return self.model(x)


def export_onnx(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, *shape),), str(path), dynamo=False,
                          input_names=["images"], output_names=["scores"],
                          dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}})
    return path


def export_torchscript(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    torch.jit.save(torch.jit.trace(model, torch.rand(2, *shape)), str(path))
    return path


def keras_cnn(softmax: bool = False):
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, outputs)


def write_dataset(path: Path, model: nn.Module, n: int = 96) -> Path:
    """``n`` random images labelled by ``model`` itself (so clean accuracy is 100 %)."""
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(n, 3, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        labels = model(images).argmax(1)
    np.savez(path, images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy(),
             class_names=np.array(CLASSES))
    return path


@pytest.fixture
def foreign(tmp_path: Path) -> SimpleNamespace:
    """The torch CNN, its ONNX and TorchScript exports, and the data set it labels."""
    model = torch_cnn()
    shape = (3, SIZE, SIZE)
    return SimpleNamespace(
        model=model,
        onnx=export_onnx(model, tmp_path / "cnn.onnx", shape),
        torchscript=export_torchscript(model, tmp_path / "cnn.pt", shape),
        data=write_dataset(tmp_path / "toy.npz", model),
        tmp=tmp_path,
    )
