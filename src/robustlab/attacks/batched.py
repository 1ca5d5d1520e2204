"""Shared pieces of the evaluation-grade attacks (APGD, APGD-T, Square, FAB, AutoAttack).

``BatchedAttack`` is an attack whose ``_perturb`` works on a whole batch and reports, per
sample, the prediction on what it returns; a sweep runs it once per epsilon on the samples
still standing, at most ``batch_size`` at a time, with a fresh seeded generator (so the same
seed gives the same curve however the samples are chunked into epsilons).

``loss_gradient`` is the one input-gradient helper of these attacks, with EOT: the gradient of
a randomised model is averaged over ``samples`` forward/backward passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from robustlab.attacks.base import Attack, Batch, ModelView, SweepRunner, join_parts

# per-sample loss ``(B,)`` to maximise, from logits ``(B, K)``
LossFn = Callable[[Tensor], Tensor]


def loss_gradient(
    view: ModelView, x_adv: Tensor, loss_fn: LossFn, samples: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad, logits, loss)`` of ``loss_fn(model(x_adv))`` w.r.t. ``x_adv``, no ``.grad``.

    With ``samples > 1`` (EOT, expectation over transformation: Athalye et al. 2018) the
    gradient is the mean over that many passes and the logits and loss are those of the last
    pass, as in the AutoAttack reference; a deterministic model gives the same gradient.
    """
    total = torch.zeros_like(x_adv)
    for _ in range(samples):
        leaf = x_adv.detach().requires_grad_(True)
        logits = view(leaf)
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
        total += grad
    return total / samples, logits.detach(), loss.detach()


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchedAttack(Attack):
    """An attack that runs a batch at once and returns ``(x_adv, pred)`` from ``_perturb``."""

    def _runner(self, batch: Batch, keep: bool, batch_size: int | None) -> SweepRunner:
        view = batch.view

        def run(idx: Tensor, eps: float) -> tuple[Tensor, Tensor | None]:
            generator = self._generator(batch.x.device)
            advs, preds, stages = [], [], []
            for part in batch.part(idx).parts(batch_size):
                eps_t = self._eps_tensor(part.x, eps)
                adv, pred = self._perturb(
                    view, part.x, part.y, part.target, eps_t, generator, not keep
                )
                advs.append(adv)
                preds.append(pred)
                stages.append(view.stage)
            if all(stage is not None for stage in stages):  # a cascade: join its chunks
                view.stage = torch.cat(stages)  # type: ignore[arg-type]
            return join_parts(advs, preds)

        return SweepRunner(run)
