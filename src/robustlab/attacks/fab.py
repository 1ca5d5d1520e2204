"""FAB: the Fast Adaptive Boundary attack, Linf, a minimum-norm attack (targeted or not).

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020, https://arxiv.org/abs/1907.02044; targeted version as in AutoAttack
(https://arxiv.org/abs/2003.01690). Threat model: white-box, Linf, minimum norm: it looks for
each sample's smallest adversarial perturbation (reported as ``min_eps``), not for any
adversarial inside a fixed ball; success is any misclassification.

Each step linearises the decision boundary between the label and the target class, projects
both the current iterate and the clean image onto that hyperplane (the smallest Linf move
inside the [0, 1] box), and takes a convex combination biased towards the clean image
(``alpha <= alpha_max``) with overshoot ``eta``. An iterate that fools the model is recorded
when smaller than the best so far and pulled back towards the clean image by ``beta``.
Untargeted (``targeted=False``, the paper's original), each step picks the class whose
linearised boundary is closest instead of a fixed target.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from robustlab.attacks.base import (
    Batch,
    MinimumNormAttack,
    ModelView,
    check_int,
    check_steps,
    flat_norm,
    is_success,
    noise_like,
)
from robustlab.attacks.batched import loss_gradient
from robustlab.errors import UserError, check_range

_FLOOR = 1e-8  # smallest projection norm used in the step's convex weight


def linf_hyperplane_projection(points: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Smallest Linf move ``d`` ``(B, D)`` of each point ``t`` with ``w.(t + d) = b``, in the box.

    ``points``, ``w``: ``(B, D)``; ``b``: ``(B,)``. Every coordinate moves by the same amount
    ``lambda`` towards the hyperplane (``sign(w)`` times the side it must reach) unless the
    [0, 1] box stops it first; ``lambda`` solves the piecewise-linear equation exactly (sort
    the box distances, cumulative sums, one ``searchsorted``). When even the box corner does
    not reach the hyperplane, the move goes to that corner.
    """
    gap = b - (w * points).sum(1)  # (B,) how much w.t must change
    direction = torch.sign(w) * torch.sign(gap)[:, None]
    room = torch.where(direction > 0, 1 - points, points)  # distance to the box along it
    weight = w.abs() * (direction != 0)
    room_sorted, order = room.sort(dim=1)
    weight_sorted = weight.gather(1, order)
    covered = torch.cumsum(weight_sorted * room_sorted, dim=1)  # coordinates already capped
    passed = torch.cumsum(weight_sorted, dim=1)
    total = passed[:, -1:]
    reach = covered + room_sorted * (total - passed)  # w.d when lambda = room_sorted[k]
    need = gap.abs()[:, None]
    k = torch.searchsorted(reach.contiguous(), need.contiguous())  # (B, 1) first reach >= need
    inside = k < points.shape[1]
    before = (k - 1).clamp_min(0)
    covered_before = torch.where(k > 0, covered.gather(1, before), torch.zeros_like(need))
    passed_before = torch.where(k > 0, passed.gather(1, before), torch.zeros_like(need))
    lam = (need - covered_before) / (total - passed_before).clamp_min(1e-12)
    lam = torch.where(inside, lam, torch.full_like(lam, math.inf))
    return direction * torch.minimum(lam, room)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FAB(MinimumNormAttack):
    """FAB, Linf: targeted (AutoAttack's FAB-T) over the top-k classes after the prediction,
    or untargeted (AutoAttack's FAB).

    With a given ``target`` only that class is aimed at and success means predicting it.

    Args:
        eps: Linf radius in [0, 1] pixel units: ``__call__`` projects onto it, and later
            targets and restarts only attack samples whose smallest adversarial is larger.
        steps: iterations per target and restart (AutoAttack: 100).
        top_k: target classes tried (AutoAttack: 9); at most classes - 1.
        restarts: runs per target; the first starts at the clean image, later ones at a
            random point at half the best norm (or ``eps``) found so far.
        alpha_max: largest weight of the clean image's projection in a step, in [0, 1].
        eta: overshoot of the projection (>= 1). beta: pull-back towards the clean image
            after a success, in [0, 1].
        targeted: True (FAB-T) aims at the top-k classes in turn; False (AutoAttack's
            untargeted FAB, in its ``plus`` version) aims each step at the class whose
            linearised boundary is closest, and ignores ``top_k``.
    """

    name = "fab"
    norm = "linf"

    eps: float = 8 / 255
    steps: int = 100
    top_k: int = 9
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    targeted: bool = True

    def _validate(self) -> None:
        super()._validate()
        check_steps(self._field("steps"), self.steps)
        check_int(self._field("top_k"), self.top_k, 1)
        check_int(self._field("restarts"), self.restarts, 1)
        check_range(self._field("alpha_max"), self.alpha_max, 0.0, 1.0)
        check_range(self._field("eta"), self.eta, 1.0)
        check_range(self._field("beta"), self.beta, 0.0, 1.0)

    def check_classes(self, classes: int) -> None:
        """Refuse models this attack cannot apply to (before any step is taken)."""
        if self.targeted and self.top_k > classes - 1:
            raise UserError(
                f"{self._field('top_k')} must be <= {classes - 1} (the other classes of this "
                f"model), got {self.top_k}"
            )

    def _find(self, batch: Batch, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        view, x, y, target = batch.view, batch.x, batch.y, batch.target
        best = x.clone()
        best_norm = torch.full(y.shape, math.inf, dtype=x.dtype, device=x.device)
        for aim in self._aims(view, x, target):
            for restart in range(self.restarts):
                todo = (best_norm > self.eps).nonzero().squeeze(1)
                if not todo.numel():
                    return best, best_norm
                sub_t = None if target is None else target[todo]
                start = None
                if restart > 0:
                    radius = best_norm[todo].clamp(max=self.eps)
                    start = _random_start(x[todo], radius, generator)
                sub_aim = None if aim is None else aim[todo]
                found, norms = self._run(view, x[todo], y[todo], sub_t, sub_aim, start)
                better = norms < best_norm[todo]
                best[todo[better]], best_norm[todo[better]] = found[better], norms[better]
        return best, best_norm

    def _aims(self, view: ModelView, x: Tensor, target: Tensor | None) -> list[Tensor | None]:
        """The target classes in turn: the caller's, the top-k runners-up, or none (untargeted)."""
        if target is not None:
            return [target]
        with torch.no_grad():
            clean = view(x)  # checks the labels against the model first
        self.check_classes(clean.shape[1])
        if not self.targeted:
            return [None]
        ranked = clean.argsort(dim=1, descending=True)
        return [ranked[:, rank] for rank in range(1, self.top_k + 1)]

    def _run(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        aim: Tensor | None,
        start: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One FAB run (towards ``aim``, else the closest boundary each step);
        ``(smallest adversarial, its Linf norm or inf)``."""
        batch = x.shape[0]
        x_flat = x.flatten(1)
        x_cur = x.clone() if start is None else start
        best = x.clone()
        best_norm = torch.full((batch,), math.inf, dtype=x.dtype, device=x.device)
        shape = (batch,) + (1,) * (x.ndim - 1)
        for _ in range(self.steps):
            w, diff = _linearised_boundary(view, x_cur, y, aim)
            with torch.no_grad():
                b = -diff + (w * x_cur.flatten(1)).sum(1)
                moves = linf_hyperplane_projection(
                    torch.cat((x_cur.flatten(1), x_flat)), w.repeat(2, 1), b.repeat(2)
                )
                to_current, to_clean = moves[:batch].view_as(x), moves[batch:].view_as(x)
                size = flat_norm(moves, "linf").clamp_min(_FLOOR).view(2 * batch, *shape[1:])
                alpha = (size[:batch] / (size[:batch] + size[batch:])).clamp(0.0, self.alpha_max)
                x_cur = (
                    (x_cur + self.eta * to_current) * (1 - alpha)
                    + (x + self.eta * to_clean) * alpha
                ).clamp_(0.0, 1.0)
                fooled = is_success(view(x_cur).argmax(1), y, target)
                norms = flat_norm(x_cur - x, "linf")
                better = fooled & (norms < best_norm)
                best[better], best_norm[better] = x_cur[better], norms[better]
                x_cur[fooled] = x[fooled] + (x_cur[fooled] - x[fooled]) * self.beta
        return best, best_norm


def _linearised_boundary(
    view: ModelView, x_cur: Tensor, y: Tensor, aim: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(w (B, D), diff (B,))``: gradient and value of ``z_aim - z_y`` at ``x_cur``.

    Without ``aim`` (untargeted FAB) the class is, per sample, the one whose linearised
    boundary is closest in Linf: smallest ``|z_k - z_y| / ||grad(z_k - z_y)||_1`` (the dual
    norm), which needs the whole Jacobian: one backward pass per class.
    """
    if aim is not None:

        def boundary(logits: Tensor) -> Tensor:  # > 0 once the aim beats the label
            return (logits.gather(1, aim[:, None]) - logits.gather(1, y[:, None])).squeeze(1)

        grad, _, diff = loss_gradient(view, x_cur, boundary)
        return grad.flatten(1), diff
    leaf = x_cur.detach().requires_grad_(True)
    logits = view(leaf)
    classes = logits.shape[1]
    jacobian = torch.stack(
        [
            torch.autograd.grad(logits[:, k].sum(), leaf, retain_graph=k < classes - 1)[0]
            for k in range(classes)
        ],
        dim=1,
    ).flatten(2)  # (B, K, D)
    rows = torch.arange(len(y), device=y.device)
    logits = logits.detach()
    diffs = logits - logits[rows, y][:, None]  # (B, K)
    slopes = jacobian - jacobian[rows, y][:, None]
    distance = diffs.abs() / (slopes.abs().sum(2) + 1e-12)
    distance[rows, y] = math.inf  # the label's own "boundary" is no boundary
    closest = distance.argmin(1)
    return slopes[rows, closest], diffs[rows, closest]


def _random_start(x: Tensor, radius: Tensor, generator: torch.Generator | None) -> Tensor:
    """A random point at Linf distance ``radius / 2`` (per sample) around ``x``, in the box."""
    noise = noise_like(x, generator).mul_(2).sub_(1)
    scale = flat_norm(noise, "linf").clamp_min(1e-12)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x + (radius / scale).view(shape) * noise / 2).clamp_(0.0, 1.0)
