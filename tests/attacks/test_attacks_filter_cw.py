"""The face study's filter optimisation and Carlini-Wagner L2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES

from robustlab.attacks import CarliniWagnerL2, FilterAttack, flat_norm
from robustlab.errors import UserError


@pytest.fixture
def target(batch):
    _, y = batch
    return (y + 1) % NUM_CLASSES


def test_filter_result_reaches_the_target(model, batch, target):
    x, y = batch
    result = FilterAttack(iterations=200).optimise(model, x, y, target)
    assert result.x_adv.shape == result.delta.shape == x.shape
    assert result.logits.shape == (x.shape[0], NUM_CLASSES)
    assert result.l2.shape == result.loss.shape == result.success.shape == (x.shape[0],)
    torch.testing.assert_close(result.l2, flat_norm(result.delta, "l2"))
    torch.testing.assert_close(result.x_adv, x + result.delta)
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(result.x_adv))
        before = F.cross_entropy(model(x), target, reduction="none")
    assert (result.loss < before).all()
    assert result.success.float().mean() > 0.5
    assert torch.equal(result.success, result.logits.argmax(1) == target)


def test_filter_penalty_shrinks_the_filter(model, batch, target):
    x, y = batch
    free = FilterAttack(iterations=100).optimise(model, x, y, target)
    penalised = FilterAttack(iterations=100, beta=0.5).optimise(model, x, y, target)
    assert penalised.l2.mean() < free.l2.mean()


def test_filter_l2_loss_form_is_half_the_squared_penalty(model, batch, target):
    x, y = batch
    source = FilterAttack(iterations=30, beta=0.5, penalty="l2_loss").optimise(model, x, y, target)
    squared = FilterAttack(iterations=30, beta=0.25).optimise(model, x, y, target)
    torch.testing.assert_close(source.delta, squared.delta)


def test_filter_is_batched_per_image(model, batch, target):
    """Summing per-image losses gives each image the filter it would get alone."""
    x, y = batch
    attack = FilterAttack(iterations=30, beta=0.5)
    together = attack.optimise(model, x, y, target).delta
    alone = torch.cat(
        [
            attack.optimise(model, x[i : i + 1], y[i : i + 1], target[i : i + 1]).delta
            for i in range(4)
        ]
    )
    torch.testing.assert_close(together[:4], alone, atol=1e-5, rtol=1e-4)


def test_filter_without_clip_is_the_source_loop(model, batch, target):
    """clip=False reproduces the source: plain GD on CE + beta * tf.nn.l2_loss, no clipping."""
    x, y = batch
    lr, beta = 0.1, 0.5
    delta = torch.zeros_like(x)
    for _ in range(20):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), target, reduction="sum")
        loss = loss + beta * delta.square().sum() / 2
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta - lr * grad).detach()
    attack = FilterAttack(iterations=20, lr=lr, beta=beta, penalty="l2_loss", clip=False)
    torch.testing.assert_close(
        attack.optimise(model, x, y, target).delta, delta, atol=1e-6, rtol=1e-5
    )


def test_filter_clip_keeps_the_box_and_warm_start_continues(model, batch, target):
    x, y = batch
    strong = FilterAttack(iterations=50, lr=5.0)
    assert (strong(model, x, y, target) >= 0).all() and (strong(model, x, y, target) <= 1).all()
    unclipped = FilterAttack(iterations=50, lr=5.0, clip=False)(model, x, y, target)
    assert unclipped.min() < 0 or unclipped.max() > 1
    # the source's second phase: beta 0.5, continued from the first phase's filter
    first = FilterAttack(iterations=50).optimise(model, x, y, target)
    second = FilterAttack(iterations=1, beta=0.5).optimise(model, x, y, target, init=first.delta)
    assert (second.delta - first.delta).abs().max() < 0.05  # one small step from the first
    with pytest.raises(UserError, match="init"):
        FilterAttack(iterations=1).optimise(model, x, y, target, init=first.delta[:2])


def test_cw_finds_small_adversarials(model, batch):
    x, y = batch
    attack = CarliniWagnerL2(steps=50, binary_search_steps=5, initial_const=0.1, lr=0.05)
    x_min, min_eps = attack.minimize(model, x, y)
    found = torch.isfinite(min_eps)
    assert found.float().mean() > 0.5
    with torch.no_grad():
        assert (model(x_min[found]).argmax(1) != y[found]).all()
    assert torch.equal(x_min[~found], x[~found])
    # a bigger confidence margin needs bigger perturbations
    _, confident = CarliniWagnerL2(
        steps=50, binary_search_steps=5, initial_const=0.1, lr=0.05, kappa=2.0
    ).minimize(model, x, y)
    both = found & torch.isfinite(confident)
    assert both.any() and (confident[both] >= min_eps[both] - 1e-4).all()


def test_cw_targeted_and_eps_projection(model, batch, target):
    x, y = batch
    attack = CarliniWagnerL2(steps=50, binary_search_steps=5, initial_const=0.1, lr=0.05)
    x_min, min_eps = attack.minimize(model, x, y, target)
    found = torch.isfinite(min_eps)
    assert found.any()
    with torch.no_grad():
        assert (model(x_min[found]).argmax(1) == target[found]).all()
    bounded = attack.with_eps(0.05)(model, x, y, target)
    assert flat_norm(bounded - x, "l2").max() <= 0.05 + 1e-5
