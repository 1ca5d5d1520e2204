"""Iterative gradient attacks: I-FGSM (leaf study), PGD (Linf and L2), MI-FGSM.

All four share one loop (``IterativeAttack._run``): forward + input gradient, an in-place step,
an in-place projection onto the ball and the [0, 1] box. The loop allocates nothing per step
beyond the model's own forward/backward. With ``stop_on_success`` (sweeps that only want
success) each sample leaves the working batch at its first successful iterate, so samples
that are already fooled stop costing work.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from robustlab.attacks.base import (
    Attack,
    ModelView,
    SweepRunner,
    check_bool,
    check_int,
    check_steps,
    chunks,
    flat_norm,
    input_gradient,
    is_success,
    objective,
    quiet_default,
)
from robustlab.errors import check_range

_TINY = 1e-12  # guards divisions by a zero gradient norm


@dataclasses.dataclass
class _Work:
    """The samples an iterative run is still working on, with their per-sample state."""

    idx: Tensor  # (A,) positions in the caller's batch
    x: Tensor  # (A, C, H, W) clean images
    x_adv: Tensor  # (A, C, H, W) current iterate
    y: Tensor  # (A,)
    target: Tensor | None  # (A,)
    eps: Tensor  # (A, 1, 1, 1)
    alpha: Tensor  # (A, 1, 1, 1) step size
    lower: Tensor  # (A, C, H, W) box and Linf ball, intersected
    upper: Tensor
    count: Tensor  # (A,) steps taken so far
    momentum: Tensor | None = None  # MI-FGSM's accumulated gradient

    def __len__(self) -> int:
        return self.idx.shape[0]

    def _values(self) -> dict[str, Tensor | None]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def select(self, keep: Tensor) -> _Work:
        """The same work restricted to the samples where ``keep`` is true (new tensors)."""
        return _Work(**{name: None if v is None else v[keep] for name, v in self._values().items()})

    def extend(self, other: _Work) -> _Work:
        """This work followed by ``other`` (new tensors)."""
        theirs = other._values()
        return _Work(
            **{
                name: None if v is None else torch.cat([v, theirs[name]])  # type: ignore[list-item]
                for name, v in self._values().items()
            }
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class IterativeAttack(Attack):
    """Shared loop of the iterative attacks; subclasses choose start, step size and step."""

    eps: float = 8 / 255
    steps: int = 10
    loss: str = "ce"
    eot_samples: int = quiet_default(1)  # EOT: gradients averaged per step (randomised models)

    def _validate(self) -> None:
        super()._validate()
        check_steps(self._field("steps"), self.steps)
        check_int(self._field("eot_samples"), self.eot_samples, 1)

    def _alpha(self, eps: Tensor) -> Tensor:
        return eps / self.steps

    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        return x.clone()

    def _restarts(self) -> int:
        return 1

    def _step(self, work: _Work, grad: Tensor) -> None:
        """Signed-gradient step then projection, in place on ``work.x_adv``."""
        work.x_adv.addcmul_(grad.sign_(), work.alpha)
        torch.minimum(work.x_adv, work.upper, out=work.x_adv)
        torch.maximum(work.x_adv, work.lower, out=work.x_adv)

    def _perturb(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        eps: Tensor,
        generator: torch.Generator | None,
        stop_on_success: bool,
        window: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """See ``Attack._perturb``; ``window`` caps the working batch when stopping early."""
        best, pred = self._run(view, x, y, target, eps, generator, stop_on_success, window)
        if self._restarts() == 1:
            return best, pred
        if stop_on_success:  # later restarts only attack the samples still standing
            assert pred is not None
            for _ in range(self._restarts() - 1):
                todo = ~is_success(pred, y, target)
                if not todo.any():
                    break
                sub_t = None if target is None else target[todo]
                again, again_pred = self._run(
                    view, x[todo], y[todo], sub_t, eps[todo], generator, True, window
                )
                assert again_pred is not None
                best[todo], pred[todo] = again, again_pred
            return best, pred
        # keep, per sample, a successful run first, else the run with the highest objective
        score, pred = self._score(view, best, y, target)
        for _ in range(self._restarts() - 1):
            again, _ = self._run(view, x, y, target, eps, generator, False)
            again_score, again_pred = self._score(view, again, y, target)
            better = again_score > score
            best[better], score[better], pred[better] = (
                again[better],
                again_score[better],
                again_pred[better],
            )
        return best, pred

    def _sweep_runner(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        keep: bool,
        batch_size: int | None,
    ) -> SweepRunner:
        """A fresh seeded run per epsilon; streaming early stopping when nothing is kept."""

        def run(idx: Tensor, eps: float) -> tuple[Tensor, Tensor | None]:
            generator = self._generator(x.device)
            sub_x, sub_y = x[idx], y[idx]
            sub_t = None if target is None else target[idx]
            eps_t = self._eps_tensor(sub_x, eps)
            if not keep:
                return self._perturb(view, sub_x, sub_y, sub_t, eps_t, generator, True, batch_size)
            outs = [
                self._perturb(
                    view,
                    sub_x[part],
                    sub_y[part],
                    None if sub_t is None else sub_t[part],
                    eps_t[part],
                    generator,
                    False,
                )
                for part in chunks(sub_x.shape[0], batch_size)
            ]
            preds = [pred for _, pred in outs]
            known = all(pred is not None for pred in preds)
            return torch.cat([adv for adv, _ in outs]), torch.cat(preds) if known else None  # type: ignore[arg-type]

        return SweepRunner(run)

    @torch.no_grad()
    def _score(
        self, view: ModelView, x_adv: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Rank of an iterate: success first (+inf), else its objective."""
        logits = view(x_adv)
        pred = logits.argmax(1)
        score = objective(logits, y, target, self.loss)
        return score.masked_fill(is_success(pred, y, target), math.inf), pred

    def _new_work(
        self,
        idx: Tensor,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        eps: Tensor,
        generator: torch.Generator | None,
    ) -> _Work:
        """Fresh state for the samples ``idx`` (their starts drawn now, in order)."""
        return _Work(
            idx=idx,
            x=x,
            x_adv=self._start(x, eps, generator),
            y=y,
            target=target,
            eps=eps,
            alpha=self._alpha(eps),
            lower=(x - eps).clamp_(min=0.0),
            upper=(x + eps).clamp_(max=1.0),
            count=torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
            momentum=self._momentum(x),
        )

    def _run(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        eps: Tensor,
        generator: torch.Generator | None,
        stop_on_success: bool,
        window: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """One run from one start; returns ``(x_adv, pred or None)``."""
        if stop_on_success:
            return self._stream(view, x, y, target, eps, generator, window or x.shape[0])
        idx = torch.arange(x.shape[0], device=x.device)
        work = self._new_work(idx, x, y, target, eps, generator)
        for _ in range(self.steps):
            grad, _ = input_gradient(
                view, work.x_adv, work.y, work.target, self.loss, self.eot_samples
            )
            with torch.no_grad():
                self._step(work, grad)
        return work.x_adv, None

    def _stream(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        eps: Tensor,
        generator: torch.Generator | None,
        window: int,
    ) -> tuple[Tensor, Tensor]:
        """Early-stopping run: samples leave at their first successful iterate.

        At most ``window`` samples are worked on at once; a sample that succeeds (or has used
        all its steps and been checked) frees its slot for the next one in the queue, so the
        model keeps seeing full batches (small batches cost more per image on many backends).
        """
        total = x.shape[0]
        out = torch.empty_like(x)
        pred = torch.empty(total, dtype=torch.long, device=x.device)
        admitted = 0
        work: _Work | None = None
        while True:
            free = window - (0 if work is None else len(work))
            if free > 0 and admitted < total:
                new = torch.arange(admitted, min(total, admitted + free), device=x.device)
                admitted += new.shape[0]
                sub_t = None if target is None else target[new]
                fresh = self._new_work(new, x[new], y[new], sub_t, eps[new], generator)
                work = fresh if work is None else work.extend(fresh)
            if work is None or len(work) == 0:
                return out, pred
            # only the last check of samples out of steps needs no gradient; the rare robust
            # samples pay one backward pass for it, which keeps every batch full-sized
            grad, logits = input_gradient(
                view, work.x_adv, work.y, work.target, self.loss, self.eot_samples
            )
            step_pred = logits.argmax(1)
            finished = is_success(step_pred, work.y, work.target) | (work.count >= self.steps)
            if finished.any():  # adversarial (or out of steps): record it, free the slot
                out[work.idx[finished]] = work.x_adv[finished]
                pred[work.idx[finished]] = step_pred[finished]
                keep = ~finished
                work, grad = work.select(keep), grad[keep]
            if len(work):
                with torch.no_grad():
                    self._step(work, grad)
                work.count += 1

    def _momentum(self, x: Tensor) -> Tensor | None:
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class IFGSM(IterativeAttack):
    """Iterative FGSM exactly as in the leaf study (Kurakin et al. 2016, arXiv:1607.02533).

    ``steps`` (T) steps of ``alpha = eps / T`` along the gradient sign, clipping to [0, 1] after
    each; no random start. (The T steps can never leave the eps ball; the projection onto it
    only absorbs rounding.) The leaf study used ``loss='mse'`` (squared error between softmax
    output and one-hot label); the default here is cross-entropy.

    Args:
        eps: Linf radius in [0, 1] pixel units. steps: T >= 1. loss: 'ce', 'mse' or 'margin'.
    """

    name = "ifgsm"
    norm = "linf"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGD(IterativeAttack):
    """Projected gradient descent in the Linf ball, with random start and restarts.

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
    https://arxiv.org/abs/1706.06083.

    Args:
        eps: Linf radius in [0, 1] pixel units.
        steps: iterations per restart (>= 1).
        rel_stepsize: step size as a fraction of eps; ``None`` means ``2.5 / steps`` (Madry,
            foolbox), so a sweep needs no retuning.
        abs_stepsize: step size in pixel units; overrides ``rel_stepsize`` when set.
        random_start: start uniformly in the ball (clipped to the box).
        restarts: independent random starts; per sample the first successful run wins,
            otherwise the run with the highest loss.
        loss: 'ce', 'mse', 'margin' or 'dlr'.
        eot_samples: gradients averaged per step (EOT, for randomised models), >= 1.
    """

    name = "pgd"
    norm = "linf"

    rel_stepsize: float | None = None
    abs_stepsize: float | None = None
    random_start: bool = True
    restarts: int = 1

    def _validate(self) -> None:
        super()._validate()
        if self.rel_stepsize is not None:
            check_range(self._field("rel_stepsize"), self.rel_stepsize, 0.0, low_inclusive=False)
        if self.abs_stepsize is not None:
            check_range(self._field("abs_stepsize"), self.abs_stepsize, 0.0, low_inclusive=False)
        check_bool(self._field("random_start"), self.random_start)
        check_int(self._field("restarts"), self.restarts, 1)

    def _alpha(self, eps: Tensor) -> Tensor:
        if self.abs_stepsize is not None:
            return torch.full_like(eps, self.abs_stepsize)
        rel = 2.5 / self.steps if self.rel_stepsize is None else self.rel_stepsize
        return eps * rel

    def _restarts(self) -> int:
        return self.restarts

    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.random_start:
            return x.clone()
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return noise.mul_(2).sub_(1).mul_(eps).add_(x).clamp_(0.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGDL2(PGD):
    """PGD in the L2 ball: normalised-gradient steps, projection by rescaling the perturbation.

    Same settings as ``pgd``; ``eps`` is an L2 radius in pixel units and may exceed 1 (the
    L2 diameter of a ``(C, H, W)`` image is ``sqrt(C*H*W)``; common radii: 0.5 on 32 px,
    3.0 on 224 px). The random start is uniform in the L2 ball.
    """

    name = "pgd-l2"
    norm = "l2"
    eps_high = math.inf

    eps: float = 0.5

    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.random_start:
            return x.clone()
        # uniform in the ball: gaussian direction, radius eps * u^(1/d)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        dims = x[0].numel()
        radius = torch.rand(
            (x.shape[0],) + (1,) * (x.ndim - 1), generator=generator, device=x.device, dtype=x.dtype
        ).pow_(1.0 / dims)
        scale = eps * radius / flat_norm(direction, "l2").clamp_min(_TINY).view_as(radius)
        return direction.mul_(scale).add_(x).clamp_(0.0, 1.0)

    def _step(self, work: _Work, grad: Tensor) -> None:
        shape = (-1,) + (1,) * (grad.ndim - 1)
        grad_norm = flat_norm(grad, "l2").clamp_min(_TINY).view(shape)
        work.x_adv.addcmul_(grad, work.alpha / grad_norm)
        delta = work.x_adv.sub_(work.x)  # in place: x_adv now holds the perturbation
        factor = torch.clamp(
            work.eps / flat_norm(delta, "l2").clamp_min(_TINY).view(shape), max=1.0
        )
        delta.mul_(factor).add_(work.x).clamp_(0.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MIFGSM(IterativeAttack):
    """Momentum iterative FGSM, the usual strong transfer (black-box) attack.

    Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018,
    https://arxiv.org/abs/1710.06081. Each gradient is divided by its mean absolute value,
    accumulated as ``g = decay * g + grad``, and a step of ``alpha = eps / steps`` is taken
    along ``sign(g)``; no random start.

    Args:
        eps: Linf radius in [0, 1] pixel units. steps: >= 1. decay: momentum factor (>= 0).
        loss: 'ce', 'mse' or 'margin'.
    """

    name = "mifgsm"
    norm = "linf"

    decay: float = 1.0

    def _validate(self) -> None:
        super()._validate()
        check_range(self._field("decay"), self.decay, 0.0)

    def _momentum(self, x: Tensor) -> Tensor | None:
        return torch.zeros_like(x)

    def _step(self, work: _Work, grad: Tensor) -> None:
        assert work.momentum is not None
        scale = grad.abs().mean(dim=tuple(range(1, grad.ndim)), keepdim=True).clamp_min_(_TINY)
        work.momentum.mul_(self.decay).add_(grad.div_(scale))
        super()._step(work, grad.copy_(work.momentum))  # reuse grad's buffer for sign_()
