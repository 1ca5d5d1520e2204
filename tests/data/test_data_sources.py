"""Generic sources written into tmp_path: image folders, images.npy folders, .npz files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import labelled_arrays, pixel_set, write_folder, write_npy_dir, write_npz
from PIL import Image

from robustlab.data import DataSpec, DataSplits, load_splits
from robustlab.errors import UserError


def all_images(splits: DataSplits) -> torch.Tensor:
    return torch.cat([part.images for _, part in splits.items()])


def test_image_folder_reads_every_image_exactly(tmp_path: Path) -> None:
    written = write_folder(tmp_path / "set", {"cat": 5, "ant": 4, "bee": 6})
    splits = load_splits(DataSpec(str(tmp_path / "set")))
    assert splits.classes == ("ant", "bee", "cat")  # sorted folder names
    assert splits.train.image_shape == (3, 6, 5)
    expected = {image.tobytes() for images in written.values() for image in images}
    assert pixel_set(all_images(splits)) == expected  # PNG is lossless: pixels survive exactly
    for _, part in splits.items():  # each image carries its class (pixel 0 = 40 * label)
        for image, label in zip(part.images, part.labels, strict=True):
            name = splits.classes[int(label)]
            assert round(float(image[0, 0, 0]) * 255) == 40 * list(written).index(name)


def test_grey_folder_stays_grey_and_mixed_becomes_rgb(tmp_path: Path) -> None:
    write_folder(tmp_path / "grey", {"a": 3, "b": 3}, channels=1)
    assert load_splits(DataSpec(str(tmp_path / "grey"))).train.image_shape == (1, 6, 5)
    write_folder(tmp_path / "mixed", {"a": 3}, channels=1)
    write_folder(tmp_path / "mixed", {"b": 3}, channels=3)
    mixed = load_splits(DataSpec(str(tmp_path / "mixed")))
    assert mixed.train.image_shape == (3, 6, 5)
    grey = mixed.train.images[mixed.train.labels == 0]
    if len(grey):
        assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_folder_skips_corrupt_files_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 4, "b": 4})
    good = (root / "a" / "000.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "empty.jpg").write_bytes(b"")
    (root / "b" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, not counted
    (root / "README.md").write_text("loose files beside the class folders are ignored")
    with caplog.at_level(logging.WARNING, logger="robustlab.data"):
        splits = load_splits(DataSpec(str(root)))
    assert splits.skipped == 3
    assert splits.info()["skipped_files"] == 3
    assert sum(len(p) for _, p in splits.items()) == 8
    assert "skipped 3 unreadable" in caplog.text


def test_folder_refuses_images_with_absurd_sizes(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 3, "b": 3})
    Image.new("1", (10_000, 10_000)).save(root / "a" / "huge.png")  # 100 M pixels, tiny file
    with pytest.raises(UserError, match=r"huge\.png.*larger than"):
        load_splits(DataSpec(str(root), on_corrupt="error"))
    assert load_splits(DataSpec(str(root))).skipped == 1


def test_folder_refuses_corrupt_files_when_asked(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 3, "b": 3})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"broken\.png.*on_corrupt"):
        load_splits(DataSpec(str(root), on_corrupt="error"))


def test_folder_with_mixed_sizes_needs_image_size(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 3}, size=(6, 5))
    write_folder(root, {"b": 3}, size=(9, 7))
    with pytest.raises(UserError, match="image_size"):
        load_splits(DataSpec(str(root)))
    splits = load_splits(DataSpec(str(root), image_size=4))
    assert splits.train.image_shape == (3, 4, 4)


def test_folder_reads_jpeg_and_nested_folders(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_folder(root / "a" / "nested", {"x": 3}, fmt="jpg")
    write_folder(root, {"b": 3}, fmt="jpg")
    # 'a' holds its images one level deeper: a/nested/x/*.jpg
    splits = load_splits(DataSpec(str(root)))
    assert splits.classes == ("a", "b")
    assert splits.info()["class_counts"]["total"] == {"a": 3, "b": 3}


def test_folder_without_class_folders_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "one.png")
    with pytest.raises(UserError, match="class sub-folders"):
        load_splits(DataSpec(str(root)))


def test_folder_with_an_empty_class_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "set"
    write_folder(root, {"a": 3, "b": 3})
    (root / "c").mkdir()
    with pytest.raises(UserError, match="'c' has no readable images"):
        load_splits(DataSpec(str(root)))


@pytest.mark.parametrize("layout", ["folder", "images.npy path"])
def test_npy_pair(tmp_path: Path, layout: str) -> None:
    images, labels = labelled_arrays([4, 5, 3])
    folder = write_npy_dir(tmp_path / "arrays", images, labels)
    name = folder if layout == "folder" else folder / "images.npy"
    splits = load_splits(DataSpec(str(name)))
    assert splits.classes == ("0", "1", "2")
    assert splits.train.image_shape == (3, 6, 5)
    assert pixel_set(all_images(splits)) == {image.tobytes() for image in images}


def test_npy_pair_grey_float_and_class_names(tmp_path: Path) -> None:
    images, labels = labelled_arrays([3, 3], channels=1)  # (N, H, W) grey
    floats = images.astype(np.float64) / 255.0
    folder = write_npy_dir(tmp_path / "arrays", floats, labels)
    (folder / "classes.txt").write_text("left\nright\n")
    splits = load_splits(DataSpec(str(folder)))
    assert splits.classes == ("left", "right")
    assert splits.train.image_shape == (1, 6, 5)
    got = sorted(all_images(splits).flatten().tolist())
    assert np.allclose(got, sorted(floats.astype(np.float32).flatten().tolist()))


def test_npy_pair_accepts_channels_first(tmp_path: Path) -> None:
    images, labels = labelled_arrays([3, 3])
    folder = write_npy_dir(tmp_path / "arrays", images.transpose(0, 3, 1, 2), labels)
    assert load_splits(DataSpec(str(folder))).train.image_shape == (3, 6, 5)


def test_npz_with_class_names(tmp_path: Path) -> None:
    images, labels = labelled_arrays([4, 4])
    path = write_npz(tmp_path / "set.npz", images, labels, class_names=np.array(["no", "yes"]))
    splits = load_splits(DataSpec(str(path)))
    assert splits.classes == ("no", "yes")
    assert pixel_set(all_images(splits)) == {image.tobytes() for image in images}


def test_npz_task_picks_another_label_array(tmp_path: Path) -> None:
    images, labels = labelled_arrays([4, 4])
    colour = np.arange(8) % 4
    path = write_npz(
        tmp_path / "set.npz",
        images,
        labels,
        colour=colour,
        colour_names=np.array(["red", "green", "blue", "grey"]),
    )
    splits = load_splits(DataSpec(str(path), task="colour", split=(0.5, 0.25, 0.25)))
    assert splits.classes == ("red", "green", "blue", "grey")
    assert splits.task == "colour"
    with pytest.raises(UserError, match="did you mean 'colour'"):
        load_splits(DataSpec(str(path), task="color"))


def test_a_relative_name_is_also_looked_up_in_the_data_dir(tmp_path: Path) -> None:
    images, labels = labelled_arrays([3, 3])
    write_npz(tmp_path / "mine.npz", images, labels)
    assert len(load_splits(DataSpec("mine.npz"), tmp_path).train) == 4


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    images, labels = labelled_arrays([3, 3])
    path = write_npz(tmp_path / "set.npz", images, labels)
    assert load_splits(DataSpec(str(path))).num_classes == 2
    images, labels = labelled_arrays([3, 3, 3])
    write_npz(path, images, labels)
    assert load_splits(DataSpec(str(path))).num_classes == 3
