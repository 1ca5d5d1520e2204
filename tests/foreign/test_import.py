"""``robustlab import``: foreign models become runs whose logits, gradients and robust accuracy
match the original framework's."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import CLASSES, SIZE, Rescaled, export_onnx, keras_cnn

from robustlab.cli import main
from robustlab.models import load_checkpoint


def _import(path, out, data, *extra):
    return main(["import", str(path), "--out", str(out), "--data", str(data), *extra])


def _input_gradient(forward, x):
    x = x.clone().requires_grad_(True)
    scores = forward(x)
    scores.gather(1, scores.argmax(1, keepdim=True)).sum().backward()
    return x.grad


def _assert_same(imported, original, x):
    """Logits within 1e-4, input gradients within 1e-3 relative, on 64 images."""
    with torch.no_grad():
        assert torch.allclose(imported(x), original(x), atol=1e-4, rtol=0)
    mine, theirs = _input_gradient(imported, x), _input_gradient(original, x)
    assert theirs.abs().max() > 0
    assert float((mine - theirs).norm() / theirs.norm()) < 1e-3


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_torch_exports_match_the_original(foreign, kind):
    path = foreign.onnx if kind == "onnx" else foreign.torchscript
    extra = ["--input-size", str(SIZE)] if kind == "torchscript" else []
    assert _import(path, foreign.tmp / "run", foreign.data, *extra) == 0
    model, config = load_checkpoint(foreign.tmp / "run")
    assert config["foreign"]["contract"]["size"] == SIZE
    assert config["classes"] == CLASSES
    x = torch.rand(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    _assert_same(model, foreign.model, x)


@pytest.mark.parametrize(
    ("scale", "bgr", "nhwc"), [("0-255", True, False), ("-1-1", False, True)]
)
def test_input_contract_is_applied_inside_the_model(foreign, scale, bgr, nhwc):
    shape = (SIZE, SIZE, 3) if nhwc else (3, SIZE, SIZE)
    path = export_onnx(Rescaled(foreign.model, scale, bgr, nhwc), foreign.tmp / "r.onnx", shape)
    extra = [f"--pixel-scale={scale}", "--channel-order", "bgr" if bgr else "rgb"]
    assert _import(path, foreign.tmp / "run", foreign.data, *extra) == 0
    model, config = load_checkpoint(foreign.tmp / "run")
    assert config["foreign"]["contract"]["layout"] == ("nhwc" if nhwc else "nchw")
    x = torch.rand(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    _assert_same(model, foreign.model, x)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_model_matches_keras(foreign, suffix):
    net = keras_cnn()
    path = foreign.tmp / f"cnn{suffix}"
    net.save(path)
    assert _import(path, foreign.tmp / "run", foreign.data) == 0
    model, config = load_checkpoint(foreign.tmp / "run")
    assert config["foreign"]["contract"]["layout"] == "nhwc"
    x = torch.rand(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    _assert_same(model, lambda images: net(images.permute(0, 2, 3, 1), training=False), x)


def test_declared_contract_contradicting_the_file_is_refused(foreign, capsys):
    rc = _import(foreign.onnx, foreign.tmp / "run", foreign.data, "--input-size", "32")
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustlab: error:") and "size 32" in err and "\n" not in err
    assert not (foreign.tmp / "run").exists()


def test_changed_model_file_is_refused(foreign):
    assert _import(foreign.onnx, foreign.tmp / "run", foreign.data) == 0
    copy = foreign.tmp / "run" / "model.onnx"
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed since it was imported"):
        load_checkpoint(foreign.tmp / "run")


def test_run_is_self_contained(foreign):
    assert _import(foreign.onnx, foreign.tmp / "run", foreign.data) == 0
    foreign.onnx.unlink()
    model, config = load_checkpoint(foreign.tmp / "run")
    assert len(config["foreign"]["sha256"]) == 64
    assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, len(CLASSES))


def test_softmax_is_detected_and_stripped(foreign):
    net = keras_cnn(softmax=True)
    path = foreign.tmp / "soft.keras"
    net.save(path)
    assert _import(path, foreign.tmp / "kept", foreign.data) == 0
    kept, config = load_checkpoint(foreign.tmp / "kept")
    assert config["foreign"]["outputs"] == "probabilities"
    assert _import(path, foreign.tmp / "stripped", foreign.data, "--strip-softmax") == 0
    stripped, config = load_checkpoint(foreign.tmp / "stripped")
    assert config["foreign"]["outputs"] == "logits"
    x = torch.rand(8, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(stripped(x).softmax(1), kept(x), atol=1e-5)


def test_onnx_softmax_is_stripped(foreign):
    soft = torch.nn.Sequential(foreign.model, torch.nn.Softmax(dim=1))
    path = export_onnx(soft, foreign.tmp / "soft.onnx", (3, SIZE, SIZE))
    assert _import(path, foreign.tmp / "run", foreign.data, "--strip-softmax") == 0
    model, _ = load_checkpoint(foreign.tmp / "run")
    x = torch.rand(8, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(model(x), foreign.model(x), atol=1e-4)


def test_pgd_on_imported_models_matches_the_original(foreign, tmp_path):
    """The same attack CLI on ONNX, TorchScript and the native robustlab run."""
    from robustlab.data import DataSpec, load_splits
    from robustlab.models import save_checkpoint

    spec = DataSpec(name=str(foreign.data), split=(0.2, 0.2, 0.6))
    splits = load_splits(spec)
    save_checkpoint(tmp_path / "native", foreign.model,
                    {"classes": CLASSES, "data": dataclasses.asdict(spec)})
    split = ["--split", "0.2,0.2,0.6"]
    assert _import(foreign.onnx, tmp_path / "onnx", foreign.data, *split) == 0
    assert _import(foreign.torchscript, tmp_path / "ts", foreign.data, "--input-size", "16", *split) == 0
    accuracy = {}
    for name in ("native", "onnx", "ts"):
        out = tmp_path / f"pgd-{name}"
        rc = main(["attack", str(tmp_path / name), "--attack", "pgd", "--eps", "0,4/255,16/255",
                   "--steps", "5", "--out", str(out), "--seed", "0"])
        assert rc == 0
        result = json.loads((out / "attack.json").read_text())
        accuracy[name] = result["robust_accuracy"]
    n = splits.test.images.shape[0]
    assert accuracy["native"][0] == 1.0 and accuracy["native"][-1] < 0.5  # the attack bites
    for name in ("onnx", "ts"):  # float rounding may flip at most one borderline image
        assert all(abs(a - b) <= 1 / n + 1e-9 for a, b in zip(accuracy[name], accuracy["native"], strict=True))
