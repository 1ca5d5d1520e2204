"""FGSM, I-FGSM, PGD and MI-FGSM agree with plain reference loops written here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES

from robustlab.attacks import FGSM, IFGSM, MIFGSM, PGD, PGDL2


def _grad(model, x, labels, loss="ce"):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    if loss == "ce":
        value = F.cross_entropy(logits, labels, reduction="sum")
    else:  # the leaf study: squared error between the softmax output and the one-hot label
        value = (logits.softmax(1) - F.one_hot(labels, NUM_CLASSES).float()).square().sum()
    (grad,) = torch.autograd.grad(value, x)
    return grad


def test_fgsm_matches_reference(model, batch):
    x, y = batch
    eps = 0.03
    expected = (x + eps * _grad(model, x, y).sign()).clamp(0, 1)
    assert torch.equal(FGSM(eps=eps)(model, x, y), expected)


def test_targeted_fgsm_descends_the_target_loss(model, batch):
    x, y = batch
    target = (y + 1) % NUM_CLASSES
    expected = (x - 0.03 * _grad(model, x, target).sign()).clamp(0, 1)
    assert torch.equal(FGSM(eps=0.03)(model, x, y, target), expected)


def test_fgsm_mse_matches_the_leaf_study(model, batch):
    x, y = batch
    expected = (x + 0.03 * _grad(model, x, y, "mse").sign()).clamp(0, 1)
    assert torch.equal(FGSM(eps=0.03, loss="mse")(model, x, y), expected)


def test_ifgsm_matches_the_leaf_study_loop(model, batch):
    """The source's fgsm(): T steps of eps/T along the sign, clip to [0, 1] after each."""
    x, y = batch
    eps, steps = 0.05, 5
    output = x.clone()
    for _ in range(steps):
        output = (output + _grad(model, output, y, "mse").sign() * (eps / steps)).clamp(0, 1)
    actual = IFGSM(eps=eps, steps=steps, loss="mse")(model, x, y)
    torch.testing.assert_close(actual, output, atol=1e-6, rtol=0)


def test_pgd_matches_reference_with_random_start(model, batch):
    x, y = batch
    eps, steps = 0.03, 7
    generator = torch.Generator().manual_seed(5)
    x_adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        x_adv = x_adv + alpha * _grad(model, x_adv, y).sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    actual = PGD(eps=eps, steps=steps, seed=5)(model, x, y)
    torch.testing.assert_close(actual, x_adv, atol=1e-6, rtol=0)


def test_pgd_l2_matches_reference(model, batch):
    x, y = batch
    eps, steps = 0.5, 6
    alpha = 2.5 * eps / steps
    x_adv = x.clone()
    for _ in range(steps):
        grad = _grad(model, x_adv, y)
        x_adv = x_adv + alpha * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = x_adv - x
        factor = (eps / delta.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
        x_adv = (x + delta * factor).clamp(0, 1)
    actual = PGDL2(eps=eps, steps=steps, random_start=False)(model, x, y)
    torch.testing.assert_close(actual, x_adv, atol=1e-5, rtol=0)


def test_mifgsm_matches_reference(model, batch):
    x, y = batch
    eps, steps, decay = 0.03, 5, 1.0
    momentum, x_adv = torch.zeros_like(x), x.clone()
    for _ in range(steps):
        grad = _grad(model, x_adv, y)
        momentum = decay * momentum + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
        x_adv = x_adv + (eps / steps) * momentum.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    actual = MIFGSM(eps=eps, steps=steps, decay=decay)(model, x, y)
    torch.testing.assert_close(actual, x_adv, atol=1e-6, rtol=0)


def test_pgd_restarts_never_do_worse_than_one_run(model, batch):
    x, y = batch
    eps = 0.01
    single = PGD(eps=eps, steps=3)(model, x, y)
    several = PGD(eps=eps, steps=3, restarts=4)(model, x, y)
    with torch.no_grad():
        fooled_single = (model(single).argmax(1) != y).sum()
        fooled_several = (model(several).argmax(1) != y).sum()
    assert fooled_several >= fooled_single
