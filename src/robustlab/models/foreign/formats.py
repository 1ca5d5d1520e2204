"""Reading foreign model files into torch modules: ONNX, TorchScript, Keras 3.

Each reader checks the file before its framework parses it, turns the framework's failures into
one-line ``UserError``s that name the problem (an unsupported operator, a custom Keras object),
never runs a pickle (TorchScript has its own loader, Keras runs with ``safe_mode=True``), and
returns a ``LoadedNet``: the module plus what the file itself says about its input.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.errors import UserError

FORMATS = {".onnx": "onnx", ".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".pt": "torchscript",
           ".pth": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
# the suffix of the copy kept in the run directory, per format
RUN_SUFFIX = {"onnx": ".onnx", "keras": ".keras", "h5": ".h5", "torchscript": ".pt"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_FALLBACK_OPSET = 17  # the newest opset onnx2torch 1.5 converts completely
_PICKLE_PROTOCOLS = tuple(bytes([0x80, n]) for n in range(2, 6))


@dataclass
class LoadedNet:
    """A foreign network as a torch module, and the input facts its file records."""

    net: nn.Module
    layout: str | None = None        # 'nchw' | 'nhwc' | None (the file does not say)
    size: int | None = None          # fixed square input side, if the file fixes it
    channels: int | None = None
    num_classes: int | None = None
    ends_in_softmax: bool = False    # the graph's last operation is a softmax


def detect_format(path: Path) -> str:
    """'onnx' | 'keras' | 'h5' | 'torchscript' from the path, refusing what cannot be read."""
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            raise UserError(
                f"{path} is a TensorFlow SavedModel folder, which robustlab does not read; convert "
                f"it to ONNX first: python -m tf2onnx.convert --saved-model {path} --output model.onnx"
            )
        raise UserError(f"{path} is a folder, not a model file (.onnx, .keras, .h5, .pt)")
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"{path}: unknown model format '{path.suffix}'; robustlab imports "
            f"{', '.join(sorted(FORMATS))}"
        )
    return kind


def read_net(path: Path, kind: str, *, strip_softmax: bool = False) -> LoadedNet:
    """The network in ``path`` (of format ``kind``) as a torch module in eval mode, on CPU."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if head[:2] in _PICKLE_PROTOCOLS:
        raise UserError(
            f"{path} is a Python pickle, not a {kind} model; refused without loading it "
            "(a pickle can run any code)"
        )
    reader = {"onnx": _read_onnx, "keras": _read_keras, "h5": _read_keras,
              "torchscript": _read_torchscript}[kind]
    loaded = reader(path, head, strip_softmax)
    loaded.net.eval()
    return loaded


# ----------------------------------------------------------------------------- ONNX


def _read_onnx(path: Path, head: bytes, strip_softmax: bool) -> LoadedNet:
    onnx = _require("onnx", "ONNX")
    _require("onnx2torch", "ONNX")
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, RuntimeError) as error:
        raise UserError(f"{path} is not a valid ONNX model (corrupt or truncated?): "
                        f"{_first_line(error)}") from None
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise UserError(f"{path} keeps its weights in external data files; save the ONNX model "
                        "with all tensors inside (onnx.save(..., save_as_external_data=False))")
    _check_onnx_operators(path, model)
    last = next((node for node in graph.node if graph.output[0].name in node.output), None)
    ends_in_softmax = last is not None and last.op_type == "Softmax"
    if strip_softmax and ends_in_softmax:
        graph.output[0].name = last.input[0]
        graph.node.remove(last)
    _explicit_same_padding(model)
    _constants_as_initializers(model)
    loaded = LoadedNet(_convert_onnx(path, model), ends_in_softmax=ends_in_softmax)
    _onnx_input_facts(model, loaded)
    return loaded


def _check_onnx_operators(path: Path, model: Any) -> None:
    """Name every operator onnx2torch cannot convert, before trying."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    known = {(d.domain or "", d.operation_type) for d in _CONVERTER_REGISTRY}
    missing = sorted({node.op_type for node in model.graph.node
                      if (node.domain or "", node.op_type) not in known
                      and (node.domain not in ("", "ai.onnx") or ("", node.op_type) not in known)})
    if missing:
        raise UserError(f"{path}: ONNX operator(s) {', '.join(missing)} cannot be converted to "
                        "torch (onnx2torch has no converter); re-export the model without them")


def _explicit_same_padding(model: Any) -> None:
    """Rewrite auto_pad SAME_UPPER/SAME_LOWER (Keras and torch 'same' padding; onnx2torch lacks
    it) as explicit pads, from the kernel and, for strides > 1, the inferred input size."""
    import onnx

    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "MaxPool", "AveragePool")
             and any(a.name == "auto_pad" and a.s in (b"SAME_UPPER", b"SAME_LOWER")
                     for a in n.attribute)]
    if not nodes:
        return
    shapes = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for info in [*inferred.graph.value_info, *inferred.graph.input]:
            shapes[info.name] = [d.dim_value or None for d in info.type.tensor_type.shape.dim]
    except Exception:  # shapes are a help for strided layers only
        pass
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else None
        if kernel is None:
            continue
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * len(kernel)
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(kernel)
        sizes = (shapes.get(node.input[0]) or [None] * (len(kernel) + 2))[2:]
        begin, end = [], []
        for k, s, d, n in zip(kernel, strides, dilations, sizes, strict=False):
            if s != 1 and n is None:
                return  # unknown input size: leave it, onnx2torch will name the problem
            total = d * (k - 1) if s == 1 else max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            small, large = total // 2, total - total // 2
            upper = attrs["auto_pad"].s == b"SAME_UPPER"
            begin.append(small if upper else large)
            end.append(large if upper else small)
        node.attribute.remove(attrs["auto_pad"])
        node.attribute.extend([onnx.helper.make_attribute("pads", begin + end)])


def _constants_as_initializers(model: Any) -> None:
    """Constant nodes -> initializers: onnx2torch takes a Clip's min/max (ReLU6) and similar
    operands as fixed only when they are initializers, not Constant outputs. Trailing empty
    (omitted) optional inputs are dropped too, which onnx2torch would look up by name."""
    import onnx

    for node in model.graph.node:
        while len(node.input) and node.input[-1] == "":
            node.input.pop()
    for node in list(model.graph.node):
        values = {a.name: a for a in node.attribute}
        if node.op_type != "Constant" or "value" not in values:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(values["value"].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)


def _convert_onnx(path: Path, model: Any) -> nn.Module:
    """onnx2torch's module for ``model``; an opset newer than onnx2torch knows is first
    rewritten to opset 17 by onnx's own version converter (same graph, older operator versions)."""
    import onnx.version_converter
    from onnx2torch import convert

    try:
        return convert(model)
    except NotImplementedError as error:
        first_error: Exception = error
    except Exception as error:  # onnx2torch raises bare exceptions for malformed graphs
        raise UserError(f"{path}: cannot convert the ONNX graph: {_first_line(error)}") from None
    try:
        return convert(onnx.version_converter.convert_version(model, _FALLBACK_OPSET))
    except Exception:  # the downgrade or its conversion failed: report the original operator
        found = re.search(r"operation_type='([^']+)', version=(\d+)", str(first_error))
        if not found:
            raise UserError(f"{path}: cannot convert the ONNX graph to torch: "
                            f"{_first_line(first_error)}") from None
        hint = (f"; onnx2torch converts opsets <= {_FALLBACK_OPSET}: re-export with "
                f"opset_version={_FALLBACK_OPSET}" if int(found[2]) > _FALLBACK_OPSET else "")
        raise UserError(f"{path}: ONNX operator {found[1]} (opset {found[2]}) cannot be "
                        f"converted to torch{hint}") from None


def _onnx_input_facts(model: Any, loaded: LoadedNet) -> None:
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise UserError(f"ONNX model has {len(inputs)} inputs; robustlab imports image "
                        "classifiers with one image input")
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    _layout_from_dims(dims, loaded)
    outputs = model.graph.output[0].type.tensor_type.shape.dim
    if len(outputs) == 2 and outputs[1].dim_value:
        loaded.num_classes = outputs[1].dim_value


def _layout_from_dims(dims: list[int | None], loaded: LoadedNet) -> None:
    """Layout, channels and size from a 4-d input shape (batch first; None = free)."""
    if len(dims) != 4:
        raise UserError(f"the model's input has {len(dims)} dimensions; an image classifier "
                        "takes 4 (batch, channels, height, width)")
    _, a, b, c = dims
    if a in (1, 3) and c not in (1, 3):
        loaded.layout, loaded.channels, side = "nchw", a, (b, c)
    elif c in (1, 3):
        loaded.layout, loaded.channels, side = "nhwc", c, (a, b)
    else:
        return
    if side[0] is not None and side[0] == side[1]:
        loaded.size = side[0]


# ----------------------------------------------------------------------------- TorchScript


def _read_torchscript(path: Path, head: bytes, strip_softmax: bool) -> LoadedNet:
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a TorchScript archive (corrupt or truncated?)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if not any("/code/" in name for name in names):
        raise UserError(
            f"{path} is a torch.save pickle, not TorchScript; refused (a pickle can run any "
            "code): save the model with torch.jit.save(torch.jit.script(model)) or export to ONNX"
        )
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise UserError(f"{path}: cannot load TorchScript: {_first_line(error)}") from None
    graph = getattr(getattr(net, "forward", None), "graph", None)
    returned = next(iter(graph.return_node().inputs())).node().kind() if graph is not None else ""
    ends_in_softmax = returned in ("aten::softmax", "aten::_softmax")
    if strip_softmax and ends_in_softmax:
        raise UserError(f"{path}: --strip-softmax cannot edit a TorchScript graph; save the "
                        "model without its final softmax, or export it to ONNX")
    return LoadedNet(net, ends_in_softmax=ends_in_softmax)


# ----------------------------------------------------------------------------- Keras 3


def import_keras() -> Any:
    """Keras 3 on its torch backend (the backend is fixed when keras is first imported)."""
    os.environ["KERAS_BACKEND"] = "torch"
    # like every robustlab model, load on the CPU; KerasNet follows the input's device later
    os.environ.setdefault("KERAS_TORCH_DEVICE", "cpu")
    keras = _require("keras", "Keras")
    if keras.backend.backend() != "torch":
        raise UserError(f"keras was imported with the {keras.backend.backend()} backend before "
                        "robustlab; set KERAS_BACKEND=torch")
    return keras


def _read_keras(path: Path, head: bytes, strip_softmax: bool) -> LoadedNet:
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a Keras 3 archive (corrupt or truncated?)")
    if path.suffix.lower() != ".keras" and head != _HDF5_MAGIC:
        raise UserError(f"{path} is not an HDF5 file (corrupt or truncated?)")
    keras = import_keras()
    custom = _keras_custom_objects(path)
    if custom:
        raise UserError(f"{path} needs custom Keras object(s) {', '.join(custom)}, which "
                        "robustlab cannot rebuild; replace them with built-in layers or export to ONNX")
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as error:  # Keras raises TypeError/ValueError/OSError/KeyError alike
        message = str(error)
        named = re.findall(r"(?:Unknown \w+|Could not locate \w+):? '?([\w.]+)'?", message)
        if named:
            raise UserError(f"{path} needs custom Keras object(s) {', '.join(sorted(set(named)))}"
                            ) from None
        raise UserError(f"{path}: Keras cannot load it: {_first_line(error)}") from None
    ends_in_softmax = _keras_ends_in_softmax(model, keras)
    if strip_softmax and ends_in_softmax:
        model = _keras_without_softmax(model, keras)
    loaded = LoadedNet(KerasNet(model), ends_in_softmax=ends_in_softmax)
    shape = model.input_shape
    if isinstance(shape, list):
        raise UserError(f"{path} has {len(shape)} inputs; robustlab imports one image input")
    _layout_from_dims(list(shape), loaded)
    output = model.output_shape
    if isinstance(output, tuple) and len(output) == 2 and output[1]:
        loaded.num_classes = int(output[1])
    return loaded


def _keras_custom_objects(path: Path) -> list[str]:
    """Class names in the saved config that Keras does not define itself."""
    config = _keras_config(path)
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            module = node.get("module")
            if "class_name" in node and isinstance(module, str) and module and not (
                module.startswith("keras") or module == "builtins"
            ):
                found.add(str(node.get("registered_name") or node["class_name"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(found)


def _keras_config(path: Path) -> Any:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as handle:
            text = handle.attrs.get("model_config")
        text = text.decode() if isinstance(text, bytes) else text
        return json.loads(text) if text else None
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"{path}: no readable Keras model config (corrupt or truncated?): "
                        f"{_first_line(error)}") from None


def _keras_ends_in_softmax(model: Any, keras: Any) -> bool:
    last = model.layers[-1]
    if type(last).__name__ == "Softmax":
        return True
    return getattr(last, "activation", None) is keras.activations.softmax


def _keras_without_softmax(model: Any, keras: Any) -> Any:
    last = model.layers[-1]
    if type(last).__name__ in ("Softmax", "Activation"):
        return keras.Model(model.inputs, last.input)
    last.activation = keras.activations.linear  # the same layer, now returning logits
    return model


class KerasNet(nn.Module):
    """A Keras 3 (torch backend) model called in inference mode; a Keras model is already an
    ``nn.Module`` there, so gradients flow to the input."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        import keras

        # Keras creates its own tensors on its current device: make that the input's
        where = "cpu" if x.device.type == "cpu" else f"gpu:{x.device.index or 0}"
        with keras.device(where):
            return self.model(x, training=False)


# ----------------------------------------------------------------------------- helpers


def _require(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"importing {what} models needs the 'import' extra: "
                        "pip install 'robustlab[import]'") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
