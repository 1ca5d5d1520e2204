"""Every bad input gives a one-line UserError that names what is wrong."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_helpers import labelled_arrays, write_npy_dir, write_npz

from robustlab.data import DataSpec, load_splits
from robustlab.errors import UserError


def fails(spec_or_name, match: str, data_dir: Path | None = None) -> str:
    spec = spec_or_name if isinstance(spec_or_name, DataSpec) else DataSpec(str(spec_or_name))
    with pytest.raises(UserError, match=match) as error:
        load_splits(spec, data_dir)
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- DataSpec fields


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("name", "", "data.name"),
        ("task", "", "data.task"),
        ("image_size", 0, "data.image_size"),
        ("image_size", 3.5, "data.image_size"),
        ("image_size", True, "data.image_size"),
        ("channels", 2, "data.channels"),
        ("channels", 4, "data.channels"),
        ("classes", (), "data.classes"),
        ("classes", "abc", "data.classes"),
        ("classes", (1.5,), "data.classes"),
        ("split", (0.7, 0.3), "three fractions"),
        ("split", (0.7, 0.2, 0.2), "sum to 1"),
        ("split", (0.8, 0.2, 0.0), "'test' must be > 0"),
        ("split", (0.5, float("nan"), 0.5), "'val'"),
        ("split", "abc", "data.split"),
        ("seed", -1, "data.seed"),
        ("stratify", "yes", "data.stratify"),
        ("limit", 0, "data.limit"),
        ("on_corrupt", "ignore", "data.on_corrupt"),
    ],
)
def test_bad_spec_fields_name_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(UserError, match=match):
        DataSpec(**{"name": "digits", field: value})


def test_spec_accepts_json_lists() -> None:
    spec = DataSpec("digits", classes=["1", 2], split=[0.6, 0.2, 0.2])
    assert spec.classes == ("1", 2) and spec.split == (0.6, 0.2, 0.2)
    assert hash(spec) == hash(DataSpec("digits", classes=("1", 2), split=(0.6, 0.2, 0.2)))


# ---------------------------------------------------------------- names


def test_unknown_named_set_suggests_a_close_name() -> None:
    fails("fashion-mnst", "unknown data set 'fashion-mnst'.*did you mean 'fashion-mnist'")


def test_unknown_task_suggests_a_close_name(data_dir: Path) -> None:
    fails(DataSpec("plantvillage-tomato", task="diseases"), "unknown task.*did you mean 'disease'")


def test_unknown_class_name(data_dir: Path) -> None:
    fails(DataSpec("digits", classes=("1", "ten")), "unknown class 'ten'")


def test_task_on_a_folder_source_is_refused(tmp_path: Path) -> None:
    images, labels = labelled_arrays([3, 3])
    write_npy_dir(tmp_path / "a", images, labels)
    fails(DataSpec(str(tmp_path / "a"), task="x"), "data.task")


# ---------------------------------------------------------------- paths and files


def test_missing_path(tmp_path: Path) -> None:
    fails(tmp_path / "nope.npz", "data path not found")
    fails(tmp_path / "nope" / "", "not found")


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("a,b\n")
    fails(path, "not a supported source")


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    fails(path, r"not a readable \.npz")


def test_npz_member_that_is_not_npy(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", b"garbage")
        archive.writestr("labels.npy", b"garbage")
    fails(path, r"'images'.*not a valid \.npy")


def test_truncated_npz_member(tmp_path: Path) -> None:
    images, labels = labelled_arrays([30, 30], size=(16, 16))  # big enough to be read in parts
    good = tmp_path / "good.npz"
    np.savez(good, images=images, labels=labels)  # stored, not compressed
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("images.npy")
    # keep the zip directory intact but shorten the header's promise of data: claim more rows
    start = data.find(b"'shape': (60, 16, 16, 3)", info.header_offset)
    data[start : start + 24] = b"'shape': (90, 16, 16, 3)"
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    fails(path, "truncated or corrupt: its header promises")


def test_npz_without_images(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, pixels=np.zeros((3, 4, 4)), labels=np.zeros(3, int))
    fails(path, "no 'images' array; it holds: labels, pixels")


def test_npz_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((3, 4, 4)), target=np.zeros(3, int))
    fails(path, "no 'labels' array.*data.task")


def test_corrupt_npy(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "images.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.save(folder / "labels.npy", np.zeros(3, int))
    fails(folder, r"not a valid \.npy")


def test_npy_truncated(tmp_path: Path) -> None:
    images, labels = labelled_arrays([3, 3])
    folder = write_npy_dir(tmp_path / "a", images, labels)
    data = (folder / "images.npy").read_bytes()
    (folder / "images.npy").write_bytes(data[:-10])
    fails(folder, "truncated")


def test_npy_without_labels_file(tmp_path: Path) -> None:
    images, _ = labelled_arrays([3, 3])
    folder = tmp_path / "a"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    fails(folder, "labels.npy")


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    np.save(folder / "images.npy", np.array([object()] * 3), allow_pickle=True)
    np.save(folder / "labels.npy", np.zeros(3, int))
    fails(folder, "pickle")


# ---------------------------------------------------------------- array contents


@pytest.mark.parametrize(("n_labels", "word"), [(5, "fewer"), (7, "more")])
def test_labels_not_matching_images(tmp_path: Path, n_labels: int, word: str) -> None:
    images, _ = labelled_arrays([3, 3])
    path = write_npz(tmp_path / "x.npz", images, np.zeros(n_labels, int))
    fails(path, f"{n_labels} labels for 6 images \\({word} labels")


@pytest.mark.parametrize(("value", "match"), [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_pixels(tmp_path: Path, value: float, match: str) -> None:
    images = np.full((6, 4, 4, 3), 0.5)
    images[2, 1, 1, 0] = value
    path = write_npz(tmp_path / "x.npz", images, np.arange(6) % 2)
    fails(path, match)


@pytest.mark.parametrize("value", [-0.1, 1.5, 255.0])
def test_float_pixels_outside_unit_range(tmp_path: Path, value: float) -> None:
    images = np.full((6, 4, 4, 3), 0.5, dtype=np.float32)
    images[0, 0, 0, 0] = value
    path = write_npz(tmp_path / "x.npz", images, np.arange(6) % 2)
    fails(path, r"\[0, 1\]")


def test_integer_pixels_outside_byte_range(tmp_path: Path) -> None:
    images = np.full((6, 4, 4), 300, dtype=np.int32)
    fails(write_npz(tmp_path / "x.npz", images, np.arange(6) % 2), "0..255")


@pytest.mark.parametrize("channels", [2, 4, 5])
def test_wrong_channel_counts(tmp_path: Path, channels: int) -> None:
    images = np.zeros((6, 4, 4, channels), dtype=np.uint8)
    fails(write_npz(tmp_path / "x.npz", images, np.arange(6) % 2), "channels")


@pytest.mark.parametrize("shape", [(6,), (6, 16), (6, 2, 4, 4, 3)])
def test_wrong_image_shapes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    images = np.zeros(shape, dtype=np.uint8)
    fails(write_npz(tmp_path / "x.npz", images, np.arange(6) % 2), "shape")


def test_zero_size_images(tmp_path: Path) -> None:
    images = np.zeros((6, 0, 4, 3), dtype=np.uint8)
    fails(write_npz(tmp_path / "x.npz", images, np.arange(6) % 2), "zero size")


def test_empty_data_set(tmp_path: Path) -> None:
    images = np.zeros((0, 4, 4, 3), dtype=np.uint8)
    fails(write_npz(tmp_path / "x.npz", images, np.zeros(0, int)), "empty")


def test_bad_pixel_dtype(tmp_path: Path) -> None:
    images = np.full((6, 4, 4), "x")
    fails(write_npz(tmp_path / "x.npz", images, np.arange(6) % 2), "dtype")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0, 1, -1, 0, 1, 0]), ">= 0"),
        (np.array([0, 1, 0.5, 0, 1, 0]), "whole numbers"),
        (np.array(["a"] * 6), "integer class indices"),
        (np.zeros((6, 2), int), "1-D"),
    ],
)
def test_bad_labels(tmp_path: Path, labels: np.ndarray, match: str) -> None:
    images, _ = labelled_arrays([3, 3])
    fails(write_npz(tmp_path / "x.npz", images, labels), match)


def test_huge_label_values_are_refused_without_allocating(tmp_path: Path) -> None:
    images, _ = labelled_arrays([3, 3])
    labels = np.array([0, 1, 0, 1, 0, 2**40], dtype=np.int64)
    fails(write_npz(tmp_path / "x.npz", images, labels), "ROBUSTLAB_MAX_CLASSES")
    fails(
        write_npz(tmp_path / "y.npz", images, labels.astype(float) * 1e280), "ROBUSTLAB_MAX_CLASSES"
    )


def test_label_without_class_name(tmp_path: Path) -> None:
    images, labels = labelled_arrays([2, 2, 2])
    path = write_npz(tmp_path / "x.npz", images, labels, class_names=np.array(["a", "b"]))
    fails(path, "label 2 has no class name")


def test_duplicate_class_names(tmp_path: Path) -> None:
    images, labels = labelled_arrays([3, 3])
    path = write_npz(tmp_path / "x.npz", images, labels, class_names=np.array(["a", "a"]))
    fails(path, "unique")


def test_a_split_with_zero_images(tmp_path: Path) -> None:
    images, labels = labelled_arrays([1, 1])
    fails(write_npz(tmp_path / "x.npz", images, labels), "0 images")
