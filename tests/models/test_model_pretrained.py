"""Pretrained weights: offline ImageNet Lite0, local files, refused pickles, offline downloads."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from robustlab.errors import UserError
from robustlab.models import (
    ModelSpec,
    create_model,
    load_foreign_weights,
    load_imagenet_classifier,
    offline_state_dict,
    save_checkpoint,
)

IMAGENET_DIR = Path(os.environ["ROBUSTLAB_DATA_DIR"]) / "imagenet"
SAMOYED = 258


def _pixels(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def test_offline_imagenet_classifier_recognises_the_samoyed() -> None:
    if not (IMAGENET_DIR / "dog.jpg").exists():
        pytest.skip(f"imagenet/dog.jpg not found in {IMAGENET_DIR.parent}")
    classes = (IMAGENET_DIR / "imagenet_classes.txt").read_text().splitlines()
    model = load_imagenet_classifier(input_size=224, resize_to=224)
    photo = Image.open(IMAGENET_DIR / "dog.jpg")

    # at 224 px (PIL bicubic) no resize happens in the model; at full size it resizes itself
    for x in (_pixels(photo.resize((224, 224), Image.BICUBIC)), _pixels(photo)):
        with torch.no_grad():
            probs = model(x).softmax(dim=1)[0]
        assert int(probs.argmax()) == SAMOYED
        assert classes[SAMOYED] == "Samoyed"
        assert float(probs[SAMOYED]) > 0.5


def test_offline_weights_fill_the_backbone_and_the_head_is_fresh() -> None:
    weights = offline_state_dict()
    model = create_model(ModelSpec("tf_efficientnet_lite0", 3, pretrained="offline"))

    backbone = model.backbone.state_dict()
    assert len(backbone) == len(weights) - 2  # all but the ImageNet classifier
    for key, tensor in backbone.items():
        assert torch.equal(tensor, weights[key]), key
    assert model.head.fc.weight.shape == (3, model.num_features)
    assert not torch.equal(model.head.fc.weight, weights["classifier.weight"][:3])


def test_offline_weights_adapt_to_grey_input() -> None:
    weights = offline_state_dict()
    model = create_model(ModelSpec("tf_efficientnet_lite0", 2, in_chans=1, pretrained="offline"))
    stem = model.backbone.conv_stem.weight
    assert stem.shape[1] == 1
    # timm's adaptation sums the RGB filters, so a grey image gives the RGB model's response
    torch.testing.assert_close(stem, weights["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert model.preprocess.mean.flatten().tolist() == [0.5]


def test_imagenet_download_offline_is_one_clear_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    # Empty caches, and no retry back-off: the hub gives up at once, as it does offline.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    with pytest.raises(UserError) as caught:
        create_model(ModelSpec("resnet18", 2, pretrained="imagenet"))
    message = str(caught.value)
    assert "could not download ImageNet weights for 'resnet18'" in message
    assert "pretrained='offline'" in message
    assert "\n" not in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_fills_the_backbone_and_drops_its_head(
    tmp_path: Path, suffix: str
) -> None:
    full = timm.create_model("test_resnet", num_classes=1000)  # backbone + ImageNet-style fc
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # a common training-script wrapper

    model = create_model(ModelSpec("test_resnet", 5, input_size=32, pretrained=str(path)))

    for key, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    assert model.head.fc.weight.shape == (5, model.num_features)


def test_a_run_checkpoint_can_seed_a_new_backbone(tmp_path: Path) -> None:
    trained = create_model(ModelSpec("simple-cnn", 2, input_size=16))
    save_checkpoint(tmp_path / "run", trained, {})
    spec = ModelSpec(
        "simple-cnn", 7, input_size=24, pretrained=str(tmp_path / "run" / "model.safetensors")
    )

    model = create_model(spec)

    for key, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, trained.backbone.state_dict()[key])
    assert model.head.fc.out_features == 7


def test_weights_of_another_architecture_are_refused_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(path))
    with pytest.raises(UserError, match=r"do not match the backbone: \d+ missing .*\d+ unexpected"):
        create_model(ModelSpec("test_byobnet", 2, pretrained=str(path)))


def test_weights_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.safetensors"
    small28 = create_model(ModelSpec("small-cnn", 2, in_chans=1, input_size=28))
    save_file({f"backbone.{k}": v for k, v in small28.backbone.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="of the wrong shape"):
        create_model(ModelSpec("small-cnn", 2, in_chans=1, input_size=40, pretrained=str(path)))


class _Payload:
    """Unpickling this object would create a file: the stand-in for malicious code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"conv.weight": torch.zeros(1), "payload": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:  # a legacy plain pickle, newest protocol
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)

    with pytest.raises(UserError, match="refusing to load"):
        load_foreign_weights(path)
    with pytest.raises(UserError, match="refusing to load"):
        create_model(ModelSpec("simple-cnn", 2, input_size=16, pretrained=str(path)))
    assert not marker.exists()

    # the payload is real: an unsafe load would have run it
    with open(path, "rb") as handle:
        if writer == "torch.save":
            torch.load(handle, weights_only=False)
        else:
            pickle.load(handle)
    assert marker.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.pth", b"not a pickle at all", "or corrupt"),
        ("cut.pt", b"PK\x03\x04 a zip archive cut short", "truncated or corrupt"),
        ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{", "truncated or corrupt"),
        ("weights.h5", b"HDF", "unsupported weights file"),
    ],
)
def test_bad_weight_files_are_user_errors(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_foreign_weights(path)


def test_non_state_dict_pickle_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="not a state dict"):
        load_foreign_weights(path)
