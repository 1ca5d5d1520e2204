"""FGSM and FGM: one gradient step of size eps, along its sign (Linf) or direction (L2).

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015,
https://arxiv.org/abs/1412.6572. Threat model: white-box, Linf (``fgsm``) or L2 (``fgm``) ball
of radius ``eps``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from robustlab.attacks.base import (
    Batch,
    DirectionAttack,
    L2Ball,
    check_int,
    input_gradient,
    quiet_default,
)

# floor of a gradient's L2 norm before dividing by it (NSL's ``epsilon=1e-6``)
_NORM_FLOOR = 1e-6


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
        self, batch: Batch, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        grad, logits = input_gradient(
            batch.view, batch.x.clone(), batch.y, batch.target, self.loss, self.eot_samples
        )
        return self._unit(grad), logits

    def _unit(self, grad: Tensor) -> Tensor:
        """The unit-norm direction of steepest ascent: the sign, for the Linf ball."""
        return grad.sign_()


@dataclasses.dataclass(frozen=True, kw_only=True)
class FGM(L2Ball, FGSM):
    """Fast gradient method in the L2 ball: ``x_adv = clip(x + eps * g / ||g||_2, 0, 1)``.

    FGSM's L2 form (Goodfellow et al. 2015; Miyato et al. 2016 for the L2 step, the step that
    TensorFlow Neural Structured Learning's adversarial regularisation takes). The norm is
    taken per image over all of ``C*H*W``, floored at 1e-6 as NSL does.

    Args:
        eps: L2 radius in [0, 1] pixel units (may exceed 1, see ``pgd-l2``).
        loss, eot_samples: as for ``fgsm``.
    """

    name = "fgm"

    def _unit(self, grad: Tensor) -> Tensor:
        squared = grad.flatten(1).square().sum(1).clamp_min(_NORM_FLOOR**2)
        return grad * squared.rsqrt().view(-1, *([1] * (grad.ndim - 1)))
