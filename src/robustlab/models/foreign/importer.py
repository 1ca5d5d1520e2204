"""``import_model``: a foreign model file -> an ordinary run directory; ``load_foreign`` reads it back.

The run directory keeps a byte-for-byte copy of the model file (``model.onnx``, ``model.keras``,
``model.h5`` or ``model.pt``) instead of a reference to it: the run stays self-contained when the
original is moved, edited or deleted, can be copied to another machine, and its sha256 (recorded
at import) proves that what is attacked is what was imported. Loading refuses a copy whose hash
changed. config.json holds the input contract, so the model's first module applies it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.errors import UserError
from robustlab.io import write_json
from robustlab.models.checkpoint import FORMAT, FORMAT_VERSION
from robustlab.models.checkpoint import _version as robustlab_version
from robustlab.models.classifier import ImageClassifier, ModelSpec
from robustlab.models.foreign.contract import ForeignPreprocess, InputContract
from robustlab.models.foreign.formats import RUN_SUFFIX, LoadedNet, detect_format, read_net

logger = logging.getLogger(__name__)

CONFIG_KEY = "foreign"


@dataclass(frozen=True)
class DeclaredInput:
    """The user's declaration of the input contract; None = take it from the file or default."""

    size: int | None = None
    channels: int | None = None
    channel_order: str = "rgb"
    scale: str = "0-1"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None


class ForeignNet(nn.Module):
    """The converted network; takes what ``ForeignPreprocess`` makes, returns (B, K) scores."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_contract(declared: DeclaredInput, loaded: LoadedNet, path: Path) -> InputContract:
    """The user's contract, completed from the file and checked against it."""
    values: dict[str, Any] = {}
    for name, default in (("size", None), ("channels", 3), ("layout", "nchw")):
        mine, file_says = getattr(declared, name), getattr(loaded, name)
        if mine is not None and file_says is not None and mine != file_says:
            raise UserError(
                f"declared input {name} {mine} contradicts {path.name}, whose input {name} is "
                f"{file_says}"
            )
        values[name] = mine if mine is not None else file_says if file_says is not None else default
    if values["size"] is None:
        raise UserError(f"{path.name} does not fix its input size; declare it with --input-size")
    return InputContract(
        size=values["size"], channels=values["channels"], layout=values["layout"],
        channel_order=declared.channel_order, scale=declared.scale,
        mean=declared.mean, std=declared.std,
    )


def build_foreign_classifier(
    net: nn.Module, contract: InputContract, num_classes: int, input_size: int, kind: str
) -> ImageClassifier:
    """The foreign net behind its contract's first module, shaped like any robustlab model."""
    spec = ModelSpec(arch=f"foreign-{kind}", num_classes=num_classes,
                     in_chans=contract.channels, input_size=input_size)
    model = ImageClassifier(spec, ForeignPreprocess(contract), ForeignNet(net), nn.Identity(),
                            num_features=num_classes)
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # attacked, never trained: input gradients only
    return model.eval()


@torch.no_grad()
def probe_outputs(
    model: nn.Module, channels: int, size: int, path: Path, device: str | torch.device = "cpu"
) -> Tensor:
    """Scores of a few random images: proves the contract fits the net and counts its classes."""
    x = torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)  # drawn on the CPU: the same probe images on every device
    try:
        out = model(x)
    except UserError:
        raise
    except Exception as error:
        first = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
        raise UserError(
            f"{path.name} does not take the declared input ({channels}x{size}x{size}): {first}"
        ) from None
    if out.dim() != 2 or not torch.isfinite(out).all():
        raise UserError(f"{path.name} returns {tuple(out.shape)} scores with non-finite values "
                        "or not one row per image; is it an image classifier?")
    return out


def looks_like_probabilities(scores: Tensor) -> bool:
    sums = scores.sum(dim=1)
    return bool(((scores >= 0) & (scores <= 1)).all()) and bool(
        torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
    )


@dataclass
class ForeignModel:
    """A checked foreign model file, ready to become a run."""

    source: Path
    kind: str
    sha256: str
    loaded: LoadedNet
    contract: InputContract
    strip_softmax: bool


def read_foreign(source: Path, declared: DeclaredInput, *, strip_softmax: bool = False) -> ForeignModel:
    """Read and convert ``source`` and settle its input contract (nothing is written)."""
    kind = detect_format(source)
    digest = sha256_of(source)
    loaded = read_net(source, kind, strip_softmax=strip_softmax)
    if strip_softmax and not loaded.ends_in_softmax:
        raise UserError(f"--strip-softmax: {source.name} does not end in a softmax")
    contract = resolve_contract(declared, loaded, source)
    return ForeignModel(source, kind, digest, loaded, contract, strip_softmax)


def import_model(
    foreign: ForeignModel,
    out: Path,
    *,
    classes: list[str],
    data: dict[str, Any],
    data_info: dict[str, Any],
    input_size: int,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Write the run directory ``out`` for ``foreign`` in one rename; returns its config.

    ``classes``: the model's class names in output order; ``data``/``data_info``: the data set the
    run is evaluated on (a DataSpec dict and its info); ``input_size``: side of that data's images;
    ``device``: where the imported model is verified. Nothing is written when anything is wrong.
    """
    source, contract = foreign.source, foreign.contract
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty folder")
    model = build_foreign_classifier(foreign.loaded.net, contract, len(classes), input_size,
                                     foreign.kind)
    scores = probe_outputs(model.to(device), contract.channels, input_size, source, device)
    if scores.shape[1] != len(classes):
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise UserError(f"{source.name} has {scores.shape[1]} outputs but the run has "
                        f"{len(classes)} classes ({shown})")
    outputs = "probabilities" if looks_like_probabilities(scores) else "logits"
    if outputs == "probabilities":
        logger.warning("%s outputs probabilities: gradient attacks need logits; import it with "
                       "--strip-softmax", source.name)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "robustlab_version": robustlab_version(),
        "model": dataclasses.asdict(model.spec),
        CONFIG_KEY: {
            "format": foreign.kind, "file": "model" + RUN_SUFFIX[foreign.kind],
            "source": str(source.resolve()), "sha256": foreign.sha256,
            "contract": contract.to_dict(), "strip_softmax": foreign.strip_softmax,
            "ends_in_softmax": foreign.loaded.ends_in_softmax, "outputs": outputs,
        },
        "classes": classes,
        "data": data,
        "data_info": data_info,
    }
    _write_run(source, out, config)
    return config


def _write_run(source: Path, out: Path, config: dict[str, Any]) -> None:
    """Model copy + config.json into a hidden sibling folder, then one rename to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        copy = staging / config[CONFIG_KEY]["file"]
        shutil.copyfile(source, copy)
        if sha256_of(copy) != config[CONFIG_KEY]["sha256"]:
            raise UserError(f"{source} changed while it was being imported; import it again")
        write_json(staging / "config.json", config)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_foreign(run_dir: Path, config: dict[str, Any]) -> ImageClassifier:
    """The imported model of ``run_dir`` (eval mode, CPU), after checking its file's sha256."""
    foreign = config[CONFIG_KEY]
    path = Path(run_dir) / str(foreign.get("file", ""))
    if not path.is_file():
        raise UserError(f"{run_dir} is an imported run but its model file {path.name} is missing")
    if sha256_of(path) != foreign.get("sha256"):
        raise UserError(f"{path} changed since it was imported (sha256 differs); "
                        "import the model again into a new run")
    loaded = read_net(path, foreign["format"], strip_softmax=bool(foreign.get("strip_softmax")))
    contract = InputContract.from_dict(foreign["contract"])
    spec = ModelSpec.from_dict(config["model"])
    return build_foreign_classifier(loaded.net, contract, spec.num_classes, spec.input_size,
                                    foreign["format"])

