"""The face study's targeted optimisation attack: learn an additive filter per image.

Source (/work/shared/sources/003): starting from ``delta = 0``, plain gradient descent
(``lr = 0.1``, 1000 iterations) on the target-class cross-entropy of ``model(x + delta)``,
first with ``beta = 0``, then continued from that filter with ``beta = 0.5`` and an L2 penalty.
Here the attack is batched: the per-image losses are summed, so every image's filter gets
its own gradient, exactly as if each were optimised alone.

Differences from the source, each with a switch for source parity:

* penalty: ``'squared'`` (default) is ``beta * sum(delta^2)``; the source used TensorFlow's
  ``tf.nn.l2_loss(delta) = sum(delta^2) / 2``: pass ``penalty='l2_loss'``.
* clipping: ``clip=True`` (default) keeps ``x + delta`` in [0, 1] by projecting after every
  step, so the returned image honours the [0, 1] contract and the scores are those of the
  image returned. The source did not clip: ``clip=False`` (then ``x_adv`` can leave [0, 1]).
* the source's second phase continued from the first phase's filter: pass ``init=`` the first
  result's ``delta`` to ``optimise``.
* pixel scale: the source fed ``(grey - 128) / 256``, here images are in [0, 1] (1/255 per grey
  level) and normalisation sits inside the model; ``lr`` and ``beta`` carry over as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.attacks.base import (
    Attack,
    ModelView,
    attack_mode,
    check_bool,
    check_choice,
    check_steps,
    flat_norm,
)
from robustlab.errors import UserError, check_range

PENALTIES = ("squared", "l2_loss")


@dataclasses.dataclass(frozen=True)
class FilterResult:
    """What ``FilterAttack.optimise`` returns, per image.

    Attributes:
        x_adv: ``(B, C, H, W)`` the filtered images ``x + delta``.
        delta: ``(B, C, H, W)`` the learned filters, pixel units.
        logits: ``(B, K)`` the model's final scores on ``x_adv``.
        l2: ``(B,)`` ``||delta||_2`` per image.
        loss: ``(B,)`` final per-image objective (target cross-entropy + penalty).
        success: ``(B,)`` bool, ``x_adv`` is classified as the target.
    """

    x_adv: Tensor
    delta: Tensor
    logits: Tensor
    l2: Tensor
    loss: Tensor
    success: Tensor


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterAttack(Attack):
    """Targeted additive-filter optimisation (no epsilon bound; ``norm = 'none'``).

    Minimises, per image, ``CE(model(x + delta), target) + beta * P(delta)`` by plain gradient
    descent, with ``P = sum(delta^2)`` (``penalty='squared'``) or ``sum(delta^2) / 2``
    (``penalty='l2_loss'``, the source's ``tf.nn.l2_loss``). See the module docstring for the
    source and the parity switches.

    Args:
        iterations: gradient-descent steps (source: 1000).
        lr: learning rate (source: 0.1).
        beta: weight of the L2 penalty (source: 0, then 0.5).
        penalty: 'squared' or 'l2_loss'.
        clip: keep ``x + delta`` in [0, 1] (projected after each step); ``False`` = source.

    A target is required. ``attack(model, x, y, target)`` returns ``x_adv``; ``optimise``
    returns the full ``FilterResult``.
    """

    name = "filter"
    norm = "none"
    requires_target = True

    iterations: int = 1000
    lr: float = 0.1
    beta: float = 0.0
    penalty: str = "squared"
    clip: bool = True

    def _validate(self) -> None:
        super()._validate()
        check_steps(self._field("iterations"), self.iterations)
        check_range(self._field("lr"), self.lr, 0.0, low_inclusive=False)
        check_range(self._field("beta"), self.beta, 0.0)
        check_choice(self._field("penalty"), self.penalty, PENALTIES)
        check_bool(self._field("clip"), self.clip)

    @property
    def eps(self) -> float:
        """No bound: the filter is only limited by the penalty."""
        return math.inf

    def optimise(
        self,
        model: Callable[[Tensor], Any],
        x: Tensor,
        y: Tensor,
        target: Any,
        init: Tensor | None = None,
    ) -> FilterResult:
        """Learn one filter per image; ``init`` ``(B, C, H, W)`` warm-starts the filters."""
        x, y, target_t = self._check_call(x, y, target)
        assert target_t is not None
        if init is not None and (not isinstance(init, Tensor) or init.shape != x.shape):
            shape = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
            raise UserError(f"init must have the shape of x {tuple(x.shape)}, got {shape}")
        with attack_mode(model, self.train_mode):
            view = ModelView(model, y, target_t)
            return self._optimise(view, x, target_t, init)

    def __call__(
        self, model: Callable[[Tensor], Any], x: Tensor, y: Tensor, target: Any = None
    ) -> Tensor:
        """The filtered images ``x + delta`` (in [0, 1] unless ``clip=False``)."""
        return self.optimise(model, x, y, target).x_adv

    def _penalty(self, delta: Tensor) -> Tensor:
        squared = delta.square().flatten(1).sum(1)
        return squared / 2 if self.penalty == "l2_loss" else squared

    def _optimise(
        self, view: ModelView, x: Tensor, target: Tensor, init: Tensor | None
    ) -> FilterResult:
        delta = torch.zeros_like(x) if init is None else init.detach().to(x).clone()
        if self.clip:
            delta = (x + delta).clamp_(0.0, 1.0).sub_(x)
        for _ in range(self.iterations):
            delta.requires_grad_(True)
            loss = self._loss(view(x + delta), delta, target)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta.requires_grad_(False)
            with torch.no_grad():
                delta.sub_(grad, alpha=self.lr)
                if self.clip:  # project: x + delta back into the box
                    delta.add_(x).clamp_(0.0, 1.0).sub_(x)
        with torch.no_grad():
            x_adv = x + delta
            logits = view(x_adv)
            loss = self._loss(logits, delta, target)
        return FilterResult(
            x_adv=x_adv,
            delta=delta,
            logits=logits,
            l2=flat_norm(delta, "l2"),
            loss=loss,
            success=logits.argmax(1) == target,
        )

    def _loss(self, logits: Tensor, delta: Tensor, target: Tensor) -> Tensor:
        """Per-image objective ``(B,)``."""
        ce = F.cross_entropy(logits, target, reduction="none")
        return ce + self.beta * self._penalty(delta) if self.beta else ce
