"""Crafting adversarial examples inside a training objective.

One projected-gradient engine serves every defence: PGD adversarial training (sign steps in an
L-inf ball), fast FGSM training (one step from a random start), TRADES (ascent on a KL loss) and
NSL adversarial regularisation (steps along the NSL-normalised gradient, optional ball, optional
clipping). The step direction, the projection and the random start follow Neural Structured
Learning's ``maximize_within_unit_norm``, ``project_to_ball`` and ``random_in_norm_ball``: norms
are taken per example over all features (C*H*W), never per channel or per pixel.

Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so crafting never
writes into any parameter's ``.grad``; the caller decides the model's mode (defences craft in
eval mode, see ``robustlab.defences.objectives``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

Norm = Literal["linf", "l2", "l1"]
# NSL's floor on a gradient norm before dividing by it (``epsilon=1e-6`` in nsl.lib.utils).
NORM_FLOOR = 1e-6

LossFn = Callable[[Tensor], Tensor]  # logits (B, K) -> scalar loss to *maximise*


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-example values (B,) so they broadcast against ``like`` (B, ...)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _flat(x: Tensor) -> Tensor:
    return x.reshape(len(x), -1)


def steepest_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The unit-norm perturbation that maximises ``<grad, d>`` for each example.

    grad: (B, ...) input gradient. linf: ``sign(grad)``; l2: ``grad / ||grad||_2`` with the norm
    over all features of the example, floored at 1e-6; l1: +-1 on the largest-magnitude feature(s),
    shared evenly among ties (as NSL). Returns a tensor of the same shape.
    """
    if norm == "linf":
        return grad.sign()
    flat = _flat(grad)
    if norm == "l2":
        squared = flat.square().sum(1).clamp_min(NORM_FLOOR**2)
        return grad * _expand(squared.rsqrt(), grad)
    if norm == "l1":
        magnitude = flat.abs()
        is_max = (magnitude == magnitude.amax(1, keepdim=True)).to(grad.dtype)
        share = is_max / is_max.sum(1, keepdim=True).clamp_min(NORM_FLOOR)
        return (share * flat.sign()).reshape_as(grad)
    raise ValueError(f"unknown norm {norm!r}")


def project(delta: Tensor, radius: float, norm: Norm) -> Tensor:
    """Project each example's perturbation into the ``norm`` ball of ``radius`` around 0.

    delta: (B, ...). l2 rescales only the examples whose norm exceeds ``radius``.
    """
    if norm == "linf":
        return delta.clamp(-radius, radius)
    if norm == "l2":
        length = _flat(delta).square().sum(1).clamp_min(NORM_FLOOR**2).sqrt()
        scale = torch.where(length <= radius, torch.ones_like(length), radius / length)
        return delta * _expand(scale, delta)
    raise ValueError(f"projection onto an {norm} ball is not supported (as in NSL)")


def random_in_ball(like: Tensor, radius: float, norm: Norm) -> Tensor:
    """A point drawn uniformly from the ``norm`` ball of ``radius``, one per example.

    linf: independent uniforms in [-radius, radius]; l2: Gaussian direction with the radius drawn
    so the point is uniform in the ball (two extra Gaussian coordinates, as NSL). Uses the global
    torch RNG, which the training loop seeds per epoch.
    """
    if norm == "linf":
        return (torch.rand_like(like) * 2 - 1) * radius
    if norm == "l2":
        samples = torch.randn_like(like)
        squared = _flat(samples).square().sum(1)
        # ||two extra N(0,1) coordinates||^2 ~ chi^2(2) = Exponential(rate 1/2).
        extra = torch.empty_like(squared).exponential_(0.5)
        scale = radius / (squared + extra).sqrt()
        return samples * _expand(scale, like)
    raise ValueError(f"random start in an {norm} ball is not supported")


def input_gradient(model: nn.Module, x: Tensor, loss_fn: LossFn) -> Tensor:
    """Gradient of ``loss_fn(model(x))`` with respect to ``x`` only (no parameter ``.grad``).

    Non-finite entries are replaced by 0, i.e. that feature is not perturbed (as NSL).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(x))
    (grad,) = torch.autograd.grad(loss, x)
    return torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))


def perturb(
    model: nn.Module,
    x: Tensor,
    loss_fn: LossFn,
    *,
    step_size: float,
    steps: int,
    norm: Norm,
    radius: float | None,
    start: Tensor | None = None,
    clip: tuple[float | None, float | None] = (0.0, 1.0),
) -> Tensor:
    """Projected gradient ascent on ``loss_fn(model(x_adv))``; returns ``x_adv`` detached.

    x: (B, C, H, W) clean inputs. Each step is
    ``x_adv = clip(x + proj(x_adv - x + step_size * steepest_direction(grad)))``:
    the ball (``radius``, None for none) is centred on the clean input and ``clip``
    (min, max; either None for unbounded) is applied after every step, as NSL's PGD does.
    start: initial perturbation (B, C, H, W) added to ``x`` (and clipped) before the first step.
    """
    low, high = clip
    x = x.detach()

    def bounded(values: Tensor) -> Tensor:
        if low is None and high is None:
            return values
        return values.clamp(low, high)

    x_adv = bounded(x + start) if start is not None else x
    for _ in range(steps):
        grad = input_gradient(model, x_adv, loss_fn)
        delta = x_adv - x + step_size * steepest_direction(grad, norm)
        if radius is not None:
            delta = project(delta, radius, norm)
        x_adv = bounded(x + delta).detach()
    return x_adv
