"""Fuzzing: random bytes, YAML and shapes into every reader; the only failure allowed is a
UserError with one line. Anything else escapes and fails the test with its traceback.

Example counts are modest (``ROBUSTLAB_FUZZ_EXAMPLES``, default 30) so the suite stays fast;
raise it for a deep run. The data layer's own fuzz tests (tests/data) mutate its formats in
detail; these feed the public entry points end to end.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustlab.data import DataSpec, load_splits
from robustlab.errors import UserError
from robustlab.models import ModelSpec, create_model, load_checkpoint, save_checkpoint
from robustlab.studies import load_study
from robustlab.studies.study import PRESETS_DIR
from robustlab.training.loop import STATE_FILE, _load_state

FUZZ = settings(
    max_examples=int(os.environ.get("ROBUSTLAB_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPLIT = (0.5, 0.25, 0.25)
LEAF = (PRESETS_DIR / "leaf.yaml").read_text(encoding="utf-8")


def only_user_errors(call, *args, **kwargs) -> Any:
    """``call(...)``'s result, or None for a one-line UserError; anything else propagates."""
    try:
        return call(*args, **kwargs)
    except UserError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        return None


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)
CUT = st.none() | st.integers(0, 4000)


# ------------------------------------------------------------------ data loaders


def check_splits(spec: DataSpec) -> None:
    splits = only_user_errors(load_splits, spec)
    if splits is None:
        return
    for _, part in splits.items():
        assert part.images.dtype == torch.float32 and part.images.ndim == 4
        assert torch.isfinite(part.images).all()
        if part.images.numel():
            assert float(part.images.min()) >= 0.0 and float(part.images.max()) <= 1.0
        assert len(part.images) == len(part.labels)


@FUZZ
@given(
    data=st.binary(max_size=800),
    kind=st.sampled_from(["x.npz", "images.npy", "labels.npy", "a/0.png", "b/1.png"]),
)
def test_random_bytes_into_load_splits(data: bytes, kind: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        target = root / kind
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if kind.endswith(".npy"):  # give the other half of the pair a valid array
            other = "labels.npy" if kind == "images.npy" else "images.npy"
            valid = (
                np.zeros(4, np.int64) if other == "labels.npy" else np.zeros((4, 5, 5, 1), np.uint8)
            )
            np.save(root / other, valid)
        source = str(target) if kind.endswith(".npz") else folder
        check_splits(DataSpec(source, split=SPLIT))


IMAGE_DTYPES = st.sampled_from(["u1", "f4", "f8", "i2", "b1", "f2"])


@FUZZ
@given(
    images=hnp.arrays(
        IMAGE_DTYPES,
        hnp.array_shapes(min_dims=2, max_dims=5, min_side=0, max_side=6),
    ),  # float arrays include NaN and inf
    labels=hnp.arrays(
        "i8", hnp.array_shapes(min_dims=1, max_dims=2, max_side=8), elements=st.integers(-2, 5)
    ),
    image_size=st.none() | st.integers(1, 7),
    channels=st.none() | st.sampled_from([1, 3]),
    stratify=st.booleans(),
)
def test_random_shapes_and_values_into_load_splits(images, labels, image_size, channels, stratify):
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "images.npy", images)
        np.save(Path(folder) / "labels.npy", labels)
        spec = DataSpec(
            folder, split=SPLIT, image_size=image_size, channels=channels, stratify=stratify
        )
        check_splits(spec)


# ------------------------------------------------------------------ study configs


def load_text(text: str | bytes, overrides: tuple[str, ...] = ()) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "replace"))
        return only_user_errors(load_study, str(path), overrides)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_as_a_study_file(data: bytes) -> None:
    load_text(data)


@FUZZ
@given(edits=EDITS, cut=CUT)
def test_mutated_preset_text(edits: list[tuple[int, int]], cut: int | None) -> None:
    # printable edits keep most of the YAML parseable, so validation is reached, not just YAML
    printable = [(position, 32 + value % 95) for position, value in edits]
    load_text(mutate(LEAF.encode(), printable, cut))


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


LEAF_VALUES = yaml.safe_load(LEAF)
LEAF_PATHS = _paths(LEAF_VALUES)


@FUZZ
@given(
    changes=st.lists(st.tuples(st.sampled_from(LEAF_PATHS), VALUES), min_size=1, max_size=4),
    extra=st.dictionaries(st.text(max_size=10), SCALARS, max_size=2),
)
def test_random_values_in_the_preset_dict(changes, extra) -> None:
    import copy

    values = copy.deepcopy(LEAF_VALUES)
    for path, value in changes:
        container = values
        try:
            for key in path[:-1]:
                container = container[key]
            container[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced a parent of this path
    values.update(extra)
    load_text(yaml.safe_dump(values, allow_unicode=True))


@FUZZ
@given(
    overrides=st.lists(
        st.tuples(
            st.lists(
                st.sampled_from(
                    [
                        "data",
                        "models",
                        "curves",
                        "*",
                        "0",
                        "9",
                        "finetune",
                        "eps",
                        "epochs",
                        "limit",
                        "name",
                        "attack",
                        "settings",
                        "x",
                    ]
                ),
                min_size=1,
                max_size=4,
            ),
            st.text(max_size=12),
        ).map(lambda kv: ".".join(kv[0]) + "=" + kv[1]),
        min_size=1,
        max_size=3,
    )
)
def test_random_set_overrides(overrides: list[str]) -> None:
    only_user_errors(load_study, "leaf", tuple(overrides))


# ------------------------------------------------------------------ checkpoints and states


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    model = create_model(ModelSpec(arch="small-cnn", num_classes=3, in_chans=1, input_size=10))
    data = dataclasses.asdict(DataSpec(name="digits", image_size=10))
    save_checkpoint(folder, model, {"classes": ["a", "b", "c"], "data": data})
    return folder


@FUZZ
@given(edits=EDITS, cut=CUT, which=st.sampled_from(["model.safetensors", "config.json"]))
def test_mutated_run_directory(valid_run: Path, edits, cut, which: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder)
        for name in ("model.safetensors", "config.json"):
            data = (valid_run / name).read_bytes()
            (run / name).write_bytes(mutate(data, edits, cut) if name == which else data)
        loaded = only_user_errors(load_checkpoint, run)
        if loaded is not None:
            model, _ = loaded
            assert model(torch.rand(2, 1, 10, 10)).shape == (2, 3)


def _state_bytes() -> bytes:
    buffer = io.BytesIO()
    state = {
        "model": {"w": torch.zeros(3)},
        "optimizer": {"state": {}, "param_groups": []},
        "phase": "full",
        "history": [{"epoch": 1, "val_accuracy": 0.5}],
        "best": {"accuracy": 0.5, "epoch": 1, "weights": None},
    }
    torch.save(state, buffer)
    return buffer.getvalue()


STATE = _state_bytes()


@FUZZ
@given(edits=EDITS, cut=CUT, random=st.none() | st.binary(max_size=300))
def test_mutated_training_state(edits, cut, random: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = random if random is not None else mutate(STATE, edits, cut)
        (Path(folder) / STATE_FILE).write_bytes(data)
        state = only_user_errors(_load_state, folder)
        if state is not None:  # whatever loads is a usable state, or fit would crash on it
            assert {"model", "optimizer", "phase", "history", "best"} <= set(state)
