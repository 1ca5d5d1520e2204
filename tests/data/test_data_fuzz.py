"""Fuzz: whatever bytes or arrays a source holds, only a UserError (or a valid load) comes out.

Any other exception type escapes the ``except UserError`` and fails the test with its traceback.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from data_helpers import labelled_arrays, write_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustlab.data import DataSpec, DataSplits, load_splits
from robustlab.errors import UserError

FUZZ = settings(
    max_examples=int(os.environ.get("ROBUSTLAB_FUZZ_EXAMPLES", "40")),  # raise for a deep run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPLIT = (1 / 3, 1 / 3, 1 / 3)


def check(spec: DataSpec) -> DataSplits | None:
    try:
        splits = load_splits(spec)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        return None
    for _, part in splits.items():
        assert part.images.dtype == torch.float32 and part.labels.dtype == torch.int64
        assert part.images.ndim == 4 and part.images.shape[1] in (1, 3)
        assert torch.isfinite(part.images).all()
        assert float(part.images.min()) >= 0.0 and float(part.images.max()) <= 1.0
        assert int(part.labels.min()) >= 0 and int(part.labels.max()) < splits.num_classes
    return splits


def valid_npz_bytes(compressed: bool) -> bytes:
    images, labels = labelled_arrays([3, 3], size=(4, 4))
    buffer = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buffer, images=images, labels=labels, class_names=np.array(["a", "b"]))
    return buffer.getvalue()


def valid_npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6)
CUT = st.none() | st.integers(0, 2000)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_as_npz(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        path.write_bytes(data)
        check(DataSpec(str(path), split=SPLIT))


@FUZZ
@given(compressed=st.booleans(), edits=EDITS, cut=CUT)
def test_mutated_npz(compressed: bool, edits: list[tuple[int, int]], cut: int | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        path.write_bytes(mutate(valid_npz_bytes(compressed), edits, cut))
        check(DataSpec(str(path), split=SPLIT))


@FUZZ
@given(images=st.binary(max_size=300), labels=st.binary(max_size=100))
def test_random_bytes_as_npy_pair(images: bytes, labels: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "images.npy").write_bytes(images)
        (Path(folder) / "labels.npy").write_bytes(labels)
        check(DataSpec(folder, split=SPLIT))


@FUZZ
@given(edits=EDITS, cut=CUT, which=st.sampled_from(["images", "labels"]))
def test_mutated_npy_pair(edits: list[tuple[int, int]], cut: int | None, which: str) -> None:
    images, labels = labelled_arrays([3, 3], size=(4, 4))
    files = {"images": valid_npy_bytes(images), "labels": valid_npy_bytes(labels)}
    files[which] = mutate(files[which], edits, cut)
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / f"{name}.npy").write_bytes(data)
        check(DataSpec(folder, split=SPLIT))


DTYPES = st.sampled_from(
    ["u1", "i1", "u2", "i4", "i8", "u8", "f2", "f4", "f8", "b1", "c8", "U3", "S2", "M8[s]"]
)


@FUZZ
@given(
    images=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, max_side=7)),
    labels=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=2, max_side=8)),
    names=st.none() | st.lists(st.text(max_size=4), max_size=4),
)
def test_arbitrary_arrays_in_an_npz(
    images: np.ndarray, labels: np.ndarray, names: list[str] | None
) -> None:
    extra = {} if names is None else {"class_names": np.array(names, dtype=str)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        np.savez(path, images=images, labels=labels, **extra)
        check(DataSpec(str(path), split=SPLIT, stratify=True))


@FUZZ
@given(
    files=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(["png", "jpg", "bmp", "gif", "x"]),
            st.binary(max_size=200),
        ),
        min_size=1,
        max_size=6,
    ),
    on_corrupt=st.sampled_from(["skip", "error"]),
    image_size=st.none() | st.just(4),
)
def test_random_bytes_as_image_files(
    files: list[tuple[str, str, bytes]], on_corrupt: str, image_size: int | None
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_folder(root, {"a": 2, "b": 2}, size=(4, 4))
        for i, (label, suffix, data) in enumerate(files):
            (root / label / f"fuzz{i}.{suffix}").write_bytes(data)
        spec = DataSpec(folder, split=SPLIT, on_corrupt=on_corrupt, image_size=image_size)
        splits = check(spec)
        if splits is not None and on_corrupt == "skip":
            assert splits.skipped <= len(files)


@FUZZ
@given(edits=EDITS, cut=CUT, fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]))
def test_mutated_image_files(edits: list[tuple[int, int]], cut: int | None, fmt: str) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(labelled_arrays([1], size=(5, 5))[0][0]).save(buffer, format=fmt)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_folder(root, {"a": 2, "b": 2}, size=(5, 5))
        (root / "a" / "mutant.img").write_bytes(mutate(buffer.getvalue(), edits, cut))
        check(DataSpec(folder, split=SPLIT, image_size=5))


def test_a_header_promising_terabytes_is_refused_before_allocating(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", buffer.getvalue() + b"\0" * 64)
        archive.writestr("labels.npy", valid_npy_bytes(np.zeros(2, int)))
    try:
        load_splits(DataSpec(str(path), split=SPLIT))
    except UserError as error:
        assert "header promises 8000000000000 bytes" in str(error)
    else:
        raise AssertionError("a truncated array was accepted")
