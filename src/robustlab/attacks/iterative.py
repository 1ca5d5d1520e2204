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
    LOSSES,
    Attack,
    Batch,
    L2Ball,
    ModelView,
    SweepRunner,
    check_bool,
    check_int,
    check_steps,
    flat_norm,
    input_gradient,
    is_success,
    join_parts,
    noise_like,
    objective,
    quiet_default,
)
from robustlab.errors import UserError, check_range

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
    count: Tensor  # (A,) steps taken so far
    momentum: Tensor | None = None  # MI-FGSM's accumulated gradient
    reference: Tensor | None = None  # (A, K) clean prediction, for loss 'kl' (TRADES)

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
    """Shared loop of the iterative attacks; subclasses choose start, step size and step.

    ``loss='kl'`` (besides the losses of every attack) ascends the KL divergence from the
    model's clean prediction, TRADES' inner maximisation; it is untargeted.
    """

    losses = (*LOSSES, "kl")

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
        """Signed-gradient step then projection, in place on ``work.x_adv``; overwrites ``grad``.

        The bounds (the Linf ball and the box, intersected) are computed here, in the spent
        gradient's buffer, instead of being kept per sample: two window-sized tensors fewer
        alive during every backward pass (0.08 GB at 224 px, batch 64), the same values.
        """
        work.x_adv.addcmul_(grad.sign_(), work.alpha)
        bound = torch.add(work.x, work.eps, out=grad).clamp_(max=1.0)  # upper
        torch.minimum(work.x_adv, bound, out=work.x_adv)
        torch.sub(work.x, work.eps, out=bound).clamp_(min=0.0)  # lower
        torch.maximum(work.x_adv, bound, out=work.x_adv)

    def _attack(
        self,
        batch: Batch,
        eps: Tensor,
        generator: torch.Generator | None,
        stop_on_success: bool,
        window: int | None = None,
        rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """See ``Attack._perturb``; ``window`` caps the working batch when stopping early, and
        ``rows`` (early stopping only) picks the samples of ``batch`` to attack, one per eps."""
        if self.loss == "kl" and batch.target is not None:
            raise UserError(f"{self._field('loss')} 'kl' is untargeted; give no target class")
        if stop_on_success:
            if rows is None:
                rows = torch.arange(batch.x.shape[0], device=batch.x.device)
            return self._restarts_early(batch, eps, generator, window or len(rows), rows)
        best, _ = self._run(batch, eps, generator)
        if self._restarts() == 1:
            return best, None
        # keep, per sample, a successful run first, else the run with the highest objective
        reference = self._reference(batch.view, batch.x)
        score, pred = self._score(batch, best, reference)
        for _ in range(self._restarts() - 1):
            again, _ = self._run(batch, eps, generator)
            again_score, again_pred = self._score(batch, again, reference)
            better = again_score > score
            best[better], score[better], pred[better] = (
                again[better],
                again_score[better],
                again_pred[better],
            )
        return best, pred

    def _restarts_early(
        self,
        batch: Batch,
        eps: Tensor,
        generator: torch.Generator | None,
        window: int,
        rows: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Early-stopping runs on ``batch``'s samples ``rows``; later restarts only attack
        the samples still standing."""
        best, pred = self._stream(batch, eps, generator, window, rows)
        target = None if batch.target is None else batch.target[rows]
        for _ in range(self._restarts() - 1):
            todo = ~is_success(pred, batch.y[rows], target)
            if not todo.any():
                break
            best[todo], pred[todo] = self._stream(batch, eps[todo], generator, window, rows[todo])
        return best, pred

    def _runner(self, batch: Batch, keep: bool, batch_size: int | None) -> SweepRunner:
        """A fresh seeded run per epsilon; streaming early stopping when nothing is kept."""

        def run(idx: Tensor, eps: float) -> tuple[Tensor, Tensor | None]:
            generator = self._generator(batch.x.device)
            if not keep:  # the windows read the samples idx of the batch: no copy of them all
                eps_rows = self._eps_tensor(batch.x, eps)[idx]
                return self._attack(batch, eps_rows, generator, True, batch_size, rows=idx)
            outs = [
                self._attack(part, self._eps_tensor(part.x, eps), generator, False, batch_size)
                for part in batch.part(idx).parts(batch_size)
            ]
            return join_parts([adv for adv, _ in outs], [pred for _, pred in outs])

        return SweepRunner(run)

    @torch.no_grad()
    def _score(
        self, batch: Batch, x_adv: Tensor, reference: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Rank of an iterate: success first (+inf), else its objective."""
        logits = batch.view(x_adv)
        pred = logits.argmax(1)
        score = objective(logits, batch.y, batch.target, self.loss, reference)
        return score.masked_fill(is_success(pred, batch.y, batch.target), math.inf), pred

    @torch.no_grad()
    def _reference(self, view: ModelView, x: Tensor) -> Tensor | None:
        """The clean prediction ``(B, K)`` that loss 'kl' moves away from (else ``None``)."""
        return view(x).softmax(1) if self.loss == "kl" else None

    def _new_work(
        self, batch: Batch, idx: Tensor, eps: Tensor, generator: torch.Generator | None
    ) -> _Work:
        """Fresh state for the samples ``batch`` at positions ``idx`` (starts drawn now)."""
        x = batch.x
        reference = self._reference(batch.view, x)  # before the start: TRADES' order of draws
        return _Work(
            idx=idx,
            x=x,
            x_adv=self._start(x, eps, generator),
            y=batch.y,
            target=batch.target,
            eps=eps,
            alpha=self._alpha(eps),
            count=torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
            momentum=self._momentum(x),
            reference=reference,
        )

    def _gradient(self, view: ModelView, work: _Work) -> tuple[Tensor, Tensor]:
        """Input gradient of the loss at ``work.x_adv`` and the logits there."""
        return input_gradient(
            view, work.x_adv, work.y, work.target, self.loss, self.eot_samples, work.reference
        )

    def _run(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, None]:
        """One run of every step from one start; returns ``(x_adv, None)``."""
        idx = torch.arange(batch.x.shape[0], device=batch.x.device)
        work = self._new_work(batch, idx, eps, generator)
        for _ in range(self.steps):
            grad, _ = self._gradient(batch.view, work)
            with torch.no_grad():
                self._step(work, grad)
        return work.x_adv, None

    def _stream(
        self,
        batch: Batch,
        eps: Tensor,
        generator: torch.Generator | None,
        window: int,
        rows: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Early-stopping run on ``batch``'s samples ``rows``: they leave at their first
        successful iterate; returns their adversarials and predictions, in ``rows`` order.

        At most ``window`` samples are worked on at once; a sample that succeeds (or has used
        all its steps and been checked) frees its slot for the next one in the queue, so the
        model keeps seeing full batches (small batches cost more per image on many backends).
        A sample is read from ``batch`` when admitted, so the rows are never copied at once.
        """
        x = batch.x
        total = rows.shape[0]
        out = x.new_empty((total, *x.shape[1:]))
        pred = torch.empty(total, dtype=torch.long, device=x.device)
        admitted = 0
        work: _Work | None = None
        while True:
            free = window - (0 if work is None else len(work))
            if free > 0 and admitted < total:
                new = torch.arange(admitted, min(total, admitted + free), device=x.device)
                admitted += new.shape[0]
                fresh = self._new_work(batch.part(rows[new]), new, eps[new], generator)
                work = fresh if work is None else work.extend(fresh)
            if work is None or len(work) == 0:
                return out, pred
            # only the last check of samples out of steps needs no gradient; the rare robust
            # samples pay one backward pass for it, which keeps every batch full-sized
            grad, logits = self._gradient(batch.view, work)
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
        loss: 'ce', 'mse', 'margin', 'dlr' or 'kl' (TRADES: away from the clean prediction).
        eot_samples: gradients averaged per step (EOT, for randomised models), >= 1.
        start_sigma: when set, the random start is ``x + start_sigma * N(0, 1)`` (TRADES:
            0.001) instead of uniform in the ball.
    """

    name = "pgd"
    norm = "linf"

    rel_stepsize: float | None = None
    abs_stepsize: float | None = None
    random_start: bool = True
    restarts: int = 1
    start_sigma: float | None = quiet_default(None)

    def _validate(self) -> None:
        super()._validate()
        if self.rel_stepsize is not None:
            check_range(self._field("rel_stepsize"), self.rel_stepsize, 0.0, low_inclusive=False)
        if self.abs_stepsize is not None:
            check_range(self._field("abs_stepsize"), self.abs_stepsize, 0.0, low_inclusive=False)
        check_bool(self._field("random_start"), self.random_start)
        check_int(self._field("restarts"), self.restarts, 1)
        if self.start_sigma is not None:
            check_range(self._field("start_sigma"), self.start_sigma, 0.0)

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
        if self.start_sigma is not None:
            noise = noise_like(x, generator, gaussian=True)
            return noise.mul_(self.start_sigma).add_(x).clamp_(0.0, 1.0)
        return self._uniform_start(x, eps, generator)

    def _uniform_start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        """A start drawn uniformly from the ball (clipped to the box)."""
        noise = noise_like(x, generator)
        return noise.mul_(2).sub_(1).mul_(eps).add_(x).clamp_(0.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGDL2(L2Ball, PGD):
    """PGD in the L2 ball: normalised-gradient steps, projection by rescaling the perturbation.

    Same settings as ``pgd``; ``eps`` is an L2 radius in pixel units and may exceed 1 (the
    L2 diameter of a ``(C, H, W)`` image is ``sqrt(C*H*W)``; common radii: 0.5 on 32 px,
    3.0 on 224 px). The random start is uniform in the L2 ball.
    """

    name = "pgd-l2"

    def _uniform_start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        # uniform in the ball: gaussian direction, radius eps * u^(1/d)
        direction = noise_like(x, generator, gaussian=True)
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
