"""Folder walking: links never duplicate, re-label or loop; special files are never opened."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustlab.data.arrays import RawData
from robustlab.data.folder import FOLLOW_OUTSIDE_ENV, read_folder, scan_folder
from robustlab.errors import UserError


def _images(folder: Path, count: int, shade: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = np.full((8, 8), (shade + 7 * index) % 256, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")


@pytest.fixture
def two_classes(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _images(root / "a", 6, 10)
    _images(root / "b", 6, 200)
    return root


def _read(root: Path) -> RawData:
    return read_folder(root)


def test_loop_and_link_to_another_class_add_nothing(two_classes: Path) -> None:
    (two_classes / "a" / "loop").symlink_to(".")
    (two_classes / "a" / "tob").symlink_to("../b")
    (two_classes / "a" / "sub").mkdir()
    (two_classes / "a" / "sub" / "up").symlink_to("../..")
    raw = _read(two_classes)
    assert len(raw.labels) == 12
    assert np.bincount(raw.labels).tolist() == [6, 6]
    # b's images keep label b: every image labelled a is darker than any labelled b
    a_pixels = raw.images[raw.labels == 0].max()
    b_pixels = raw.images[raw.labels == 1].min()
    assert a_pixels < b_pixels


def test_self_links_do_not_hang(two_classes: Path) -> None:
    (two_classes / "a" / "x.png").symlink_to("x.png")  # ELOOP
    (two_classes / "a" / "p").symlink_to("q")
    (two_classes / "a" / "q").symlink_to("p")
    raw = _read(two_classes)
    assert len(raw.labels) == 12
    assert raw.skipped == 3  # the looping links are unreadable files


def test_file_links_to_one_file_count_once(two_classes: Path) -> None:
    (two_classes / "a" / "copy1.png").symlink_to("img0.png")
    os.link(two_classes / "a" / "img1.png", two_classes / "a" / "hard.png")
    (two_classes / "b" / "stolen.png").symlink_to("../a/img0.png")
    raw = _read(two_classes)
    assert np.bincount(raw.labels).tolist() == [6, 6]


def test_links_outside_the_root_need_the_setting(
    two_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _images(tmp_path / "elsewhere", 3, 100)
    (two_classes / "a" / "ext").symlink_to(tmp_path / "elsewhere")
    (two_classes / "a" / "ext2").symlink_to(tmp_path / "elsewhere")  # the same folder twice
    (tmp_path / "elsewhere" / "back").symlink_to(tmp_path / "elsewhere")  # a loop outside
    monkeypatch.delenv(FOLLOW_OUTSIDE_ENV, raising=False)
    assert len(scan_folder(two_classes)[1][0]) == 6
    monkeypatch.setenv(FOLLOW_OUTSIDE_ENV, "1")
    assert len(scan_folder(two_classes)[1][0]) == 9


def test_class_folder_linking_outside_or_to_a_class_is_refused(
    two_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FOLLOW_OUTSIDE_ENV, raising=False)
    _images(tmp_path / "elsewhere", 3, 100)
    (two_classes / "c").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=FOLLOW_OUTSIDE_ENV):
        scan_folder(two_classes)
    (two_classes / "c").unlink()
    (two_classes / "c").symlink_to("b")
    with pytest.raises(UserError, match="another class folder"):
        scan_folder(two_classes)


def test_special_files_named_like_images_are_skipped_not_opened(two_classes: Path) -> None:
    os.mkfifo(two_classes / "a" / "fifo.png")  # opening it for reading would block forever
    server = socket.socket(socket.AF_UNIX)
    # A path too long for AF_UNIX cannot be bound: the FIFO alone still tests the rule.
    with contextlib.suppress(OSError):
        server.bind(str(two_classes / "b" / "sock.png"))
    (two_classes / "b" / "zero.png").symlink_to("/dev/zero")
    try:
        raw = read_folder(two_classes, on_corrupt="skip")
    finally:
        server.close()
    assert len(raw.labels) == 12
    assert raw.skipped >= 1


def test_class_folders_not_named_in_utf8_get_printable_names(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _images(root / "b", 2, 10)
    latin1 = os.fsdecode(b"caf\xe9")  # 'caf\udce9': a surrogate escape
    _images(root / latin1, 2, 100)
    raw = read_folder(root)
    assert set(raw.classes) == {"b", "caf\\udce9"}
    for name in raw.classes:
        name.encode("utf-8")  # strict: every writer and plot can take it
