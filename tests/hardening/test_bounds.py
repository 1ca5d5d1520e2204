"""Resource budgets: everything a user can size is refused in one line before memory is taken."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, call_cli, cli_env
from hypothesis import given, settings
from hypothesis import strategies as st

from robustlab.attacks import get_attack
from robustlab.attacks.epsilon import parse_eps_list
from robustlab.budgets import budgets
from robustlab.data.arrays import make_raw
from robustlab.distributed import launch
from robustlab.errors import UserError
from robustlab.io import read_json
from robustlab.models import ModelSpec, create_model
from robustlab.studies.config import parse_override, read_yaml
from robustlab.training import TrainConfig

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)


def _zero_npz(path: Path, images_bytes: int) -> None:
    """An .npz whose 'images' inflate to ``images_bytes`` of zeros, streamed (little memory)."""
    side = 64
    count = images_bytes // (side * side)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (count, side, side)}
    )
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            chunk = bytes(1 << 24)
            for start in range(0, count * side * side, len(chunk)):
                member.write(chunk[: min(len(chunk), count * side * side - start)])
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(count, dtype=np.int64))
        archive.writestr("labels.npy", buffer.getvalue())


def _peak_rss_of(args: list[str], cwd: Path, **env: str) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of ``python -m robustlab ARGS``: measured on that
    child alone (wait4), so other children of the test run do not count."""
    child = subprocess.Popen(
        [sys.executable, "-m", "robustlab", *args],
        cwd=cwd,
        env=cli_env(ROBUSTLAB_TCMALLOC="0", **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = child.stderr.read() if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, stderr, usage.ru_maxrss


def test_npz_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    bomb, small = tmp_path / "bomb.npz", tmp_path / "small.npz"
    _zero_npz(bomb, 512 << 20)
    _zero_npz(small, 4 << 20)
    assert bomb.stat().st_size < 8 << 20  # a few MB on disk
    budget = {"ROBUSTLAB_MAX_ARRAY_BYTES": str(64 << 20)}
    code, err, rss_bomb = _peak_rss_of(["data", "info", str(bomb)], tmp_path, **budget)
    assert_one_line_error(code, err, "ROBUSTLAB_MAX_ARRAY_BYTES", "bomb.npz")
    _, _, rss_small = _peak_rss_of(["data", "info", str(small)], tmp_path, **budget)
    # The refused case costs no more than reading a 4 MB set: nothing was inflated.
    assert rss_bomb <= 1.1 * rss_small, (rss_bomb, rss_small)


def test_an_outlier_label_is_refused_not_turned_into_classes() -> None:
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 1, 99_999])
    with pytest.raises(UserError, match="ROBUSTLAB_MAX_CLASSES"):
        make_raw(images, labels, None, "x.npz")
    assert make_raw(images, np.array([0, 1, 1, 3]), None, "x.npz").classes == ("0", "1", "2", "3")


@settings(max_examples=40, deadline=None)
@given(count=st.integers(min_value=1, max_value=10**15))
def test_eps_ranges_are_bounded(count: int) -> None:
    text = f"0:1:{count}"
    if count > budgets().eps_values:
        with pytest.raises(UserError, match="ROBUSTLAB_MAX_EPS_VALUES"):
            parse_eps_list(text)
    else:
        assert len(parse_eps_list(text)) == count


def test_eps_flood_on_the_command_line_is_one_line(untrained_run, tmp_path, capsys) -> None:
    code, _, err = call_cli(
        ["attack", untrained_run, "--attack", "fgsm", "--eps", "0:1:1000000000",
         "--out", tmp_path / "out"],
        capsys,
    )  # fmt: skip
    assert_one_line_error(code, err, "number of epsilons", "1,000,000,000")
    assert not (tmp_path / "out").exists()


def test_billion_laughs_in_a_study_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(UserError, match="ROBUSTLAB_MAX_YAML_NODES"):
        read_yaml(path)
    with pytest.raises(UserError, match="ROBUSTLAB_MAX_YAML_NODES"):
        parse_override("data.classes=" + "{" + BILLION_LAUGHS.replace("\n", ", ") + "}")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: &a [*a]\n", "refers to itself"),
        ("a: " + "[" * 200 + "]" * 200 + "\n", "levels deep"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "levels deep"),
    ],
)
def test_recursive_or_deep_yaml_is_refused(text: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=needle):
        read_yaml(path)


def test_duplicate_yaml_keys_are_warned(tmp_path: Path, caplog) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("study: leaf\ndata:\n  name: digits\n  name: mnist\n")
    with caplog.at_level(logging.WARNING):
        assert read_yaml(path)["data"]["name"] == "mnist"
    assert "repeats key 'name'" in caplog.text


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deep_json_is_refused(depth: int, tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("[" * depth + "]" * depth)
    with pytest.raises(UserError, match=r"metrics.json is nested more than 64 levels"):
        read_json(path)
    path.write_text('{"n": ' + "9" * 5000 + "}")
    with pytest.raises(UserError, match=r"metrics.json"):
        read_json(path)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (dict(arch="simple-cnn", num_classes=10**9), "ROBUSTLAB_MAX_CLASSES"),
        (dict(arch="simple-cnn", num_classes=2, in_chans=10**9), "ROBUSTLAB_MAX_IN_CHANS"),
        (dict(arch="simple-cnn", num_classes=2, input_size=10**12), "ROBUSTLAB_MAX_IMAGE_SIDE"),
        (dict(arch="simple-cnn", num_classes=2, resize_to=10**10), "ROBUSTLAB_MAX_IMAGE_SIDE"),
    ],
)
def test_model_sizes_are_bounded_before_allocation(spec: dict, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        create_model(ModelSpec(**spec))


def test_model_activations_and_parameters_are_estimated_on_the_meta_device(monkeypatch) -> None:
    with pytest.raises(
        UserError, match=r"activation size of one image.*ROBUSTLAB_MAX_ACTIVATION_BYTES"
    ):
        create_model(ModelSpec("simple-cnn", 2, input_size=4096))
    monkeypatch.setenv("ROBUSTLAB_MAX_MODEL_PARAMS", "1000")
    with pytest.raises(UserError, match=r"parameters.*ROBUSTLAB_MAX_MODEL_PARAMS"):
        create_model(ModelSpec("simple-cnn", 2, input_size=32))


def test_a_cnn_too_deep_for_the_images_is_found_before_training() -> None:
    with pytest.raises(UserError, match="cannot take 16x16 images"):
        create_model(ModelSpec("inception_v3", 2, input_size=16))


def test_absurd_epochs_steps_and_processes_are_refused() -> None:
    with pytest.raises(UserError, match=r"epochs is 1,000,000,000.*ROBUSTLAB_MAX_EPOCHS"):
        TrainConfig(epochs=10**9)
    with pytest.raises(UserError, match=r"pgd.steps.*ROBUSTLAB_MAX_STEPS"):
        get_attack("pgd", steps=10**12)
    with pytest.raises(UserError, match=r"--nproc.*ROBUSTLAB_MAX_NPROC"):
        launch(budgets().nproc + 1, ["models"])


def test_budgets_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("ROBUSTLAB_MAX_EPS_VALUES", "3")
    assert budgets().eps_values == 3
    with pytest.raises(UserError, match="ROBUSTLAB_MAX_EPS_VALUES"):
        parse_eps_list("0:1:4")
    monkeypatch.setenv("ROBUSTLAB_MAX_EPS_VALUES", "many")
    with pytest.raises(UserError, match="ROBUSTLAB_MAX_EPS_VALUES must be a whole number"):
        budgets()


@pytest.mark.parametrize("arch", ["mobilenetv3_small_100", "lcnet_050", "simple-cnn"])
def test_models_the_dry_forward_accepts_run_for_real(arch: str) -> None:
    # MobileNetV3 / LCNet put out head_hidden_size features, not num_features: the dry forward
    # found that mismatch, which once failed only at the first real batch.
    model = create_model(ModelSpec(arch, 3, input_size=32)).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
