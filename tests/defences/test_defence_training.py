"""Defences inside the real training loop: strategies, robustness gained, run directories."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.attacks import get_attack
from robustlab.cli import main
from robustlab.data import DataSpec, load_splits
from robustlab.defences import NSLConfig, PGDTrainingConfig, build_defence, make_defence
from robustlab.models import load_checkpoint
from robustlab.training import TrainConfig, fit

EPS = 0.1  # digits pixels come in steps of 1/16


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataSpec(name="digits"))


def _pair(imageset, limit=None):
    return imageset.images[:limit], imageset.labels[:limit]


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["frozen", "finetune", "scratch"])
def test_every_strategy_trains_with_a_defence(strategy, digits, tiny_net):
    model = tiny_net()
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.head.weight.detach().clone()
    config = TrainConfig(strategy=strategy, epochs=2, head_epochs=1, lr=1e-2, optimizer="adam")
    objective = make_defence(PGDTrainingConfig(eps=EPS, steps=2, warmup_epochs=1))
    train, val = _pair(digits.train, 128), _pair(digits.val, 64)
    history = fit(model, train, val, config, objective, progress=False)
    assert [record["phase"] for record in history] == ["full", "full"]  # pixels, no feature cache
    assert not torch.equal(head, model.head.weight)
    unchanged = [torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items()]
    if strategy == "frozen":  # weights and BN running statistics alike stay bit-identical
        assert all(unchanged)
    else:
        assert not all(unchanged)


@pytest.mark.slow
def test_adversarial_training_makes_a_tiny_model_more_robust(digits, tiny_net):
    """Base vs PGD-AT vs NSL adversarial regularisation on 8x8 digits, attacked white-box."""
    config = TrainConfig(strategy="scratch", optimizer="adam", lr=1e-2, epochs=5, batch_size=64)
    defences = {
        "base": None,
        "pgd": make_defence(PGDTrainingConfig(eps=EPS, steps=4)),
        "nsl": make_defence(NSLConfig(multiplier=0.2, adv_step_size=EPS, adv_grad_norm="linf")),
    }
    x, y = digits.test.images, digits.test.labels
    pgd, fgsm = get_attack("pgd", eps=EPS, steps=10), get_attack("fgsm", eps=EPS)
    clean, robust, fgsm_robust = {}, {}, {}
    for name, objective in defences.items():
        model = tiny_net(width=16)
        fit(model, _pair(digits.train), _pair(digits.val), config, objective, progress=False)
        clean[name] = _accuracy(model, x, y)
        robust[name] = _accuracy(model, pgd(model, x, y), y)
        fgsm_robust[name] = _accuracy(model, fgsm(model, x, y), y)
    assert min(clean.values()) > 0.8  # every model learned the task
    assert robust["pgd"] > robust["base"] + 0.2
    assert robust["nsl"] > robust["base"]
    assert fgsm_robust["nsl"] > fgsm_robust["base"]  # the NSL tutorial's comparison


@pytest.mark.slow
def test_cli_trains_a_defended_run_that_loads_like_any_other(tmp_path, capsys):
    out = tmp_path / "run"
    options = ["adv_step_size=8/255", "adv-grad-norm=linf", "warmup_epochs=1"]
    command = "train --data digits --image-size 16 --limit 200 --model small-cnn --strategy scratch"
    argv = [
        *command.split(),
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--defence",
        "nsl",
    ]
    for option in options:
        argv += ["--defence-opt", option]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    _, expected = build_defence("nsl", options)
    assert config["defence"] == expected
    model, _ = load_checkpoint(out)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)
