"""A split too big for the memory budget stays streamed end to end: in ``train_run`` and in
attack sweeps, each equal to the in-memory result.

Before, ``train_run`` moved the train and val splits to the device with ``.to(device)``, which
for a streamed split is the whole float32 set in memory (at 12 000 x 224 px: 6 GB, the run
was killed for memory). Here that copy is forbidden and the run must equal the in-memory one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robustlab.data import DataSpec, clear_caches, load_splits
from robustlab.data.stream import ENV_BUDGET, StreamedImages
from robustlab.errors import UserError
from robustlab.models import ModelSpec, create_model
from robustlab.training import TrainConfig, train_run


def npy_folder(folder: Path, n: int = 90, size: int = 12) -> Path:
    """``images.npy`` (n, size, size, 3) uint8 of 3 classes told apart by colour + labels."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])[labels][:, None, None, :]
    noise = rng.integers(-40, 41, (n, size, size, 3))
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", np.clip(colours + noise, 0, 255).astype(np.uint8))
    np.save(folder / "labels.npy", labels)
    return folder


def train(run_dir: Path, data: Path) -> dict:
    config = TrainConfig(strategy="scratch", optimizer="adam", lr=1e-2, epochs=2, batch_size=8)
    spec = ModelSpec("small-cnn", num_classes=3, input_size=12)
    return train_run(run_dir, DataSpec(str(data)), spec, config, progress=False)


def test_streamed_train_run_holds_no_float_copy_and_equals_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = npy_folder(tmp_path / "data")
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    clear_caches()
    in_memory = train(tmp_path / "memory", data)

    def whole_set_copy(self: StreamedImages, *args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("a streamed split was copied whole into memory")

    monkeypatch.setattr(StreamedImages, "to", whole_set_copy)
    monkeypatch.setenv(ENV_BUDGET, "0")  # every split streams
    clear_caches()
    streamed = train(tmp_path / "streamed", data)
    clear_caches()
    drop = {"seconds"}
    assert {k: v for k, v in streamed.items() if k not in drop} == {
        k: v for k, v in in_memory.items() if k not in drop
    }
    a = load_file(tmp_path / "memory" / "model.safetensors")
    b = load_file(tmp_path / "streamed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_sweep_equals_in_memory_and_checks_labels_without_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The labels of a streamed set are checked against a one-pixel stand-in (an expanded
    N-image one was copied whole by the pixel check: 4 GB at 7 200 x 224 px)."""
    from robustlab.attacks import get_attack, sweep_dataset

    data = DataSpec(str(npy_folder(tmp_path / "data")))
    monkeypatch.delenv(ENV_BUDGET, raising=False)
    clear_caches()
    memory = load_splits(data).test
    monkeypatch.setenv(ENV_BUDGET, "0")
    clear_caches()
    streamed = load_splits(data).test
    clear_caches()
    assert isinstance(streamed.images, StreamedImages)
    torch.manual_seed(0)
    model = create_model(ModelSpec("small-cnn", num_classes=3, input_size=12)).eval()
    attack = get_attack("pgd", eps=0.1, steps=2, seed=0)
    a, b = (
        sweep_dataset(attack, model, split.images, split.labels, [0.05, 0.1], batch_size=4)
        for split in (memory, streamed)
    )
    assert torch.equal(a.correct, b.correct) and torch.equal(a.delta_linf, b.delta_linf)
    n = len(streamed.images)
    with pytest.raises(UserError, match=rf"y must have shape \({n},\)"):
        sweep_dataset(attack, model, streamed.images, streamed.labels[:-1], [0.1])


def test_a_streamed_set_is_not_pinned_for_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Pinning reads a tensor whole into page-locked memory; a streamed set (no tensor, no
    ``.device``) is left as it is and its chunks are copied as they are read."""
    from robustlab.devices import pin_for

    monkeypatch.setenv(ENV_BUDGET, "0")
    clear_caches()
    streamed = load_splits(DataSpec(str(npy_folder(tmp_path / "data")))).test.images
    clear_caches()
    assert isinstance(streamed, StreamedImages)
    assert pin_for(streamed, "cuda") is streamed
