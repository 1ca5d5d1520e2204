"""APGD: auto-PGD with a step-size schedule, momentum and checkpoints (Linf and L2).

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690 (Algorithm 1).
Threat model: white-box, Linf (``apgd``) or L2 (``apgd-l2``) ball of radius ``eps`` in [0, 1]
pixel units, untargeted (or targeted when a target is given).

The step size starts at ``2 * eps`` and is halved at checkpoints (after 22% of the steps, then
at windows shrinking by 3% of the steps down to 6%) for the samples whose loss rose in at most
``rho`` of the window's steps, or whose best loss did not improve since the last checkpoint
while their step was not just halved; a halving restarts the sample from its best point. Each
step mixes the projected gradient step with the previous move (momentum ``0.75``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from robustlab.attacks.base import (
    Batch,
    L2Ball,
    ModelView,
    check_int,
    check_steps,
    flat_norm,
    is_success,
    noise_like,
    objective,
)
from robustlab.attacks.batched import BatchedAttack, loss_gradient
from robustlab.errors import check_range

MOMENTUM = 0.75  # weight of the new projected step; the rest is the previous move
_TINY = 1e-12


# (x_adv, pred, fooled, loss) per sample: what a run returns and restarts improve on
Outcome = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclasses.dataclass(frozen=True)
class Problem:
    """The samples an APGD run attacks (rows align): clean images, labels, the caller's
    target (success means predicting it), the class the loss aims at (APGD-T), radii."""

    x: Tensor  # (A, C, H, W)
    y: Tensor  # (A,)
    target: Tensor | None  # (A,)
    aim: Tensor | None  # (A,)
    eps: Tensor  # (A, 1, 1, 1)

    def select(self, rows: Tensor) -> Problem:
        values = (self.x, self.y, self.target, self.aim, self.eps)
        return Problem(*(None if v is None else v[rows] for v in values))


def merge(outcome: Outcome, todo: Tensor, again: Outcome) -> None:
    """Take the rows of a later run (on ``todo``) that fooled, or reached a higher loss."""
    keep = again[2] | (again[3] > outcome[3][todo])
    better = todo[keep]
    for mine, theirs in zip(outcome, again, strict=True):
        mine[better] = theirs[keep]


@dataclasses.dataclass
class _Ascent:
    """Per-sample state of the samples an APGD run is still working on (rows align)."""

    idx: Tensor  # (A,) positions in the caller's batch
    x: Tensor  # (A, C, H, W) clean images
    y: Tensor  # (A,) true labels
    target: Tensor | None  # (A,) the caller's target: success means predicting it
    aim: Tensor | None  # (A,) the class the loss pushes towards (APGD-T's own targets)
    eps: Tensor  # (A, 1, 1, 1)
    x_adv: Tensor  # current iterate
    x_prev: Tensor  # previous iterate (the momentum term)
    grad: Tensor
    pred: Tensor  # (A,) prediction at x_adv
    step: Tensor  # (A, 1, 1, 1) current step size
    loss: Tensor  # (A,) loss of the current iterate
    increases: Tensor  # (A,) steps in the current window where the loss rose
    best_loss: Tensor  # (A,)
    x_best: Tensor
    grad_best: Tensor
    best_pred: Tensor  # (A,) prediction at x_best
    loss_at_check: Tensor  # (A,) best loss at the last checkpoint
    reduced_at_check: Tensor  # (A,) bool: the step was halved at the last checkpoint

    def select(self, keep: Tensor) -> _Ascent:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _Ascent(**{k: None if v is None else v[keep] for k, v in values.items()})


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGD(BatchedAttack):
    """Auto-PGD in the Linf ball (Croce & Hein 2020), restarts on the samples still standing.

    Args:
        eps: Linf radius in [0, 1] pixel units.
        steps: iterations per restart (>= 1; AutoAttack uses 100).
        loss: 'ce' (APGD-CE), 'dlr' (APGD-DLR, needs >= 3 classes), 'margin' or 'mse'.
        restarts: runs from independent random starts; each later one only attacks the
            samples no earlier run fooled (per sample: a success, else the highest loss).
        rho: a sample's step is halved at a checkpoint when its loss rose in at most this
            fraction of the window's steps (0.75 in the paper).
        eot_samples: gradients averaged per step (EOT, for randomised models), >= 1.
    """

    name = "apgd"
    norm = "linf"

    eps: float = 8 / 255
    steps: int = 100
    loss: str = "ce"
    restarts: int = 1
    rho: float = 0.75
    eot_samples: int = 1

    def _validate(self) -> None:
        super()._validate()
        check_steps(self._field("steps"), self.steps)
        check_int(self._field("restarts"), self.restarts, 1)
        check_range(self._field("rho"), self.rho, 0.0, 1.0)
        check_int(self._field("eot_samples"), self.eot_samples, 1)

    # ------------------------------------------------------------------ what subclasses vary

    def _loss(self, logits: Tensor, y: Tensor, target: Tensor | None, aim: Tensor | None) -> Tensor:
        return objective(logits, y, target, self.loss)

    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = noise_like(x, generator)
        noise = noise.mul_(2).sub_(1)
        scale = flat_norm(noise, "linf").clamp_min(_TINY).view_as(eps[:, :1, :1, :1])
        return (x + eps * noise / scale).clamp_(0.0, 1.0)

    def _move(self, state: _Ascent, weight: float) -> Tensor:
        """The next iterate: projected step, mixed with the previous move, projected."""
        x, eps = state.x, state.eps
        lower, upper = x - eps, x + eps
        stepped = state.x_adv + state.step * state.grad.sign()
        stepped = torch.minimum(torch.maximum(stepped, lower), upper).clamp_(0.0, 1.0)
        mixed = _mix(state, stepped, weight)
        return torch.minimum(torch.maximum(mixed, lower), upper).clamp_(0.0, 1.0)

    # ------------------------------------------------------------------ the algorithm

    def _attack(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None, stop_on_success: bool
    ) -> tuple[Tensor, Tensor]:
        problem = Problem(batch.x, batch.y, batch.target, None, eps)
        return self._restart(batch.view, problem, generator, stop_on_success)[:2]

    def _restart(
        self, view: ModelView, problem: Problem, generator: torch.Generator | None, stop: bool
    ) -> Outcome:
        """``restarts`` runs; returns ``(x_adv, pred, fooled, loss)`` per sample."""
        outcome = self._ascend(view, problem, generator, stop)
        for _ in range(self.restarts - 1):
            todo = (~outcome[2]).nonzero().squeeze(1)
            if not todo.numel():
                break
            merge(outcome, todo, self._ascend(view, problem.select(todo), generator, stop))
        return outcome

    def _ascend(
        self, view: ModelView, problem: Problem, generator: torch.Generator | None, stop: bool
    ) -> Outcome:
        """One run from one random start; ``(x_adv, pred, fooled, loss)`` per sample.

        A fooled sample returns its fooling iterate (with ``stop``: the first, and it leaves
        the batch; else the last, as the reference), the others their highest-loss iterate.
        """
        x, y = problem.x, problem.y
        out, pred = torch.empty_like(x), torch.empty_like(y)
        fooled = torch.zeros_like(y, dtype=torch.bool)
        loss_out = torch.full(y.shape, math.inf, dtype=x.dtype, device=x.device)
        state = self._first_state(view, problem, generator)
        self._record(state, out, pred, fooled)
        window, since_check = max(int(0.22 * self.steps), 1), 0
        min_window, shrink = max(int(0.06 * self.steps), 1), max(int(0.03 * self.steps), 1)
        for i in range(self.steps):
            if stop:
                done = fooled[state.idx]
                if done.any():  # copying the state costs; only when someone leaves
                    state = state.select(~done)
                if not len(state.idx):
                    break
            with torch.no_grad():
                x_next = self._move(state, 1.0 if i == 0 else MOMENTUM)
                state.x_prev, state.x_adv = state.x_adv, x_next
            self._update(view, state)
            self._record(state, out, pred, fooled)
            since_check += 1
            if since_check == window:
                self._checkpoint(state, window)
                window, since_check = max(window - shrink, min_window), 0
        rest = ~fooled[state.idx]
        out[state.idx[rest]] = state.x_best[rest]
        pred[state.idx[rest]] = state.best_pred[rest]
        loss_out[state.idx[rest]] = state.best_loss[rest]
        return out, pred, fooled, loss_out

    def _first_state(
        self, view: ModelView, problem: Problem, generator: torch.Generator | None
    ) -> _Ascent:
        x, y, target, aim, eps = problem.x, problem.y, problem.target, problem.aim, problem.eps
        x_adv = self._start(x, eps, generator)
        grad, logits, loss = loss_gradient(
            view, x_adv, lambda z: self._loss(z, y, target, aim), self.eot_samples
        )
        return _Ascent(
            idx=torch.arange(x.shape[0], device=x.device),
            x=x,
            y=y,
            target=target,
            aim=aim,
            eps=eps,
            x_adv=x_adv,
            x_prev=x_adv.clone(),
            grad=grad,
            pred=logits.argmax(1),
            step=2.0 * eps,
            loss=torch.zeros_like(loss),  # as the reference: the first step compares with 0
            increases=torch.zeros_like(loss),
            best_loss=loss,
            x_best=x_adv.clone(),
            grad_best=grad.clone(),
            best_pred=logits.argmax(1),
            loss_at_check=loss.clone(),
            reduced_at_check=torch.ones_like(loss, dtype=torch.bool),
        )

    def _update(self, view: ModelView, state: _Ascent) -> None:
        """Gradient and loss at the new iterate; keep each sample's best point."""
        grad, logits, loss = loss_gradient(
            view,
            state.x_adv,
            lambda z: self._loss(z, state.y, state.target, state.aim),
            self.eot_samples,
        )
        state.increases += (loss > state.loss).to(loss.dtype)
        state.loss, state.grad, state.pred = loss, grad, logits.argmax(1)
        better = loss > state.best_loss
        state.x_best[better] = state.x_adv[better]
        state.grad_best[better] = grad[better]
        state.best_loss = torch.where(better, loss, state.best_loss)
        state.best_pred = torch.where(better, state.pred, state.best_pred)

    def _checkpoint(self, state: _Ascent, window: int) -> None:
        """Halve the step of oscillating or stalled samples and restart them from their best."""
        oscillating = state.increases <= window * self.rho
        stalled = ~state.reduced_at_check & (state.loss_at_check >= state.best_loss)
        reduce = oscillating | stalled
        state.reduced_at_check = reduce
        state.loss_at_check = state.best_loss.clone()
        state.increases.zero_()
        if reduce.any():
            state.step[reduce] /= 2
            state.x_adv[reduce] = state.x_best[reduce]
            state.grad[reduce] = state.grad_best[reduce]

    @staticmethod
    def _record(state: _Ascent, out: Tensor, pred: Tensor, fooled: Tensor) -> None:
        """Write the iterates that fool their sample into ``out`` (success: see is_success)."""
        hit = is_success(state.pred, state.y, state.target)
        if hit.any():
            where = state.idx[hit]
            out[where], pred[where] = state.x_adv[hit], state.pred[hit]
            fooled[where] = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class APGDL2(L2Ball, APGD):
    """Auto-PGD in the L2 ball; same settings as ``apgd``, ``eps`` an L2 radius (pixel units).

    The step is the gradient divided by its L2 norm; the random start is a Gaussian direction
    scaled to norm ``eps``.
    """

    name = "apgd-l2"

    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = noise_like(x, generator, gaussian=True)
        scale = flat_norm(noise, "l2").clamp_min(_TINY).view_as(eps[:, :1, :1, :1])
        return (x + eps * noise / scale).clamp_(0.0, 1.0)

    def _move(self, state: _Ascent, weight: float) -> Tensor:
        x, eps = state.x, state.eps
        shape = state.step.shape
        grad_norm = flat_norm(state.grad, "l2").view(shape) + _TINY
        stepped = _l2_project(state.x_adv + state.step * state.grad / grad_norm, x, eps)
        mixed = _mix(state, stepped, weight)
        return _l2_project(mixed, x, eps)


def _l2_project(x_adv: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """The reference's L2 projection (rescale to at most ``eps``, then clip to the box)."""
    delta = x_adv - x
    norms = flat_norm(delta, "l2").view_as(eps)
    return (x + delta / (norms + _TINY) * torch.minimum(eps, norms)).clamp_(0.0, 1.0)


def _mix(state: _Ascent, stepped: Tensor, weight: float) -> Tensor:
    """Momentum: ``weight`` of the projected step plus the rest of the previous move."""
    return (
        state.x_adv + (stepped - state.x_adv) * weight + (state.x_adv - state.x_prev) * (1 - weight)
    )
