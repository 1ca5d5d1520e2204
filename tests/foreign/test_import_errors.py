"""Bad foreign model files: one line, exit 2, nothing written, no pickle ever run."""

from __future__ import annotations

import pickle

import pytest
from conftest import keras_cnn

from robustlab.cli import main


class _Trap:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _refused(foreign, capsys, path, *extra) -> str:
    out = foreign.tmp / "run"
    rc = main(["import", str(path), "--out", str(out), "--data", str(foreign.data), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("robustlab: error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in foreign.tmp.iterdir() if p.name.startswith(".run.")]
    return err


def _truncated(path, tmp):
    cut = tmp / f"cut{path.suffix}"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return cut


@pytest.mark.parametrize("suffix", [".onnx", ".keras", ".h5", ".pt"])
def test_truncated_file(foreign, capsys, suffix):
    if suffix in (".keras", ".h5"):
        source = foreign.tmp / f"cnn{suffix}"
        keras_cnn().save(source)
    else:
        source = foreign.onnx if suffix == ".onnx" else foreign.torchscript
    err = _refused(foreign, capsys, _truncated(source, foreign.tmp), "--input-size", "16")
    assert "cut" in err


@pytest.mark.parametrize("suffix", [".onnx", ".keras", ".h5", ".pt"])
def test_hidden_pickle_is_never_run(foreign, capsys, suffix):
    marker = foreign.tmp / "pwned"
    path = foreign.tmp / f"evil{suffix}"
    path.write_bytes(pickle.dumps(_Trap(marker)))
    err = _refused(foreign, capsys, path, "--input-size", "16")
    assert "pickle" in err
    assert not marker.exists()


def test_torch_save_pickle_is_not_torchscript(foreign, capsys):
    import torch

    marker = foreign.tmp / "pwned"
    path = foreign.tmp / "weights.pt"
    torch.save({"trap": _Trap(marker)}, path)
    err = _refused(foreign, capsys, path, "--input-size", "16")
    assert "torch.save pickle" in err and not marker.exists()


def test_unsupported_onnx_operator_is_named(foreign, capsys):
    import onnx

    model = onnx.load(str(foreign.onnx))
    node = next(n for n in model.graph.node if n.op_type == "Relu")
    node.op_type, node.domain = "FancyActivation", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    path = foreign.tmp / "odd.onnx"
    onnx.save(model, str(path))
    err = _refused(foreign, capsys, path)
    assert "FancyActivation" in err


def test_keras_custom_object_is_named(foreign, capsys):
    import keras

    @keras.saving.register_keras_serializable(package="mine")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(Doubler()(inputs)))
    path = foreign.tmp / "custom.keras"
    keras.Model(inputs, outputs).save(path)
    err = _refused(foreign, capsys, path)
    assert "Doubler" in err


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_lambda_is_refused_in_safe_mode(foreign, capsys, suffix):
    import keras

    marker = foreign.tmp / "pwned"
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(lambda t: t * 2)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    path = foreign.tmp / f"lambda{suffix}"
    keras.Model(inputs, outputs).save(path)
    err = _refused(foreign, capsys, path)
    assert "Lambda" in err and not marker.exists()


def test_savedmodel_folder_points_to_tf2onnx(foreign, capsys):
    folder = foreign.tmp / "saved"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    err = _refused(foreign, capsys, folder)
    assert "tf2onnx" in err


def test_wrong_class_count_is_refused(foreign, capsys):
    err = _refused(foreign, capsys, foreign.onnx, "--class-names", "cat,fox")
    assert "3 outputs" in err
