"""Carlini-Wagner L2: minimum-norm attack with a per-sample binary search on the constant c.

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017,
https://arxiv.org/abs/1608.04644. Threat model: white-box, L2; it minimises the perturbation
instead of working inside a fixed ball.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from robustlab.attacks.base import (
    Batch,
    MinimumNormAttack,
    check_bool,
    check_steps,
    is_success,
    label_loss,
)
from robustlab.errors import check_range

_ATANH_SCALE = 1 - 1e-6  # keeps atanh finite for pixels at exactly 0 or 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(MinimumNormAttack):
    """Batched CW-L2 in tanh space with Adam, confidence ``kappa`` and early abort.

    For each sample minimise ``||x' - x||_2^2 + c * max(margin, -kappa)`` over
    ``x' = (tanh(w) + 1) / 2`` (always inside [0, 1]), where ``margin`` is the true label's
    logit minus the best other one (targeted: best other minus the target's). ``c`` starts at
    ``initial_const`` and is binary-searched per sample: down when an adversarial was found,
    up (x10 until bracketed) when not. The smallest adversarial seen is kept.

    Args:
        eps: L2 radius (pixel units) the result is projected onto in ``__call__``; ``inf``
            (default) returns the minimum-norm adversarial as found. Sweeps ignore it.
        steps: Adam steps per binary-search step.
        binary_search_steps: number of values of c tried per sample.
        initial_const: first c.
        lr: Adam learning rate (in tanh space).
        kappa: confidence margin (>= 0) an adversarial must reach to count.
        abort_early: stop a binary-search step once the loss stops falling (checked every
            ``steps // 10`` steps).
    """

    name = "cw-l2"
    norm = "l2"
    eps_high = math.inf

    eps: float = math.inf
    steps: int = 100
    binary_search_steps: int = 9
    initial_const: float = 1e-3
    lr: float = 0.01
    kappa: float = 0.0
    abort_early: bool = True

    def _validate(self) -> None:
        super()._validate()
        check_steps(self._field("steps"), self.steps)
        check_steps(self._field("binary_search_steps"), self.binary_search_steps)
        check_range(self._field("initial_const"), self.initial_const, 0.0, low_inclusive=False)
        check_range(self._field("lr"), self.lr, 0.0, low_inclusive=False)
        check_range(self._field("kappa"), self.kappa, 0.0)
        check_bool(self._field("abort_early"), self.abort_early)

    def _find(self, batch: Batch, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        view, x, y, target = batch.view, batch.x, batch.y, batch.target
        batch, dims = x.shape[0], tuple(range(1, x.ndim))
        labels = y if target is None else target
        sign = 1.0 if target is None else -1.0  # margin = sign * (z_label - best other)
        w0 = torch.atanh((2 * x - 1) * _ATANH_SCALE)
        const = torch.full((batch,), self.initial_const, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best = x.clone()
        best_sq = torch.full_like(const, math.inf)  # squared L2 of the best adversarial
        check_every = max(self.steps // 10, 1)
        for _ in range(self.binary_search_steps):
            dw = torch.zeros_like(x)
            adam = _Adam(dw, self.lr)
            found = torch.zeros(batch, dtype=torch.bool, device=x.device)
            previous = math.inf
            for step in range(self.steps):
                dw.requires_grad_(True)
                x_adv = (torch.tanh(w0 + dw) + 1) / 2
                logits = view(x_adv)
                dist_sq = (x_adv - x).square().sum(dims)
                margin = -sign * label_loss(logits, labels, "margin")
                loss = (dist_sq + const * margin.clamp(min=-self.kappa)).sum()
                (grad,) = torch.autograd.grad(loss, dw)
                dw.requires_grad_(False)
                with torch.no_grad():
                    adam.step(grad)
                    hit = is_success(logits.argmax(1), y, target) & (margin <= -self.kappa)
                    better = hit & (dist_sq < best_sq)
                    best_sq = torch.where(better, dist_sq, best_sq)
                    best[better] = x_adv[better]
                    found |= hit
                if self.abort_early and step % check_every == 0:
                    value = float(loss.detach())
                    if value > previous * 0.9999:
                        break
                    previous = value
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return best, best_sq.sqrt()


class _Adam:
    """Adam on one tensor, in place (torch.optim's first use imports torch._dynamo: seconds)."""

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.param, self.lr, self.betas = param, lr, betas
        self.mean = torch.zeros_like(param)
        self.var = torch.zeros_like(param)
        self.t = 0

    def step(self, grad: Tensor) -> None:
        beta1, beta2 = self.betas
        self.t += 1
        self.mean.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.var.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = self.lr / (1 - beta1**self.t)
        denom = (self.var / (1 - beta2**self.t)).sqrt_().add_(1e-8)
        self.param.addcdiv_(self.mean, denom, value=-step)
