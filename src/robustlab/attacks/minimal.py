"""Minimal-epsilon search: per-sample binary search over eps with a fixed-budget Linf attack.

The smallest eps at which FGSM (or I-FGSM, PGD, MI-FGSM) fools each sample, found by bisection,
batched over all samples at once (each sample has its own bracket). Success need not be
monotone in eps for these attacks, so the result is an upper bound on the true minimum.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from robustlab.attacks.base import (
    Attack,
    Batch,
    MinimumNormAttack,
    check_choice,
    check_int,
    check_steps,
    flat_norm,
    is_success,
)
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.iterative import IFGSM, MIFGSM, PGD

BASES: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, IFGSM, PGD, MIFGSM)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MinimalEps(MinimumNormAttack):
    """Per-sample minimal Linf epsilon by bisection over a base attack.

    First the base attack runs at ``eps`` (the search's upper bound); samples it cannot fool
    get ``min_eps = inf``. Then ``search_steps`` bisections halve each fooled sample's bracket;
    ``min_eps`` is the Linf norm of the smallest adversarial found (within
    ``eps / 2**search_steps`` of the bracket's lower end). The base attack stops early on
    success, so every probe only costs work for the samples it has not fooled yet.

    Args:
        eps: upper bound of the search, Linf, [0, 1] pixel units (in a sweep: the largest eps).
        base: 'fgsm', 'ifgsm', 'pgd' or 'mifgsm'.
        steps: iterations of an iterative base attack (ignored for fgsm).
        search_steps: bisection steps (>= 0).
        loss: the base attack's loss: 'ce', 'mse' or 'margin'.
    """

    name = "minimal"
    norm = "linf"

    eps: float = 1.0
    base: str = "fgsm"
    steps: int = 10
    search_steps: int = 10
    loss: str = "ce"

    def _validate(self) -> None:
        super()._validate()
        check_choice(self._field("base"), self.base, tuple(BASES))
        check_steps(self._field("steps"), self.steps)
        check_int(self._field("search_steps"), self.search_steps, 0)

    def base_attack(self) -> Attack:
        """The fixed-budget attack probed at each eps."""
        settings = {"eps": self.eps, "loss": self.loss, "seed": self.seed}
        if self.base != "fgsm":
            settings["steps"] = self.steps
        return BASES[self.base](train_mode=self.train_mode, **settings)

    def _find(self, batch: Batch, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        view, x = batch.view, batch.x
        base = self.base_attack()
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        high = torch.full(shape, self.eps, dtype=x.dtype, device=x.device)
        low = torch.zeros_like(high)

        def probe(idx: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
            part = batch.part(idx)
            x_adv, pred = base._attack(part, eps, generator, True)
            pred = view.predict(x_adv) if pred is None else pred
            return x_adv, is_success(pred, part.y, part.target)

        best = x.clone()
        everyone = torch.arange(x.shape[0], device=x.device)
        x_adv, found = probe(everyone, high)
        best[found] = x_adv[found]
        active = everyone[found]  # only samples with an adversarial at the upper bound
        for _ in range(self.search_steps):
            if not active.numel():
                break
            mid = (low[active] + high[active]) / 2
            x_adv, hit = probe(active, mid)
            best[active[hit]] = x_adv[hit]
            high[active[hit]] = mid[hit]
            low[active[~hit]] = mid[~hit]
        min_eps = flat_norm(best - x, "linf")
        return best, min_eps.masked_fill(~found, float("inf"))
