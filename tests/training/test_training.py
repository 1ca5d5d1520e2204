"""Training strategies, early stopping and exact resume, on tiny models and real digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.data import DataSpec, load_splits
from robustlab.errors import UserError
from robustlab.models import ModelSpec, create_model
from robustlab.training import TrainConfig, fit, plan_phases
from robustlab.training.modes import eval_mode, set_train_mode


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataSpec(name="digits", image_size=16))


def _few(imageset, n: int = 160):
    return imageset.images[:n], imageset.labels[:n]


def _pair(imageset):
    return imageset.images, imageset.labels


def _lite0(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return create_model(ModelSpec(arch="tf_efficientnet_lite0", num_classes=num_classes, in_chans=1, input_size=16, resize_to=32))


def test_frozen_keeps_backbone_and_bn_statistics_bit_identical(digits):
    model = _lite0()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = [p.detach().clone() for p in model.head.parameters()]
    fit(model, _few(digits.train), _few(digits.val), TrainConfig(strategy="frozen", epochs=2, lr=1e-2), progress=False)
    after = model.backbone.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # weights and BN running stats alike
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))


def test_frozen_with_objective_runs_on_pixels_and_still_freezes(digits):
    model = _lite0()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    calls = []

    def objective(model, x, y, epoch):
        calls.append(epoch)
        return nn.functional.cross_entropy(model(x), y)

    small = _few(digits.train, 64)
    fit(model, small, small, TrainConfig(strategy="frozen", epochs=1, lr=1e-2), objective, progress=False)
    assert calls and set(calls) == {1}
    for key, value in before.items():
        assert torch.equal(value, model.backbone.state_dict()[key]), key


def test_finetune_last_block_changes_only_that_block_and_head(digits):
    model = _lite0()
    blocks = model.blocks()
    first = {k: v.clone() for k, v in blocks[0].state_dict().items()}
    last = {k: v.clone() for k, v in blocks[-1].state_dict().items()}
    small = _few(digits.train, 96)
    config = TrainConfig(strategy="finetune", epochs=2, head_epochs=1, unfreeze="1", lr=1e-2, optimizer="adam")
    history = fit(model, small, small, config, progress=False)
    assert [h["phase"] for h in history] == ["head", "full"]
    for key, value in first.items():
        assert torch.equal(value, blocks[0].state_dict()[key]), key
    assert any(not torch.equal(v, blocks[-1].state_dict()[k]) for k, v in last.items())


def test_scratch_small_cnn_learns_real_digits(digits):
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch="small-cnn", num_classes=10, in_chans=1, input_size=16))
    history = fit(model, _pair(digits.train), _pair(digits.val), TrainConfig(strategy="scratch", optimizer="adam", lr=3e-3, epochs=4), progress=False)
    assert history[-1]["val_accuracy"] > 0.8
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_resume_after_interruption_gives_identical_weights(digits, tmp_path):
    config = TrainConfig(strategy="scratch", optimizer="adam", lr=3e-3, epochs=3, batch_size=64)
    train, val = (digits.train.images[:256], digits.train.labels[:256]), _pair(digits.val)

    def make():
        torch.manual_seed(1)
        return create_model(ModelSpec(arch="small-cnn", num_classes=10, in_chans=1, input_size=16))

    reference = make()
    fit(reference, train, val, config, nn_ce, progress=False)

    class Crash(Exception):
        pass

    def crashing(model, x, y, epoch):
        if epoch == 3:
            raise Crash
        return nn_ce(model, x, y, epoch)

    interrupted = make()
    with pytest.raises(Crash):
        fit(interrupted, train, val, config, crashing, state_dir=tmp_path, progress=False)
    resumed = make()  # a fresh process would rebuild the model from scratch
    history = fit(resumed, train, val, config, nn_ce, state_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def nn_ce(model, x, y, epoch):
    return nn.functional.cross_entropy(model(x), y)


def test_early_stopping_restores_best_weights(digits):
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch="small-cnn", num_classes=10, in_chans=1, input_size=16))
    config = TrainConfig(strategy="scratch", optimizer="sgd", lr=0.05, epochs=5, patience=1)
    history = fit(model, _few(digits.train, 400), _pair(digits.val), config, progress=False)
    best = max(h["val_accuracy"] for h in history)
    with eval_mode(model), torch.no_grad():
        acc = (model(digits.val.images).argmax(1) == digits.val.labels).float().mean().item()
    assert acc == pytest.approx(best)


def test_set_train_mode_keeps_frozen_batchnorm_in_eval():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    for p in model[1].parameters():
        p.requires_grad_(False)
    set_train_mode(model)
    assert not model[1].training and model[3].training


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"strategy": "frozn"}, "frozen"),
        ({"optimizer": "adamw"}, "adam"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"strategy": "finetune", "epochs": 2, "head_epochs": 2}, "head_epochs"),
        ({"unfreeze": "some"}, "unfreeze"),
    ],
)
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(UserError, match=field):
        TrainConfig(**settings)


def test_unknown_setting_key_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epochz": 3})


def test_phase_plans():
    assert [p.name for p in plan_phases(TrainConfig(strategy="finetune", epochs=5, head_epochs=2), True)] == ["head", "full"]
    assert [p.name for p in plan_phases(TrainConfig(strategy="frozen"), False)] == ["full"]
    full = plan_phases(TrainConfig(strategy="finetune", epochs=5, head_epochs=2, lr=1e-3), True)[1]
    assert (full.first_epoch, full.last_epoch, full.lr) == (3, 5, pytest.approx(1e-4))
