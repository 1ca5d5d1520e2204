"""Epsilon sweeps: adversarials and per-sample success for a list of epsilons in one call.

Semantics (``worst_case=True``, the default): a sample's robustness at ``eps_k`` is the worst
case over every ball of radius ``<= eps_k``, the clean image (eps = 0) included. Epsilons are
processed in ascending order; a sample fooled at a smaller epsilon is not attacked again, and
its adversarial (which lies inside every larger ball) is carried to the larger epsilons. This
is the usual way to report robust accuracy (foolbox, AutoAttack) and makes the curve
non-increasing even for attacks that are not monotone in eps by construction (FGSM can
overshoot, PGD is a local search). ``worst_case=False`` attacks every sample at every epsilon
independently: full-strength adversarials per eps, e.g. to transfer them to another model or
to reproduce a study that reported per-eps runs (such curves can rise).

Work saved:

* FGSM and the noise baselines compute their direction once for every epsilon;
* ``keep_adversarials=False`` lets iterative attacks stop each sample at its first successful
  iterate (AutoAttack style: only still-robust points cost work);
* minimum-norm attacks (``cw-l2``, ``minimal``) run once, are projected onto each epsilon's
  ball and return ``min_eps``; ``accuracy_from_min_eps`` turns it into a curve at any eps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from robustlab.attacks.base import (
    Attack,
    ModelView,
    attack_mode,
    check_inputs,
    chunks,
    flat_norm,
    is_success,
    validate_epsilons,
)
from robustlab.distributed import ChunkStore, map_chunks
from robustlab.errors import UserError

T = TypeVar("T")

STREAM_WINDOWS = 8  # batches per chunk when samples stream (fewer half-empty tail batches)
# At most this many bytes of float32 pixels per streamed chunk (whole batches, at least one). A
# chunk is held twice (its images, the adversarials found): at 224 px eight windows of 64 cost
# 0.45 GB more than two. RGB images up to 128 px in batches of 64 (96 px in batches of 100, the
# leaf study's) still get all eight windows, so their chunks, per-chunk seeds and results are
# as before.
STREAM_CHUNK_BYTES = 96 * 2**20


@dataclasses.dataclass
class SweepResult:
    """Per-epsilon outcome of a sweep over B samples and E epsilons.

    Attributes:
        epsilons: the E epsilons, in the order given.
        success: ``(E, B)`` bool, the adversarial is misclassified (untargeted) or is
            classified as the target (targeted).
        correct: ``(E, B)`` bool, the adversarial is classified as its true label.
        adversarials: E tensors ``(B, C, H, W)``, or ``None`` when not kept.
        min_eps: ``(B,)`` per-sample minimal epsilon (minimum-norm attacks; ``inf``: none
            found, 0: misclassified when clean), else ``None``.
        clean_pred: ``(B,)`` predictions on the clean images.
        delta_linf: ``(E, B)`` ``||x_adv - x||_inf`` of each returned adversarial.
        delta_l2: ``(E, B)`` ``||x_adv - x||_2``.
        images_forwarded: images passed through the model (a measure of the work done).
        stage: ``(E, B)`` for cascades (``autoattack``): index of the member that fooled each
            sample (-1: misclassified clean, -2: robust to all), else ``None``.
    """

    epsilons: list[float]
    success: Tensor
    correct: Tensor
    adversarials: list[Tensor] | None
    min_eps: Tensor | None
    clean_pred: Tensor
    delta_linf: Tensor
    delta_l2: Tensor
    images_forwarded: int = 0
    stage: Tensor | None = None

    def accuracy(self) -> list[float]:
        """Robust accuracy per epsilon (fraction still classified correctly)."""
        return self.correct.double().mean(1).tolist()

    def success_rate(self) -> list[float]:
        """Fraction of samples where the attack's goal holds, per epsilon."""
        return self.success.double().mean(1).tolist()


def accuracy_from_min_eps(min_eps: Tensor, epsilons: Sequence[float]) -> list[float]:
    """Robust accuracy at each epsilon from per-sample minimal epsilons ``(B,)``.

    A sample counts as robust at ``eps`` when its minimal adversarial is larger than ``eps``.
    """
    if min_eps.numel() == 0:
        return [float("nan")] * len(epsilons)
    return [float((min_eps > eps).double().mean()) for eps in epsilons]


def sweep(
    attack: Attack,
    model: Callable[[Tensor], Any],
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    *,
    target: Any = None,
    keep_adversarials: bool = True,
    worst_case: bool = True,
    batch_size: int | None = None,
) -> SweepResult:
    """Run ``attack`` on ``x`` ``(B, C, H, W)`` at every epsilon (pixel units); see module doc.

    ``batch_size`` caps how many images the model sees at once (``None``: all B); with
    ``keep_adversarials=False`` iterative attacks stream samples through a window of that
    size, refilling the slot of every sample that is fooled.
    """
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if attack.norm == "none":
        raise UserError(f"attack '{attack.name}' has no epsilon and cannot be swept")
    eps_list = validate_epsilons(attack, epsilons)
    x, y, target = attack._check_call(x, y, target)
    if x.shape[0] == 0:
        return _empty_result(x, y, eps_list, keep_adversarials)
    with attack_mode(model, attack.train_mode):
        view = ModelView(model, y, target)
        # a minimal-epsilon search uses the largest epsilon as its upper bound
        runner = attack.with_eps(max(eps_list))._sweep_runner(
            view, x, y, target, keep_adversarials, batch_size
        )
        clean_pred = runner.clean_pred
        if clean_pred is None:
            clean_pred = view.predict(x, batch_size)
        step = _Step(runner, view, x, keep_adversarials, batch_size)
        ordered, staged = step.every_epsilon(eps_list, clean_pred, y, target, worst_case)
    preds = torch.stack([outcome.pred for outcome in ordered])
    return SweepResult(
        epsilons=eps_list,
        success=is_success(preds, y[None], None if target is None else target[None]),
        correct=preds == y[None],
        adversarials=[o.adv.detach() for o in ordered] if keep_adversarials else None,
        min_eps=runner.min_eps,
        clean_pred=clean_pred,
        delta_linf=torch.stack([outcome.linf for outcome in ordered]),
        delta_l2=torch.stack([outcome.l2 for outcome in ordered]),
        images_forwarded=view.images,
        stage=torch.stack([outcome.stage for outcome in ordered]) if staged else None,
    )


def _empty_result(x: Tensor, y: Tensor, eps_list: list[float], keep: bool) -> SweepResult:
    empty = torch.zeros((len(eps_list), 0), dtype=torch.bool, device=x.device)
    return SweepResult(
        epsilons=eps_list,
        success=empty,
        correct=empty.clone(),
        adversarials=[x.clone() for _ in eps_list] if keep else None,
        min_eps=None,
        clean_pred=y.clone(),
        delta_linf=x.new_zeros((len(eps_list), 0)),
        delta_l2=x.new_zeros((len(eps_list), 0)),
    )


@dataclasses.dataclass(frozen=True)
class _Step:
    """One epsilon of a sweep: attacks the samples still to do and records their outcome."""

    runner: Any  # the attack's sweep runner
    view: ModelView
    x: Tensor
    keep_adversarials: bool
    batch_size: int | None

    def every_epsilon(
        self, eps_list: list[float], clean_pred: Tensor, y: Tensor, target: Any, worst_case: bool
    ) -> tuple[list[_Carry], bool]:
        """Each epsilon's outcome, in ``eps_list`` order (attacked smallest first), and whether
        a cascade recorded stages."""
        x = self.x
        initial_stage = torch.where(is_success(clean_pred, y, target), -1, -2)
        carry = _Carry(
            clean_pred, x, x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0]), initial_stage
        )
        staged = False
        outcomes: dict[int, _Carry] = {}
        for k in sorted(range(len(eps_list)), key=eps_list.__getitem__):
            if worst_case:  # only samples still standing are attacked; the rest carry over
                todo = ~is_success(carry.pred, y, target)
                current = carry.copy(self.keep_adversarials)
            else:
                todo = torch.ones_like(y, dtype=torch.bool)
                current = _Carry(clean_pred, x, carry.linf, carry.l2, initial_stage)
                current = current.copy(self.keep_adversarials)
            idx = todo.nonzero().squeeze(1)
            if idx.numel():
                staged = self.attack(current, idx, eps_list[k]) or staged
            outcomes[k] = current
            if worst_case:
                carry = current
        return [outcomes[k] for k in range(len(eps_list))], staged

    def attack(self, current: _Carry, idx: Tensor, eps: float) -> bool:
        """Write samples ``idx``'s outcome at ``eps`` into ``current``; True when a cascade
        recorded which member fooled them."""
        new_adv, new_pred = self.runner.run(idx, eps)
        if new_pred is None:
            new_pred = self.view.predict(new_adv, self.batch_size)
        current.pred[idx] = new_pred
        current.linf[idx], current.l2[idx] = _delta_norms(
            new_adv, self.x, idx, self.batch_size, overwrite=not self.keep_adversarials
        )
        if self.keep_adversarials:
            current.adv[idx] = new_adv
        if self.view.stage is None:
            return False
        current.stage[idx], self.view.stage = self.view.stage, None
        return True


def _delta_norms(
    new_adv: Tensor, x: Tensor, idx: Tensor, size: int | None, *, overwrite: bool = False
) -> tuple[Tensor, Tensor]:
    """L-inf and L2 norms ``(len(idx),)`` of ``new_adv - x[idx]``, with at most one temporary.

    ``x[idx]`` and ``delta.abs()`` would each be one more float copy of a whole chunk (+0.6 GB
    at 1 024 x 224 px); the subtraction is gathered a batch at a time into the one buffer, and
    the norms still reduce it whole, so every value is bit-identical. ``overwrite``: the
    adversarials are not kept, so that buffer is ``new_adv`` itself (the runner's own tensor).
    """
    delta = new_adv if overwrite else torch.empty_like(new_adv)
    for part in chunks(len(idx), size):
        torch.sub(new_adv[part], x[idx[part]], out=delta[part])
    l2 = flat_norm(delta, "l2")  # first: the L-inf norm below overwrites delta
    return flat_norm(delta, "linf", overwrite=True), l2


@dataclasses.dataclass
class _Carry:
    """What a worst-case sweep carries from one epsilon to the next, per sample."""

    pred: Tensor  # (B,)
    adv: Tensor  # (B, C, H, W)
    linf: Tensor  # (B,)
    l2: Tensor  # (B,)
    stage: Tensor  # (B,) cascade member that fooled it (see SweepResult.stage)

    def copy(self, with_adversarials: bool) -> _Carry:
        adv = self.adv.clone() if with_adversarials else self.adv
        return _Carry(
            self.pred.clone(), adv, self.linf.clone(), self.l2.clone(), self.stage.clone()
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """The keyword options of ``sweep_dataset`` and ``sweep_chunks``, declared once.

    target: ``None``, a class index or ``(N,)`` target classes.
    batch_size: the most images the model sees at once; with ``keep_adversarials=False`` a
        chunk holds up to ``STREAM_WINDOWS`` batches (``STREAM_CHUNK_BYTES`` of pixels) so
        early-stopped samples are replaced by new ones.
    keep_adversarials, worst_case: as ``sweep``.
    device: where batches are moved (the model must already be there).
    progress: a progress bar over the chunks.
    store: saves each finished chunk, so that the same call after a crash computes only the
        missing ones.
    """

    target: Any = None
    batch_size: int = 64
    keep_adversarials: bool = True
    worst_case: bool = True
    device: str | torch.device | None = None
    progress: bool = False
    store: ChunkStore | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")


def sweep_dataset(
    attack: Attack,
    model: Callable[[Tensor], Any],
    images: Tensor,
    labels: Tensor,
    epsilons: Sequence[float],
    **options: Any,
) -> SweepResult:
    """``sweep`` over a whole data set ``(N, C, H, W)`` in batches, results concatenated.

    ``options``: the fields of ``SweepOptions`` (an unknown one is a ``TypeError``). Results,
    adversarials included, come back on the CPU. Under torchrun the batches are shared out
    over the ranks and gathered in order (every rank gets the whole result, bit-identical to
    one process).
    """
    parts = sweep_chunks(attack, model, images, labels, epsilons, reduce=_cpu_fields, **options)
    if not parts:  # no images: the empty result of one call
        return sweep(attack, model, images, labels, epsilons, target=options.get("target"))
    return _concat([SweepResult(**part) for part in parts])


def sweep_chunks(
    attack: Attack,
    model: Callable[[Tensor], Any],
    images: Tensor,
    labels: Tensor,
    epsilons: Sequence[float],
    *,
    reduce: Callable[[slice, Tensor, SweepResult], T],
    **options: Any,
) -> list[T]:
    """Sweep each chunk of the data set and keep only ``reduce(part, x, result)`` of it, in order.

    ``part``: the chunk's slice of ``images``; ``x``, ``result``: its clean images and
    ``SweepResult`` on ``device``. Under torchrun each rank sweeps and reduces its own chunks
    and only the reduced values (CPU tensors; never None with ``store``) are gathered, so a
    caller that scores adversarials on another model gathers scores, not adversarials.
    Single-process chunk boundaries and a freshly seeded attack per ``sweep`` call make the
    list identical to one process's. ``options``: the fields of ``SweepOptions``.
    """
    chosen = SweepOptions(**options)
    batch_size, device = chosen.batch_size, chosen.device
    images, labels, target_t = _checked_dataset(images, labels, chosen.target)
    if images.shape[0] == 0:
        return []

    from robustlab.devices import pin_for, to_device

    images, labels = pin_for(images, device), pin_for(labels, device)  # async batch copies

    def run_chunk(part: slice) -> T:
        x = to_device(images[part], device)
        batch_target = None if target_t is None else target_t[part].to(device)
        result = sweep(
            attack,
            model,
            x,
            to_device(labels[part], device),
            epsilons,
            target=batch_target,
            keep_adversarials=chosen.keep_adversarials,
            worst_case=chosen.worst_case,
            batch_size=batch_size,
        )
        return reduce(part, x, result)

    return map_chunks(
        run_chunk,
        images.shape[0],
        chunk_size(images.shape, batch_size, chosen.keep_adversarials),
        store=chosen.store,
        progress=f"{attack.name} sweep" if chosen.progress else None,
    )


def chunk_size(shape: Sequence[int], batch_size: int, keep_adversarials: bool) -> int:
    """Images per chunk of a sweep over a data set of ``shape`` ``(N, C, H, W)``.

    Kept adversarials are a result: a chunk is one batch. Without them, a chunk holds several
    windows that samples stream through, as many as ``STREAM_CHUNK_BYTES`` allow.
    """
    if keep_adversarials:
        return batch_size
    batch_bytes = batch_size * math.prod(shape[1:]) * 4  # float32 pixels
    return batch_size * max(1, min(STREAM_WINDOWS, STREAM_CHUNK_BYTES // batch_bytes))


def _checked_dataset(images: Tensor, labels: Tensor, target: Any) -> tuple[Tensor, Tensor, Any]:
    """``check_inputs`` for a data set; a streamed one is checked against a zero-copy stand-in
    (its pixels are checked per chunk, when read)."""
    if isinstance(images, Tensor):
        return check_inputs(images, labels, target)
    # one pixel per image: labels and target are checked against N without an N-image tensor
    # (a reduction over an expanded image copies it whole: 4 GB at 7 200 x 224 px)
    stand_in = torch.zeros((len(images), 1, 1, 1))
    _, labels, target_t = check_inputs(stand_in, labels, target)
    return images, labels, target_t


def _cpu_fields(part: slice, x: Tensor, result: SweepResult) -> dict[str, Any]:
    """A chunk's result as a plain dict of CPU tensors: what ChunkStore saves and
    ``all_gather_object`` ships."""
    cpu = _to_cpu(result)
    return {f.name: getattr(cpu, f.name) for f in dataclasses.fields(cpu)}


def _to_cpu(part: SweepResult) -> SweepResult:
    def cpu(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.detach().cpu()
        if isinstance(value, list) and value and isinstance(value[0], Tensor):
            return [item.detach().cpu() for item in value]
        return value

    return SweepResult(**{f.name: cpu(getattr(part, f.name)) for f in dataclasses.fields(part)})


def _concat(parts: list[SweepResult]) -> SweepResult:
    first = parts[0]
    adversarials = None
    if first.adversarials is not None:
        adversarials = [
            torch.cat([part.adversarials[k] for part in parts])  # type: ignore[index]
            for k in range(len(first.epsilons))
        ]
    min_eps = None
    if first.min_eps is not None:
        min_eps = torch.cat([part.min_eps for part in parts])  # type: ignore[misc]
    stage = None
    if first.stage is not None:
        stage = torch.cat([part.stage for part in parts], dim=1)  # type: ignore[misc]
    return SweepResult(
        epsilons=first.epsilons,
        success=torch.cat([part.success for part in parts], dim=1),
        correct=torch.cat([part.correct for part in parts], dim=1),
        adversarials=adversarials,
        min_eps=min_eps,
        clean_pred=torch.cat([part.clean_pred for part in parts]),
        delta_linf=torch.cat([part.delta_linf for part in parts], dim=1),
        delta_l2=torch.cat([part.delta_l2 for part in parts], dim=1),
        images_forwarded=sum(part.images_forwarded for part in parts),
        stage=stage,
    )
