"""FGSM: one signed-gradient step of size eps.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015,
https://arxiv.org/abs/1412.6572. Threat model: white-box, Linf ball of radius ``eps``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from robustlab.attacks.base import (
    DirectionAttack,
    ModelView,
    check_int,
    input_gradient,
    quiet_default,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FGSM(DirectionAttack):
    """Fast gradient sign method: ``x_adv = clip(x + eps * sign(grad_x L), 0, 1)``.

    Untargeted it ascends the loss on the true label; targeted (``target`` given) it descends
    the loss on the target class.

    Args:
        eps: Linf radius in [0, 1] pixel units.
        loss: 'ce' (cross-entropy), 'mse' (the leaf study: sum of squared differences between
            the softmax output and the one-hot label) or 'margin' (Carlini-Wagner margin).
        eot_samples: gradients averaged (EOT, for randomised models), >= 1.

    Shape: ``x`` ``(B, C, H, W)`` in [0, 1], ``y`` ``(B,)``; returns ``(B, C, H, W)``.
    In a sweep the gradient is computed once and reused for every epsilon.
    """

    name = "fgsm"
    norm = "linf"

    eps: float = 8 / 255
    loss: str = "ce"
    eot_samples: int = quiet_default(1)  # EOT: gradients averaged (randomised models)

    def _validate(self) -> None:
        super()._validate()
        check_int(self._field("eot_samples"), self.eot_samples, 1)

    def _direction(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor | None]:
        grad, logits = input_gradient(view, x.clone(), y, target, self.loss, self.eot_samples)
        return grad.sign_(), logits
