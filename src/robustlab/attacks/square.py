"""Square Attack: score-based random search with square-shaped updates (Linf).

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020, https://arxiv.org/abs/1912.00049.
Threat model: black-box (scores only: it never takes a gradient, so no gradient masking can
fool it), Linf ball of radius ``eps`` in [0, 1] pixel units, untargeted or targeted, at most
``queries`` model evaluations per image.

Start: vertical stripes of +-eps (one random sign per column and channel). Each query: for
every image still standing, a random square window (its side shrinks on a fixed schedule from
``sqrt(p_init)`` of the image side) is set to +-eps per channel around the clean image; the
candidate is kept when it lowers the margin loss (or already fools the model). Images leave
as soon as they are fooled.
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
    check_choice,
    check_steps,
    flat_norm,
    is_success,
    objective,
)
from robustlab.attacks.batched import BatchedAttack
from robustlab.errors import check_range

SQUARE_LOSSES = ("margin", "ce")
# the paper's schedule: p halves at these iterations (of a 10000-query budget, rescaled)
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, budget: int) -> float:
    """Fraction of the image a square covers at ``query`` (of ``budget``), as in the paper."""
    step = int(query / budget * 10000)
    return p_init / 2 ** sum(step > mark for mark in _HALVINGS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Square(BatchedAttack):
    """Square Attack, Linf (Andriushchenko et al. 2020); gradient-free, per-image squares.

    Args:
        eps: Linf radius in [0, 1] pixel units.
        queries: model evaluations per image (>= 1; AutoAttack: 5000), the first being the
            stripe initialisation.
        p_init: initial fraction of the image's pixels a square covers (0, 1]; 0.8 in AutoAttack.
        loss: 'margin' (logit of the label minus the best other: the paper's) or 'ce'.
    """

    name = "square"
    norm = "linf"

    eps: float = 8 / 255
    queries: int = 5000
    p_init: float = 0.8
    loss: str = "margin"

    def _validate(self) -> None:
        check_choice(self._field("loss"), self.loss, SQUARE_LOSSES)
        super()._validate()
        check_steps(self._field("queries"), self.queries)
        check_range(self._field("p_init"), self.p_init, 0.0, 1.0, low_inclusive=False)

    def _score(
        self, view: ModelView, x_adv: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(loss to minimise, pred)`` per sample: one query."""
        logits = view(x_adv)
        return -objective(logits, y, target, self.loss), logits.argmax(1)

    def _square(
        self, x: Tensor, eps: Tensor, fraction: float, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """One random square per image: ``(mask (A, 1, H, W), value (A, C, 1, 1))``."""
        batch, channels, height, width = x.shape
        side = round(math.sqrt(fraction * height * width))
        side = min(max(side, 1), max(min(height, width) - 1, 1))
        kwargs = {"generator": generator, "device": x.device}
        top = torch.randint(0, height - side + 1, (batch, 1), **kwargs)
        left = torch.randint(0, width - side + 1, (batch, 1), **kwargs)
        rows = torch.arange(height, device=x.device)[None]
        cols = torch.arange(width, device=x.device)[None]
        inside_rows = (rows >= top) & (rows < top + side)  # (A, H)
        inside_cols = (cols >= left) & (cols < left + side)  # (A, W)
        mask = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
        signs = _random_signs((batch, channels, 1, 1), x, generator)
        return mask, signs * eps

    def _attack(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None, stop_on_success: bool
    ) -> tuple[Tensor, Tensor]:
        view, x, y, target = batch.view, batch.x, batch.y, batch.target
        with torch.no_grad():
            search = _Search(self, view, x, y, target, eps, self._first(x, eps, generator))
            for query in range(1, self.queries):
                if not search.narrow():
                    break
                self._query(search, square_fraction(self.p_init, query, self.queries), generator)
        return search.best, search.pred

    def _first(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        """The start: vertical stripes of +-eps, one sign per column and channel."""
        stripes = _random_signs((x.shape[0], x.shape[1], 1, x.shape[3]), x, generator)
        return (x + eps * stripes).clamp_(0.0, 1.0)

    def _query(self, search: _Search, fraction: float, generator: torch.Generator | None) -> None:
        """One query per standing image: its best point with one square set to x +- eps."""
        mask, value = self._square(search.x, search.eps, fraction, generator)
        current = search.best[search.todo]
        candidate = torch.where(mask, (search.x + value).clamp_(0.0, 1.0), current)
        search.offer(candidate, (candidate != current).flatten(1).any(1))


class _Search:
    """The random search's per-sample state: the best point, its loss, the still-robust rows.

    ``narrow`` drops the fooled samples (refreshing the sub-batch only when the set changed);
    ``offer`` queries the candidates of those rows and keeps the improving or fooling ones.
    """

    def __init__(
        self,
        attack: Square,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        eps: Tensor,
        start: Tensor,
    ) -> None:
        self.attack, self.view = attack, view
        self.x_all, self.y_all, self.target_all, self.eps_all = x, y, target, eps
        self.best = start
        self.best_loss, self.pred = attack._score(view, start, y, target)
        self.todo = torch.empty(0, dtype=torch.long, device=x.device)

    def narrow(self) -> bool:
        """Restrict to the samples not fooled yet; False when none is left."""
        standing = (~is_success(self.pred, self.y_all, self.target_all)).nonzero().squeeze(1)
        if standing.shape != self.todo.shape:  # the set only shrinks: refresh on change
            self.todo = standing
            self.x, self.y, self.eps = (v[standing] for v in (self.x_all, self.y_all, self.eps_all))
            self.target = None if self.target_all is None else self.target_all[standing]
        return bool(standing.numel())

    def offer(self, candidate: Tensor, changed: Tensor | None) -> None:
        """Query ``candidate`` (rows of ``todo``); rows not ``changed`` skip their query.

        A candidate equal to the best point has the best loss (a deterministic model), so it
        could never be kept: skipping its forward pass changes no result, only saves time.
        """
        rows = self.todo if changed is None else self.todo[changed]
        if changed is not None:
            candidate = candidate[changed]
        if not rows.numel():
            return
        y = self.y_all[rows]
        target = None if self.target_all is None else self.target_all[rows]
        loss, new_pred = self.attack._score(self.view, candidate, y, target)
        keep = (loss < self.best_loss[rows]) | is_success(new_pred, y, target)
        chosen = rows[keep]
        self.best[chosen], self.best_loss[chosen] = candidate[keep], loss[keep]
        self.pred[chosen] = new_pred[keep]


def _random_signs(
    shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Uniform +-1 of ``shape``, in ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return bits.to(like.dtype).mul_(2).sub_(1)


def _rectangles(rows: int, cols: int, like: Tensor) -> Tensor:
    """Nested rectangles of weight 1/(k+1)^2 around the centre, unit L2 norm ``(rows, cols)``."""
    delta = like.new_zeros(rows, cols)
    top, left = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        delta[
            max(top - k, 0) : min(top - k + 2 * k + 1, rows),
            max(left - k, 0) : min(left - k + 2 * k + 1, cols),
        ] += 1.0 / (k + 1) ** 2
    return delta / delta.square().sum().sqrt()


def _pseudo_gaussian(side: int, like: Tensor, transpose: bool) -> Tensor:
    """The paper's L2 window update: + rectangles on one half, - on the other, unit norm."""
    delta = like.new_zeros(side, side)
    delta[: side // 2] = _rectangles(side // 2, side, like)
    delta[side // 2 :] = -_rectangles(side - side // 2, side, like)
    delta = delta / delta.square().sum().sqrt()
    return delta.t() if transpose else delta


@dataclasses.dataclass(frozen=True, kw_only=True)
class SquareL2(L2Ball, Square):
    """Square Attack, L2 (Andriushchenko et al. 2020, Algorithm 3); same settings as ``square``.

    ``eps`` is an L2 radius in pixel units. The start is a grid of pseudo-Gaussian squares
    scaled to norm ``eps``; each query moves the mass of one random square window into
    another (one window pair per query for the whole batch, as in AutoAttack's reference),
    keeping the perturbation on the sphere of radius ``eps``.
    """

    name = "square-l2"

    def _first(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        """The start: a grid of pseudo-Gaussian squares, random signs, on the eps sphere."""
        batch, channels, height, width = x.shape
        side = max(min(height, width) // 5, 1)
        start = x.new_zeros(x.shape)
        for top in range(0, height - side + 1, side):
            for left in range(0, width - side + 1, side):
                signs = _random_signs((batch, channels, 1, 1), x, generator)
                start[:, :, top : top + side, left : left + side] += (
                    _pseudo_gaussian(side, x, False) * signs
                )
        return _on_sphere(x, start, eps)

    def _query(self, search: _Search, fraction: float, generator: torch.Generator | None) -> None:
        height, width = search.x.shape[2:]
        size = max(round(math.sqrt(fraction * height * width)), 3)
        size = min(size + (size % 2 == 0), min(height, width))
        current = search.best[search.todo]
        candidate = self._move_mass(search.x, current - search.x, search.eps, size, generator)
        search.offer(candidate, None)

    def _move_mass(
        self, x: Tensor, delta: Tensor, eps: Tensor, size: int, generator: torch.Generator | None
    ) -> Tensor:
        """One candidate per image: window 1 gets a new pseudo-Gaussian square, window 2 is emptied."""
        height, width = x.shape[2:]
        kwargs = {"generator": generator, "device": x.device}
        top, left, top2, left2 = (
            int(v) for v in torch.randint(0, max(min(height, width) - size + 1, 1), (4,), **kwargs)
        )
        first = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
        second = (slice(None), slice(None), slice(top2, top2 + size), slice(left2, left2 + size))
        mask = torch.zeros_like(x[:1, :1])
        mask[first], mask[second] = 1.0, 1.0
        image_norm = flat_norm(delta, "l2").view(-1, 1, 1, 1)
        windows_norm = flat_norm(delta * mask, "l2").view(-1, 1, 1, 1)
        old = delta[first]
        old_norm = old.square().sum((-2, -1), keepdim=True).sqrt()
        transpose = bool(torch.randint(0, 2, (1,), **kwargs))
        signs = _random_signs((x.shape[0], x.shape[1], 1, 1), x, generator)
        new = _pseudo_gaussian(size, x, transpose) * signs + old / (old_norm + 1e-12)
        budget = (
            (eps.square() - image_norm.square()).clamp_min(0) / x.shape[1] + windows_norm.square()
        ).sqrt()
        new = new / new.square().sum((-2, -1), keepdim=True).sqrt().clamp_min(1e-12) * budget
        delta = delta.clone()
        delta[second] = 0.0
        delta[first] = new
        return _on_sphere(x, delta, eps)


def _on_sphere(x: Tensor, delta: Tensor, eps: Tensor) -> Tensor:
    """``x`` plus ``delta`` rescaled to L2 norm ``eps``, clipped to the box."""
    norms = flat_norm(delta, "l2").view(-1, 1, 1, 1).clamp_min(1e-12)
    return (x + delta * eps / norms).clamp_(0.0, 1.0)
