"""The README's "Attack your own model" commands, run as written on models built here."""

from __future__ import annotations

import json
import re
import shlex

import torch
from conftest import REPO_README, export_onnx
from torch import nn

from robustlab.cli import main


def _section() -> str:
    text = REPO_README.read_text(encoding="utf-8")
    return text.split("## Attack your own model", 1)[1].split("\n## ", 1)[0]


def _commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", _section(), re.S)[1].replace("\\\n", " ")
    lines = [line.strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("robustlab ")]


def _study_file() -> tuple[str, str]:
    """(file name, text) of the section's study YAML, named by its first comment line."""
    text = re.search(r"```yaml\n(.*?)```", _section(), re.S)[1]
    return text.split(":", 1)[0].lstrip("# "), text


def _keras_digits_cnn(path):
    import keras

    keras.utils.set_random_seed(6)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(path)


def _onnx_digits_cnn(path):
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 10))
    export_onnx(net.eval(), path, (3, 32, 32))


def test_readme_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _keras_digits_cnn(tmp_path / "digits_cnn.keras")
    _onnx_digits_cnn(tmp_path / "digits_cnn.onnx")
    (tmp_path / "digits_labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
    name, study = _study_file()
    (tmp_path / name).write_text(study)
    commands = _commands()
    assert [c[0] for c in commands] == ["import", "evaluate", "import", "attack", "run"]
    for command in commands:
        assert main(command) == 0, command
    assert (tmp_path / "runs/keras-digits/robustness/pgd/curves.json").is_file()
    assert list((tmp_path / "runs/keras-digits/robustness/pgd/tensorboard").iterdir())
    assert (tmp_path / "runs/onnx-digits/pgd/attack.json").is_file()
    results = json.loads((tmp_path / "runs/my-study/results.json").read_text())["steps"]
    assert results["train-onnx-digits"]["run"] == str((tmp_path / "runs/onnx-digits").resolve())
    assert {"attack-fgsm", "transfer-matrix"} <= set(results)
