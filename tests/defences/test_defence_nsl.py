"""NSL parity: defaults, the neighbour's construction, projection and clipping."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from robustlab.defences import NSLConfig, make_defence
from robustlab.errors import UserError


def _labeled_loss_gradient(model, x, y):
    """Gradient of the batch-mean cross-entropy w.r.t. the input, model in eval mode."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return grad


def test_defaults_are_those_of_nsl_make_adv_reg_config():
    # nsl.configs.make_adv_reg_config() (NSL 1.4) defaults, plus our warm-up switched off.
    assert dataclasses.asdict(NSLConfig()) == {
        "multiplier": 0.2,
        "adv_step_size": 0.001,
        "adv_grad_norm": "l2",
        "pgd_iterations": 1,
        "pgd_epsilon": None,
        "random_init": False,
        "clip_value_min": None,
        "clip_value_max": None,
        "warmup_epochs": 0,
    }


def test_l2_neighbour_is_one_step_along_the_per_example_normalised_labeled_gradient(
    tiny_net, batch
):
    x, y = batch
    model = tiny_net(channels=1).eval()
    grad = _labeled_loss_gradient(model, x, y)
    neighbour = make_defence(NSLConfig(adv_step_size=0.05)).craft(model, x, y)
    norms = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # over C*H*W of each example
    torch.testing.assert_close(neighbour, x + 0.05 * grad / norms)
    torch.testing.assert_close((neighbour - x).flatten(1).norm(dim=1), torch.full((len(x),), 0.05))


def test_l2_norm_runs_over_all_features_not_per_channel(tiny_net, batch):
    x, y = batch
    x = x.expand(-1, 3, -1, -1).contiguous()
    model = tiny_net(channels=3).eval()
    neighbour = make_defence(NSLConfig(adv_step_size=0.05)).craft(model, x, y)
    per_example = (neighbour - x).flatten(1).norm(dim=1)
    per_channel = (neighbour - x).flatten(2).norm(dim=2)
    torch.testing.assert_close(per_example, torch.full((len(x),), 0.05))
    assert (per_channel < 0.05 - 1e-4).all()


def test_infinity_norm_is_a_signed_gradient_step_and_unclipped_by_default(tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    grad = _labeled_loss_gradient(model, x, y)
    config = NSLConfig(adv_step_size=0.2, adv_grad_norm="infinity")
    assert config.adv_grad_norm == "linf"
    neighbour = make_defence(config).craft(model, x, y)
    torch.testing.assert_close(neighbour, x + 0.2 * grad.sign())
    assert neighbour.min() < 0 or neighbour.max() > 1  # NSL does not clip unless asked


def test_clip_values_bound_the_neighbour(tiny_net, batch):
    x, y = batch
    config = NSLConfig(
        adv_step_size=0.2, adv_grad_norm="linf", clip_value_min=0.0, clip_value_max=1.0
    )
    neighbour = make_defence(config).craft(tiny_net().eval(), x, y)
    assert neighbour.min() >= 0 and neighbour.max() <= 1


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_iterations_stay_in_the_pgd_epsilon_ball_and_raise_the_loss(norm, tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    eps = 0.5 if norm == "l2" else 0.05
    one = make_defence(NSLConfig(adv_step_size=eps / 2, adv_grad_norm=norm, pgd_epsilon=eps))
    many = make_defence(dataclasses.replace(one.config, pgd_iterations=6))
    x_one, x_many = one.craft(model, x, y), many.craft(model, x, y)
    delta = (x_many - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    with torch.no_grad():
        assert F.cross_entropy(model(x_many), y) > F.cross_entropy(model(x_one), y)


def test_random_init_starts_inside_the_ball(tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    objective = make_defence(NSLConfig(adv_step_size=0.01, pgd_epsilon=0.3, random_init=True))
    torch.manual_seed(0)
    first = objective.craft(model, x, y)
    torch.manual_seed(1)
    second = objective.craft(model, x, y)
    assert not torch.equal(first, second)
    assert ((first - x).flatten(1).norm(dim=1) <= 0.3 + 1e-6).all()


def test_l1_steps_are_refused_in_one_line():
    """NSL's 'l1' step has no attack in robustlab.attacks (the one crafting engine)."""
    with pytest.raises(UserError, match="unknown adv_grad_norm 'l1'"):
        NSLConfig(adv_grad_norm="l1")
