"""Hostile inputs: every one ends in ONE clear line (exit 2 / UserError), never a traceback,
never code execution, never an output file. docs/HOSTILE_INPUTS.md lists what happens.

Through the CLI wherever a command reads the input: in this process (``robustlab.cli.main``,
the code path of ``python -m robustlab`` minus the interpreter start) for most cases, and as a
real ``python -m robustlab`` child for the ones where the process boundary matters.
"""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    DIGITS,
    SMALL_CNN,
    assert_one_line_error,
    call_cli,
    files_under,
    read_json,
    run_cli,
)
from PIL import Image

from robustlab.errors import UserError
from robustlab.io import write_json
from robustlab.models import ModelSpec, create_model, save_checkpoint
from robustlab.training import TrainConfig, fit

TRAIN = ("train", *SMALL_CNN, "--epochs", "1", "--image-size", "12")


class Planted:
    """Unpickling this runs ``touch MARKER``: a checkpoint that is really an exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"conv.weight": Planted(marker)}, protocol=2))
    return path


def image_folder(root: Path, per_class: int = 6, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def npy_source(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    return folder


def grey(n: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def broken_run(run_dir: Path, tmp_path: Path, weights: bytes) -> Path:
    copy = tmp_path / "broken-run"
    copy.mkdir()
    (copy / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    (copy / "model.safetensors").write_bytes(weights)
    return copy


# ------------------------------------------------------------------ data sources (train CLI)


def labels_short(tmp: Path) -> Path:
    return npy_source(tmp / "src", grey(20), np.arange(15) % 2)


def nan_pixels(tmp: Path) -> Path:
    images = np.random.default_rng(0).random((20, 12, 12, 1), dtype=np.float32)
    images[3, 1, 1, 0] = np.nan
    return npy_source(tmp / "src", images, np.arange(20) % 2)


def inf_pixels(tmp: Path) -> Path:
    images = np.random.default_rng(0).random((20, 12, 12, 1), dtype=np.float32)
    images[0, 0, 0, 0] = np.inf
    return npy_source(tmp / "src", images, np.arange(20) % 2)


def two_channels(tmp: Path) -> Path:
    images = np.random.default_rng(0).integers(0, 256, (20, 12, 12, 2), dtype=np.uint8)
    return npy_source(tmp / "src", images, np.arange(20) % 2)


def empty_arrays(tmp: Path) -> Path:
    return npy_source(tmp / "src", grey(0), np.zeros(0, dtype=np.int64))


def folder_without_images(tmp: Path) -> Path:
    for name in ("a", "b"):
        (tmp / "src" / name).mkdir(parents=True)
        (tmp / "src" / name / "readme.txt").write_text("not an image")
    return tmp / "src"


def one_sample_class(tmp: Path) -> Path:
    return npy_source(tmp / "src", grey(21), np.array([0] * 10 + [1] * 10 + [2]))


def npz_without_labels(tmp: Path) -> Path:
    np.savez(tmp / "src.npz", images=grey(10))
    return tmp / "src.npz"


@pytest.mark.parametrize(
    ("make", "extra", "needles"),
    [
        (labels_short, (), ["15 labels for 20 images"]),
        (nan_pixels, (), ["NaN or infinite"]),
        (inf_pixels, (), ["NaN or infinite"]),
        (two_channels, (), ["1 (grey) or 3 (RGB) channels"]),
        (empty_arrays, (), ["empty"]),
        (folder_without_images, (), ["no readable images"]),
        (one_sample_class, ("--stratify",), ["only 1 image", "stratified"]),
        (npz_without_labels, (), ["no 'labels' array"]),
    ],
    ids=lambda v: getattr(v, "__name__", None) or "",
)
def test_bad_data_sources_are_refused_in_one_line(make, extra, needles, tmp_path, capsys):
    source, out = make(tmp_path), tmp_path / "out"
    code, _, err = call_cli([*TRAIN, "--data", source, *extra, "--out", out], capsys)
    assert_one_line_error(code, err, *needles)
    assert files_under(out) == []


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path, capsys, caplog):
    root = image_folder(tmp_path / "pets")
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "truncated.png").write_bytes(good[: len(good) // 3])
    (root / "dog" / "garbage.jpg").write_bytes(os.urandom(300))
    (root / "dog" / "notes.txt").write_text("a text file among the images")
    out = tmp_path / "out"
    code, _, err = call_cli([*TRAIN, "--data", root, "--out", out], capsys)
    assert code == 0, err
    assert "skipped 3 unreadable file(s)" in caplog.text
    info = read_json(out / "config.json")["data_info"]
    assert info["skipped_files"] == 3
    assert sum(info["sizes"].values()) == 12  # the 12 good images, nothing else


def test_corrupt_files_are_refused_when_configured(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    (root / "dog" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(50))
    out = tmp_path / "out"
    code, _, err = call_cli([*TRAIN, "--data", root, "--on-corrupt", "error", "--out", out], capsys)
    assert_one_line_error(code, err, "cannot decode image", "garbage.png")
    assert files_under(out) == []


# ------------------------------------------------------------------ names and settings


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--data", "digitz"], ["unknown data set 'digitz'", "did you mean 'digits'"]),
        (["--data", "digits", "--model", "smal-cnn"], ["did you mean 'small-cnn'"]),
        (["--data", "digits", "--strategy", "scrach"], ["did you mean 'scratch'"]),
        (["--data", "digits", "--optimizer", "adamm"], ["did you mean 'adam'"]),
        (["--data", "digits", "--lr", "-1"], ["lr must be"]),
        (["--data", "digits", "--epochs", "0"], ["epochs must be"]),
        (["--data", "digits", "--split", "0.5,0.5"], ["--split needs 3 numbers"]),
    ],
)
def test_bad_training_names_and_settings(args, needles, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = call_cli([*TRAIN, *args, "--out", out], capsys)
    assert_one_line_error(code, err, *needles)
    assert files_under(out) == []


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--attack", "pgd", "--eps", "-0.1"], ["--eps must be >= 0"]),
        (["--attack", "pgd", "--eps", "1.5"], ["--eps must be <= 1"]),
        (["--attack", "pgd", "--eps", "nan"], ["--eps must be a number"]),
        (["--attack", "pgd", "--eps", "0.1", "--steps", "0"], ["steps must be >= 1"]),
        (["--attack", "pgdd", "--eps", "0.1"], ["unknown attack 'pgdd'", "did you mean 'pgd'"]),
    ],
)
def test_bad_attack_settings(args, needles, untrained_run, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = call_cli(["attack", untrained_run, *args, "--out", out], capsys)
    assert_one_line_error(code, err, *needles)
    assert files_under(out) == []


def test_yaml_typos_name_the_key_and_suggest(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    cases = {
        "study: leaf\ndata:\n  name: digits\n  imgae_size: 12\n": ["'imgae_size'", "image_size"],
        "study: leaf\nseed: [0\n": ["invalid YAML"],
        "study: lef\n": ["unknown study 'lef'", "did you mean 'leaf'"],
        "- just\n- a list\n": ["study.yaml"],
    }
    for text, needles in cases.items():
        study.write_text(text)
        code, _, err = call_cli(["run", study, "--out", tmp_path / "out"], capsys)
        assert_one_line_error(code, err, *needles)
    assert files_under(tmp_path / "out") == []


# ------------------------------------------------------------------ checkpoints


def test_malicious_pickle_as_pretrained_weights_runs_no_code(tmp_path):
    marker = tmp_path / "PWNED"
    evil = malicious_pickle(tmp_path / "weights.pt", marker)
    out = tmp_path / "out"
    done = run_cli(
        [*TRAIN, *DIGITS, "--pretrained", evil, "--out", out], tmp_path, ROBUSTLAB_TCMALLOC="0"
    )
    assert_one_line_error(done.returncode, done.stderr, "refusing to load", str(evil))
    assert not marker.exists(), "the pickle's code ran"
    assert files_under(out) == []


def test_malicious_training_state_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    out = tmp_path / "out"
    out.mkdir()
    malicious_pickle(out / "train_state.pt", marker)
    code, _, err = call_cli([*TRAIN, *DIGITS, "--out", out], capsys)
    assert_one_line_error(code, err, "refusing to load training state", "could run code")
    assert not marker.exists()
    assert [p.name for p in files_under(out)] == ["train_state.pt"]  # left for the user


def test_malicious_pickle_in_a_run_directory_runs_no_code(untrained_run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    weights = pickle.dumps({"w": Planted(marker)}, protocol=2)
    broken = broken_run(untrained_run, tmp_path, weights)
    out = tmp_path / "out"
    code, _, err = call_cli(
        ["attack", broken, "--attack", "fgsm", "--eps", "0.1", "--out", out], capsys
    )
    assert_one_line_error(code, err, "model.safetensors", "corrupt")
    assert not marker.exists()
    assert files_under(out) == []


def test_truncated_safetensors_is_refused(untrained_run, tmp_path, capsys):
    data = (untrained_run / "model.safetensors").read_bytes()
    broken = broken_run(untrained_run, tmp_path, data[: len(data) // 2])
    out = tmp_path / "out"
    code, _, err = call_cli(
        ["attack", broken, "--attack", "fgsm", "--eps", "0.1", "--out", out], capsys
    )
    assert_one_line_error(code, err, "truncated or corrupt")
    assert files_under(out) == []


# ------------------------------------------------------------------ library-only inputs


def test_fit_refuses_nan_pixels_and_wrong_channel_counts():
    model = create_model(ModelSpec(arch="small-cnn", num_classes=2, in_chans=1, input_size=12))
    labels = torch.tensor([0, 1, 0, 1])
    images = torch.rand(4, 1, 12, 12)
    config = TrainConfig(strategy="scratch", epochs=1)
    nan = images.clone()
    nan[1, 0, 2, 2] = float("nan")
    with pytest.raises(UserError, match="train images hold NaN or infinite"):
        fit(model, (nan, labels), (images, labels), config, progress=False)
    rgb = torch.rand(4, 3, 12, 12)
    with pytest.raises(UserError, match="val images have 3 channels but the model takes 1"):
        fit(model, (images, labels), (rgb, labels), config, progress=False)
    with pytest.raises(UserError, match="empty"):
        fit(model, (images[:0], labels[:0]), (images, labels), config, progress=False)


# ------------------------------------------------------------------ full disk


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_during_a_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    target = tmp_path / "results" / "metrics.json"
    with pytest.raises(UserError, match="No space left on device") as caught:
        write_json(target, {"accuracy": 0.9})
    assert "\n" not in str(caught.value) and str(target) in str(caught.value)
    assert files_under(tmp_path) == []  # neither the destination nor a temporary file


def test_full_disk_in_native_writers_is_a_user_error(tmp_path, monkeypatch):
    """safetensors (Rust) and torch.save (C++) report a full disk as their own exceptions."""
    import safetensors.torch

    from robustlab.io import atomic_path

    def rust_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")  # what a real short write leaves
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", rust_full)
    model = create_model(ModelSpec(arch="small-cnn", num_classes=2, in_chans=1, input_size=12))
    with pytest.raises(UserError, match=r"model\.safetensors: No space left on device"):
        save_checkpoint(tmp_path / "run", model, {"classes": ["a", "b"]})
    assert files_under(tmp_path) == []

    # torch.save's message names no errno: the file system itself is asked
    monkeypatch.setattr(os, "statvfs", lambda _: os.statvfs_result((4096,) * 3 + (0,) * 7))
    with (
        pytest.raises(UserError, match="No space left on device"),
        atomic_path(tmp_path / "s.pt") as tmp,
    ):
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 576 vs 534")
    assert files_under(tmp_path) == []


def test_full_disk_while_training_exits_2_with_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    out = tmp_path / "out"
    code, _, err = call_cli([*TRAIN, *DIGITS, "--limit", "100", "--out", out], capsys)
    assert_one_line_error(code, err, "could not write", "No space left on device")
    assert files_under(out) == []
