"""The attack contract: settings, input checks, the model guard, the logits adapter, the losses.

Every attack is a frozen dataclass of settings, validated when it is built (the ``UserError``
names the field, e.g. ``pgd.steps must be >= 1, got 0``). It takes the model on each call::

    x_adv = attack(model, x, y, target=None)

* ``x``: float tensor ``(B, C, H, W)`` in ``[0, 1]`` (normalisation lives inside the model);
* ``y``: int tensor ``(B,)`` of true labels; ``target``: ``None`` (untargeted), a class index,
  or an int tensor ``(B,)`` of target classes;
* returns ``x_adv`` with the same shape, dtype and device, inside ``[0, 1]`` and inside the
  ``eps`` ball of the attack's ``norm`` (``eps`` in ``[0, 1]`` pixel units; 8/255 = 0.0314).

During a call the model's module modes, parameters, ``requires_grad`` flags and ``.grad`` are
left exactly as found: parameters are set to ``requires_grad=False`` for the duration and input
gradients come from ``torch.autograd.grad``, so no ``.grad`` is ever written. A model in train
mode is refused unless ``train_mode='eval'`` (attack in eval mode, restore afterwards) or
``train_mode='keep'`` (attack it as it is; BatchNorm running statistics will then move).
Randomness comes from a private ``torch.Generator`` seeded with ``seed`` (``None``: the global
RNG), so the same seed gives the same output and the global RNG is not consumed (except by the
model itself, e.g. dropout under ``train_mode='keep'``).

Models may return a tensor, a tuple/list (logits first) or a dict / object with ``logits``:
``logits_from_output`` is the one adapter, ``as_logits_model`` its ``nn.Module`` form.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.budgets import check_budget
from robustlab.errors import UserError, check_range

logger = logging.getLogger(__name__)

LOSSES = ("ce", "mse", "margin", "dlr")
TRAIN_MODES = ("refuse", "eval", "keep")


class SoftmaxOutputWarning(UserWarning):
    """The model's outputs already look like probabilities, so input gradients saturate."""


# ----------------------------------------------------------------------------- output adapter


def logits_from_output(output: Any, key: str = "logits") -> Tensor:
    """Return the logits ``(B, K)`` from whatever a model's forward returned.

    A tensor is returned as is; a tuple or list gives its first element; a dict gives
    ``output[key]`` (or its only tensor value); any other object gives ``output.<key>``
    (e.g. Hugging Face ``ModelOutput``).
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        if key in output:
            return output[key]
        tensors = [value for value in output.values() if isinstance(value, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise UserError(f"model returned a dict without a '{key}' entry (keys: {list(output)})")
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    logits = getattr(output, key, None)
    if isinstance(logits, Tensor):
        return logits
    raise UserError(f"cannot find logits in a model output of type {type(output).__name__}")


class LogitsModel(nn.Module):
    """Wrap a model whose forward returns a tuple/dict so that it returns logits ``(B, K)``."""

    def __init__(self, model: nn.Module, key: str = "logits") -> None:
        super().__init__()
        self.model = model
        self.key = key
        self.train(model.training)  # a new module starts in train mode; mirror the wrapped one

    def forward(self, x: Tensor) -> Tensor:
        return logits_from_output(self.model(x), self.key)


def as_logits_model(model: nn.Module, key: str = "logits") -> nn.Module:
    """The documented adapter: a module returning plain logits (``model`` itself if it does)."""
    return model if isinstance(model, LogitsModel) else LogitsModel(model, key)


# ----------------------------------------------------------------------------- checks


def quiet_default(value: Any) -> Any:
    """A dataclass field whose default is not recorded by ``Attack.settings`` (see there)."""
    return dataclasses.field(default=value, metadata={"quiet": True})


def noise_like(x: Tensor, generator: torch.Generator | None, *, gaussian: bool = False) -> Tensor:
    """Noise of ``x``'s shape, dtype and device from an attack's private generator: uniform in
    ``[0, 1)``, or standard normal with ``gaussian``."""
    draw = torch.randn if gaussian else torch.rand
    return draw(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def check_int(field: str, value: Any, low: int | None = None) -> int:
    """Validate an integer setting (bools and floats refused), naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{field} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise UserError(f"{field} must be >= {low}, got {value}")
    return value


def check_steps(field: str, value: Any) -> int:
    """An iteration count: an integer >= 1 within the ``steps`` budget."""
    check_int(field, value, 1)
    check_budget("steps", value, field)
    return value


def check_choice(field: str, value: Any, choices: Sequence[str]) -> str:
    """Validate a string setting against its choices, naming the field."""
    if value not in choices:
        raise UserError(f"{field} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{field} must be true or false, got {value!r}")
    return value


def check_inputs(x: Any, y: Any, target: Any = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate one attack call's tensors; return ``(x, y, target)`` with labels as int64.

    Class ranges are checked later, against the model's first output (see ``ModelView``).
    """
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise UserError(f"x must be a float tensor of shape (B, C, H, W), got {shape}")
    batch = x.shape[0]
    if x.numel():
        low, high = torch.aminmax(x.detach())
        low_value, high_value = float(low), float(high)
        if not (low_value >= 0.0 and high_value <= 1.0):  # NaN fails both comparisons
            raise UserError(
                f"x must be in [0, 1] pixel units, got values in [{low_value:.4g}, {high_value:.4g}]"
                " (normalisation belongs inside the model)"
            )
    y = _labels("y", y, batch, x.device)
    if target is not None:
        if isinstance(target, int | float) and not isinstance(target, bool):
            target = torch.full((batch,), int(check_range("target", target, 0)), device=x.device)
        target = _labels("target", target, batch, x.device)
    return x.detach(), y, target


def _labels(field: str, labels: Any, batch: int, device: torch.device) -> Tensor:
    labels = torch.as_tensor(labels, device=device)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise UserError(f"{field} must hold integer class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise UserError(f"{field} must have shape ({batch},) to match x, got {tuple(labels.shape)}")
    if batch and int(labels.min()) < 0:
        raise UserError(f"{field} holds a negative class index ({int(labels.min())})")
    return labels.long()


def chunks(total: int, size: int | None) -> list[slice]:
    """Consecutive slices of at most ``size`` (``None``: one slice) covering ``range(total)``."""
    step = max(size or total, 1)
    return [slice(start, start + step) for start in range(0, total, step)] or [slice(0, 0)]


# ----------------------------------------------------------------------------- model guard


@contextlib.contextmanager
def attack_mode(model: Callable[[Tensor], Any], train_mode: str = "refuse") -> Iterator[None]:
    """Prepare ``model`` for an attack and restore it exactly afterwards.

    Module ``training`` flags and parameter ``requires_grad`` flags are recorded and restored;
    parameters do not require grad meanwhile, which skips weight-gradient kernels and guarantees
    that no ``.grad`` is touched. Gradients are enabled even inside a caller's ``no_grad``.
    """
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [module.training for module in modules]
    if any(modes):
        if train_mode == "refuse":
            raise UserError(
                "model is in train mode; call model.eval() first, or set train_mode='eval' "
                "(attack in eval mode, restored afterwards) or 'keep' (attack it as it is)"
            )
        if train_mode == "eval":
            model.eval()  # type: ignore[union-attr]
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [param.requires_grad for param in params]
    try:
        for param in params:
            param.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for param, flag in zip(params, flags, strict=True):
            param.requires_grad_(flag)
        for module, mode in zip(modules, modes, strict=True):
            module.training = mode


class ModelView:
    """The model as one attack call sees it: logits out, checked on first use, work counted.

    ``images`` counts the images forwarded (with or without a backward pass), which tests and
    benchmarks use to see how much work early stopping saved. ``stage`` is set by cascades
    (AutoAttack): per sample of the last ``_perturb`` call, the index of the member that fooled
    it (-1: misclassified clean, -2: robust to every member).
    """

    def __init__(self, model: Callable[[Tensor], Any], y: Tensor, target: Tensor | None) -> None:
        self.model = model
        self.y = y
        self.target = target
        self.checked = False
        self.images = 0
        self.stage: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        logits = logits_from_output(self.model(x))
        self.images += x.shape[0]
        if not self.checked:
            self._check(logits, x.shape[0])
        return logits

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int | None = None) -> Tensor:
        """Predicted classes ``(B,)`` for ``x``, at most ``batch_size`` images at a time."""
        return torch.cat([self(x[part]).argmax(1) for part in chunks(x.shape[0], batch_size)])

    def validate(self, x: Tensor) -> None:
        """Check labels against the model once, for attacks that never run the model."""
        if not self.checked and x.shape[0]:
            self.predict(x[:1])

    def _check(self, logits: Tensor, batch: int) -> None:
        if logits.ndim != 2 or logits.shape[0] != batch or logits.shape[1] < 2:
            raise UserError(
                f"model must return logits of shape (B, num_classes>=2), got {tuple(logits.shape)}"
            )
        classes = logits.shape[1]
        for field, labels in (("y", self.y), ("target", self.target)):
            if labels is not None and labels.numel() and int(labels.max()) >= classes:
                raise UserError(
                    f"{field} holds class {int(labels.max())}, out of range for a model "
                    f"with {classes} classes"
                )
        scores = logits.detach()
        if bool(scores.min() >= 0) and bool(((scores.sum(1) - 1).abs() < 1e-3).all()):
            warnings.warn(
                "model outputs already sum to 1 (softmax inside the model?): gradients through "
                "a second softmax saturate; return logits for a reliable attack",
                SoftmaxOutputWarning,
                stacklevel=4,
            )
        self.checked = True


# ----------------------------------------------------------------------------- losses


def label_loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """Per-sample loss ``(B,)`` that is high when ``labels`` is *not* predicted.

    ``ce``: cross-entropy; ``mse``: the leaf study's sum of squared differences between the
    softmax output and the one-hot label; ``margin``: best other logit minus the label's logit.
    """
    if kind == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    if kind == "mse":
        one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return (logits.softmax(1) - one_hot).square().sum(1)
    if kind == "margin":
        label_logit = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf"))
        return others.amax(1) - label_logit
    if kind == "dlr":
        return dlr_loss(logits, labels)
    raise ValueError(f"unknown loss {kind!r}")


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020), per sample ``(B,)``, high when fooled.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` with ``z_pi`` the logits sorted in
    decreasing order: the margin, made invariant to a shift and a rescaling of the logits.
    Needs at least 3 classes.
    """
    if logits.shape[1] < 3:
        raise UserError(f"loss 'dlr' needs at least 3 classes, the model has {logits.shape[1]}")
    ordered, order = logits.sort(dim=1, descending=True)
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    label_is_top = order[:, 0] == labels  # then the best other logit is the second one
    best_other = torch.where(label_is_top, ordered[:, 1], ordered[:, 0])
    return -(label_logit - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def objective(
    logits: Tensor, y: Tensor, target: Tensor | None, kind: str, reference: Tensor | None = None
) -> Tensor:
    """Per-sample value ``(B,)`` an attack increases: loss on ``y``, or minus loss on target.

    ``kind='kl'`` is TRADES' inner loss (Zhang et al. 2019): the KL divergence from the clean
    prediction ``reference`` ``(B, K)`` (softmax probabilities) to the prediction on ``logits``.
    """
    if kind == "kl":
        assert reference is not None, "loss 'kl' needs the clean prediction"
        return F.kl_div(logits.log_softmax(1), reference, reduction="none").sum(1)
    if target is None:
        return label_loss(logits, y, kind)
    return -label_loss(logits, target, kind)


def is_success(pred: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """``(B,)`` bool: misclassified (untargeted) or predicted as the target (targeted)."""
    return pred != y if target is None else pred == target


def input_gradient(
    view: ModelView,
    x_adv: Tensor,
    y: Tensor,
    target: Tensor | None,
    loss: str,
    samples: int = 1,
    reference: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradient of the summed objective w.r.t. ``x_adv`` and the logits, without any ``.grad``.

    ``samples > 1`` is EOT (expectation over transformation, for randomised models): the
    gradient is averaged over that many passes, the logits are the last pass's. ``reference``:
    the clean prediction, for ``loss='kl'``.
    """
    total: Tensor | None = None
    for _ in range(samples):
        x_adv.requires_grad_(True)
        logits = view(x_adv)
        value = objective(logits, y, target, loss, reference).sum()
        (grad,) = torch.autograd.grad(value, x_adv)
        x_adv.requires_grad_(False)
        total = grad if total is None else total.add_(grad)
    assert total is not None
    return (total if samples == 1 else total.div_(samples)), logits.detach()


# ----------------------------------------------------------------------------- norms


def flat_norm(delta: Tensor, norm: str, *, overwrite: bool = False) -> Tensor:
    """Per-sample norm ``(B,)`` of a perturbation ``(B, C, H, W)``: 'linf' or 'l2'.

    ``overwrite``: 'linf' may take ``|delta|`` in place of ``delta`` instead of a copy of it.
    """
    flat = delta.flatten(1)
    if norm == "linf":
        if not flat.shape[1]:
            return flat.new_zeros(flat.shape[0])
        return (flat.abs_() if overwrite else flat.abs()).amax(1)
    return flat.norm(p=2, dim=1)


def project(x_adv: Tensor, x: Tensor, eps: Tensor | float, norm: str) -> Tensor:
    """Project ``x_adv`` onto the ``eps`` ball around ``x`` and the [0, 1] box (new tensor)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(min=-eps, max=eps)
    elif norm == "l2":
        norms = flat_norm(delta, "l2").view(-1, *([1] * (x.ndim - 1)))
        delta = delta * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    return (x + delta).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- the contract


@dataclasses.dataclass(frozen=True)
class SweepRunner:
    """How an attack produces adversarials at one epsilon for a subset of a fixed batch.

    ``run(idx, eps)`` returns ``(x_adv, pred)`` for the samples ``idx``; ``pred`` is ``None``
    when the runner did not already compute the predictions. ``clean_pred`` and ``min_eps``
    are filled when they came for free. ``x_adv`` is a new tensor the caller may overwrite.
    """

    run: Callable[[Tensor, float], tuple[Tensor, Tensor | None]]
    clean_pred: Tensor | None = None
    min_eps: Tensor | None = None


@dataclasses.dataclass(frozen=True)
class Batch:
    """One attack call's checked inputs, as the attack's hooks receive them."""

    view: ModelView
    x: Tensor  # (B, C, H, W) in [0, 1]
    y: Tensor  # (B,) true labels
    target: Tensor | None  # (B,) target classes, or None (untargeted)

    def part(self, idx: Tensor | slice) -> Batch:
        """The samples ``idx`` (a mask, indices or a slice) of this batch."""
        target = None if self.target is None else self.target[idx]
        return Batch(self.view, self.x[idx], self.y[idx], target)

    def parts(self, size: int | None) -> list[Batch]:
        """Consecutive sub-batches of at most ``size`` samples (``None``: the whole batch)."""
        return [self.part(part) for part in chunks(self.x.shape[0], size)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class L2Ball:
    """Mixin of the ``-l2`` variants (``pgd-l2``, ``apgd-l2``, ``fgm``, ``square-l2``): ``eps``
    is an L2 radius in pixel units and may exceed 1 (the L2 diameter of a ``(C, H, W)`` image
    is ``sqrt(C*H*W)``). List it before the L-inf class it varies."""

    norm: ClassVar[str] = "l2"
    eps_high: ClassVar[float] = math.inf

    eps: float = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
    """Base class: settings only, validated at construction; the model comes with each call.

    Subclasses set ``name`` (registry name) and ``norm`` ('linf', 'l2' or 'none'), declare their
    settings as fields (``eps`` among them when bounded) and implement ``_perturb`` and
    ``_runner`` (or derive from ``DirectionAttack`` / ``MinimumNormAttack``, which do).

    Args:
        seed: seed of the attack's private random generator; ``None`` uses the global RNG.
        train_mode: what to do with a model in train mode: 'refuse' (UserError), 'eval'
            (attack in eval mode, restore the modes afterwards) or 'keep' (attack it as it is).
    """

    name: ClassVar[str] = "attack"
    norm: ClassVar[str] = "none"
    eps_high: ClassVar[float] = 1.0  # largest valid eps (pixel units)
    requires_target: ClassVar[bool] = False
    losses: ClassVar[tuple[str, ...]] = LOSSES  # the values ``loss`` may take, if a setting

    seed: int | None = 0
    train_mode: str = "refuse"

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        check_choice(self._field("train_mode"), self.train_mode, TRAIN_MODES)
        if self.seed is not None:
            check_int(self._field("seed"), self.seed)
        if self.norm != "none":
            check_range(self._field("eps"), self.eps, 0.0, self.eps_high)
        loss = getattr(self, "loss", None)
        if loss is not None:
            check_choice(self._field("loss"), loss, self.losses)

    def _field(self, field: str) -> str:
        return f"{self.name}.{field}"

    def settings(self) -> dict[str, Any]:
        """All settings as a JSON-able dict (what result files record).

        A setting declared with ``quiet_default`` is left out while at its default, so result
        files written before it existed stay identical (e.g. ``eot_samples=1``).
        """
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if not (field.metadata.get("quiet") and getattr(self, field.name) == field.default)
        }

    def with_eps(self, eps: float) -> Self:
        """The same attack with another epsilon (validated)."""
        if self.norm == "none":
            raise UserError(f"attack '{self.name}' has no epsilon")
        return dataclasses.replace(self, eps=float(eps))  # type: ignore[call-arg]

    def __call__(
        self, model: Callable[[Tensor], Any], x: Tensor, y: Tensor, target: Any = None
    ) -> Tensor:
        """Return adversarial examples ``(B, C, H, W)`` for ``x`` (see the module docstring)."""
        x, y, target = self._check_call(x, y, target)
        if x.shape[0] == 0:
            return x.clone()
        with attack_mode(model, self.train_mode):
            view = ModelView(model, y, target)
            x_adv, _ = self._perturb(
                view, x, y, target, self._eps_tensor(x), self._generator(x.device), False
            )
        return x_adv.detach()

    def _check_call(self, x: Any, y: Any, target: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, target = check_inputs(x, y, target)
        if self.requires_target and target is None:
            raise UserError(f"attack '{self.name}' needs a target class")
        return x, y, target

    @contextlib.contextmanager
    def _session(
        self, model: Callable[[Tensor], Any], x: Any, y: Any, target: Any
    ) -> Iterator[Batch]:
        """A checked batch for a public entry point, the model guarded meanwhile."""
        x, y, target = self._check_call(x, y, target)
        with attack_mode(model, self.train_mode):
            yield Batch(ModelView(model, y, target), x, y, target)

    def _eps_tensor(self, x: Tensor, eps: float | None = None) -> Tensor:
        value = self.eps if eps is None else eps  # type: ignore[attr-defined]
        return torch.full(
            (x.shape[0],) + (1,) * (x.ndim - 1), value, dtype=x.dtype, device=x.device
        )

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        return generator

    def _perturb(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        eps: Tensor,
        generator: torch.Generator | None,
        stop_on_success: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Attack a batch with per-sample ``eps`` ``(B, 1, 1, 1)``; return ``(x_adv, pred)``.

        With ``stop_on_success`` an iterative attack may return each sample's first successful
        iterate and its predictions; ``pred`` is ``None`` when not computed. Attacks implement
        this or, with the batch bundled, ``_attack``.
        """
        return self._attack(Batch(view, x, y, target), eps, generator, stop_on_success)

    def _attack(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None, stop_on_success: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``_perturb`` with its inputs bundled in a ``Batch``."""
        raise NotImplementedError

    def _sweep_runner(
        self,
        view: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        keep: bool,
        batch_size: int | None,
    ) -> SweepRunner:
        """How a sweep gets this attack's adversarials at each epsilon (see ``SweepRunner``).

        ``keep``: the caller keeps the adversarials (no early stopping); ``batch_size``: the
        most images the model may see at once (``None``: all of ``x``).
        """
        return self._runner(Batch(view, x, y, target), keep, batch_size)

    def _runner(self, batch: Batch, keep: bool, batch_size: int | None) -> SweepRunner:
        """What ``_sweep_runner`` returns; each kind of attack implements this."""
        raise NotImplementedError


class DirectionAttack(Attack):
    """An attack that moves every image along one fixed direction, scaled by eps.

    FGSM (the gradient sign), FGM (the normalised gradient) and the noise baselines are of this
    kind, so a sweep computes the direction once and reuses it for every epsilon.
    """

    def direction(
        self, model: Callable[[Tensor], Any], x: Tensor, y: Tensor, target: Any = None
    ) -> Tensor:
        """The direction ``(B, C, H, W)`` each image moves along; ``attack(model, x, y)`` is
        ``x + eps * direction`` in the box. Defences use it for their own step (NSL)."""
        with self._session(model, x, y, target) as batch:
            direction, _ = self._direction(batch, self._generator(batch.x.device))
        return direction

    def _direction(
        self, batch: Batch, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        """Return the direction ``(B, C, H, W)`` and the clean logits when computed."""
        raise NotImplementedError

    def _apply(self, x: Tensor, direction: Tensor, eps: Tensor | float) -> Tensor:
        """Return ``x`` moved by ``eps`` along ``direction``, in the box and the ball."""
        return (x + eps * direction).clamp_(0.0, 1.0)

    def _attack(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None, stop_on_success: bool
    ) -> tuple[Tensor, Tensor | None]:
        direction, _ = self._direction(batch, generator)
        return self._apply(batch.x, direction, eps), None

    def _runner(self, batch: Batch, keep: bool, batch_size: int | None) -> SweepRunner:
        generator = self._generator(batch.x.device)
        found = [self._direction(part, generator) for part in batch.parts(batch_size)]
        direction = torch.cat([part_direction for part_direction, _ in found])
        known = all(logits is not None for _, logits in found)
        clean_pred = torch.cat([logits.argmax(1) for _, logits in found]) if known else None  # type: ignore[union-attr]

        def run(idx: Tensor, eps: float) -> tuple[Tensor, Tensor | None]:
            return self._apply(batch.x[idx], direction[idx], eps), None

        return SweepRunner(run, clean_pred=clean_pred)


class MinimumNormAttack(Attack):
    """An attack that looks for the smallest adversarial perturbation of each sample.

    It runs once per batch; ``__call__`` projects the result onto the ``eps`` ball, and a sweep
    projects it onto every epsilon's ball and reports ``min_eps`` (the norm of each sample's
    smallest adversarial found, ``inf`` when none, 0 when the clean image is already
    misclassified), from which the whole accuracy-vs-epsilon curve follows.

    Subclasses implement ``_find(batch, generator)`` (older ones ``_search(view, x, y, target,
    generator)``, which the default ``_find`` calls).
    """

    def minimize(
        self, model: Callable[[Tensor], Any], x: Tensor, y: Tensor, target: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(x_min (B, C, H, W), min_eps (B,))``; ``x_min = x`` where none was found."""
        with self._session(model, x, y, target) as batch:
            x_min, min_eps, _ = self._minimize(batch)
        return x_min, min_eps

    def _minimize(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_min, min_eps, clean_pred)``; only samples still correct are searched."""
        x = batch.x
        clean_pred = batch.view.predict(x)
        todo = (~is_success(clean_pred, batch.y, batch.target)).nonzero().squeeze(1)
        x_min = x.clone()
        min_eps = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if todo.numel():
            found, norms = self._find(batch.part(todo), self._generator(x.device))
            x_min[todo], min_eps[todo] = found, norms
        return x_min, min_eps, clean_pred

    def _find(self, batch: Batch, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """The attack proper: ``(x_min, min_eps)`` with ``inf`` where nothing was found."""
        raise NotImplementedError

    def _attack(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None, stop_on_success: bool
    ) -> tuple[Tensor, Tensor | None]:
        x_min, _, _ = self._minimize(batch)
        return project(x_min, batch.x, eps, self.norm), None

    def _runner(self, batch: Batch, keep: bool, batch_size: int | None) -> SweepRunner:
        parts = [self._minimize(part) for part in batch.parts(batch_size)]
        x_min, min_eps, clean_pred = (torch.cat(values) for values in zip(*parts, strict=True))

        def run(idx: Tensor, eps: float) -> tuple[Tensor, Tensor | None]:
            return project(x_min[idx], batch.x[idx], eps, self.norm), None

        return SweepRunner(run, clean_pred=clean_pred, min_eps=min_eps)


def join_parts(advs: list[Tensor], preds: list[Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """Adversarials and predictions of consecutive sub-batches, joined (``pred`` ``None``
    unless every part computed it)."""
    known = all(pred is not None for pred in preds)
    return torch.cat(advs), torch.cat(preds) if known else None  # type: ignore[arg-type]


def validate_epsilons(attack: Attack, epsilons: Sequence[float]) -> list[float]:
    """Check a list of epsilons for ``attack`` (each through its own eps validation)."""
    values = [float(eps) for eps in epsilons]
    if not values:
        raise UserError("epsilons must not be empty")
    for eps in values:
        attack.with_eps(eps)
    return values
