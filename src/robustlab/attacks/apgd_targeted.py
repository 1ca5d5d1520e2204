"""APGD-T: APGD on the targeted DLR loss, against each of the top-k other classes in turn.

Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690 (Section 4, "APGD-T"). Threat model:
white-box, Linf (``apgd-t``) or L2 (``apgd-t-l2``), untargeted: success is any
misclassification; the targets are only a means (the k classes with the highest clean logits
after the prediction, tried in that order, each only on the samples still standing).

Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, which needs at least 4 classes.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from robustlab.attacks.apgd import APGD, APGDL2, Problem, merge
from robustlab.attacks.base import Batch, ModelView, check_int
from robustlab.errors import UserError

_TINY = 1e-12


def refuse_target(name: str, target: Tensor | None) -> None:
    """Attacks that choose their own targets take none from the caller."""
    if target is not None:
        raise UserError(
            f"attack '{name}' is untargeted (it picks its own target classes); "
            "for a given target class use 'apgd' or 'pgd'"
        )


def clean_logits(view: ModelView, x: Tensor, name: str, target: Tensor | None) -> Tensor:
    """Logits of the clean images (checking the labels against the model first), after
    refusing a caller's target: the start of every attack that picks its own targets."""
    with torch.no_grad():
        clean = view(x)
    refuse_target(name, target)
    return clean


def targeted_dlr_loss(logits: Tensor, y: Tensor, aim: Tensor) -> Tensor:
    """Targeted DLR per sample ``(B,)``: high when the target ``aim`` beats the label ``y``."""
    ordered = logits.sort(dim=1, descending=True).values
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, aim[:, None]).squeeze(1)
    return -gap / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + _TINY)


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGDTargeted(APGD):
    """APGD-T in the Linf ball: targeted DLR against the ``top_k`` most likely other classes.

    Args:
        eps: Linf radius in [0, 1] pixel units.
        steps: iterations per target and restart (AutoAttack: 100).
        top_k: how many target classes are tried (AutoAttack: 9); at most classes - 1.
        restarts: random starts per target class.
        rho: step-halving threshold (see ``apgd``).
        eot_samples: gradients averaged per step (EOT), >= 1.
    """

    name = "apgd-t"
    norm = "linf"

    top_k: int = 9
    loss: str = "dlr"

    def _validate(self) -> None:
        super()._validate()
        check_int(self._field("top_k"), self.top_k, 1)
        if self.loss != "dlr":
            raise UserError(
                f"{self._field('loss')} must be 'dlr' (targeted DLR), got {self.loss!r}"
            )

    def _loss(self, logits: Tensor, y: Tensor, target: Tensor | None, aim: Tensor | None) -> Tensor:
        assert aim is not None
        return targeted_dlr_loss(logits, y, aim)

    def _attack(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None, stop_on_success: bool
    ) -> tuple[Tensor, Tensor]:
        view, x, y, target = batch.view, batch.x, batch.y, batch.target
        clean = clean_logits(view, x, self.name, target)
        self.check_classes(clean.shape[1])
        ranked = clean.argsort(dim=1, descending=True)
        pred = clean.argmax(1)
        loss = torch.full(y.shape, -math.inf, dtype=x.dtype, device=x.device)
        outcome = (x.clone(), pred, pred != y, loss)
        for rank in range(1, self.top_k + 1):
            todo = (~outcome[2]).nonzero().squeeze(1)
            if not todo.numel():
                break
            problem = Problem(x, y, None, ranked[:, rank], eps).select(todo)
            merge(outcome, todo, self._restart(view, problem, generator, stop_on_success))
        return outcome[0], outcome[1]

    def check_classes(self, classes: int) -> None:
        """Refuse models this attack cannot apply to (before any step is taken)."""
        if classes < 4:
            raise UserError(
                f"attack '{self.name}' needs a model with at least 4 classes (targeted DLR "
                f"uses the 4th largest logit); this one has {classes}"
            )
        if self.top_k > classes - 1:
            raise UserError(
                f"{self._field('top_k')} must be <= {classes - 1} (the other classes of this "
                f"model), got {self.top_k}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGDTargetedL2(APGDTargeted, APGDL2):
    """APGD-T in the L2 ball; same settings as ``apgd-t``, ``eps`` an L2 radius."""

    name = "apgd-t-l2"
    norm = "l2"
    eps_high = math.inf

    eps: float = 0.5
