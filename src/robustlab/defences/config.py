"""Typed settings of every defence, validated at construction (errors name the field).

All epsilons and step sizes are in [0, 1] pixel units (8/255 = 0.0314), the pixel convention of
the whole package. ``warmup_epochs`` (every defence) trains on the plain loss for epochs
1..warmup_epochs and adds the adversarial term from the next epoch on: a clean warm start that
keeps pretrained backbones from collapsing when adversarial fine-tuning begins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.errors import UserError, check_range, unknown_name

# Accepted spellings of each norm -> canonical name ('infinity' is NSL's NormType value).
NORM_ALIASES: dict[str, str] = {
    "linf": "linf",
    "l_inf": "linf",
    "inf": "linf",
    "infinity": "linf",
    "l2": "l2",
    "l1": "l1",
}


@dataclass(frozen=True)
class DefenceConfig:
    """Base of every defence's settings; subclasses are frozen dataclasses."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        raise NotImplementedError

    def resolved(self) -> DefenceConfig:
        """The same settings with every derived default (e.g. ``step_size=None``) filled in."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able resolved settings: ``{"name": ..., every setting incl. defaults}``."""
        return {"name": self.name, **dataclasses.asdict(self.resolved())}

    # -- validation helpers: normalise the value in place and name the field on error --------

    def _set(self, field: str, value: Any) -> None:
        object.__setattr__(self, field, value)

    def _float(self, field: str, low: float | None = 0.0, high: float | None = None) -> float:
        value = getattr(self, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{field} must be a number, got {value!r}")
        if math.isinf(value):
            raise UserError(f"{field} must be finite, got {value}")
        value = check_range(field, value, low, high)
        self._set(field, value)
        return value

    def _optional_float(self, field: str, low: float | None = 0.0) -> float | None:
        return None if getattr(self, field) is None else self._float(field, low)

    def _int(self, field: str, low: int) -> int:
        value = getattr(self, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{field} must be an integer >= {low}, got {value!r}")
        return value

    def _bool(self, field: str) -> bool:
        value = getattr(self, field)
        if not isinstance(value, bool):
            raise UserError(f"{field} must be true or false, got {value!r}")
        return value

    def _norm(self, field: str, allowed: tuple[str, ...]) -> str:
        value = getattr(self, field)
        canonical = NORM_ALIASES.get(str(value).lower()) if isinstance(value, str) else None
        if canonical not in allowed:
            raise unknown_name(field, str(value), allowed)
        self._set(field, canonical)
        return canonical

    def _eps(self, field: str, norm: str) -> float:
        # An L-inf radius beyond 1 is meaningless on [0, 1] pixels; L2 radii can exceed 1.
        return self._float(field, 0.0, 1.0 if norm == "linf" else None)


# Gradient attacks a defence may craft with; value: the attack's L2 form (None: Linf only).
CRAFTING_ATTACKS: dict[str, str | None] = {
    "pgd": "pgd-l2",
    "apgd": "apgd-l2",
    "mifgsm": None,
    "ifgsm": None,
    "fgsm": None,
}


def crafting_attack_name(attack: str, norm: str) -> str:
    """The registry name of the crafting attack for ``norm`` (errors name the field)."""
    if attack not in CRAFTING_ATTACKS:
        raise unknown_name(
            "attack (a gradient attack to craft with)", str(attack), CRAFTING_ATTACKS
        )
    if norm == "linf":
        return attack
    l2_form = CRAFTING_ATTACKS[attack]
    if l2_form is None:
        raise UserError(f"attack '{attack}' has no L2 form; use attack=pgd or apgd with norm=l2")
    return l2_form


def build_crafting_attack(name: str, **settings: Any) -> Any:
    """``get_attack(name, ...)`` with the settings it knows, seeded from the global RNG."""
    from robustlab.attacks import get_attack, setting_names

    known = setting_names(name)
    if settings.get("eps") == 0:  # a zero ball: every step is zero, which PGD's checks refuse
        settings.pop("abs_stepsize", None)
    return get_attack(name, seed=None, **{k: v for k, v in settings.items() if k in known})


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s rule of thumb: ``2.5 * eps / steps`` lets PGD reach the ball's surface."""
    return 2.5 * eps / steps


@dataclass(frozen=True)
class PGDTrainingConfig(DefenceConfig):
    """PGD adversarial training (Madry et al. 2018, arXiv:1706.06083).

    Each batch is replaced by its PGD adversarial examples: ``loss = CE(f(x_adv), y)``.
    eps: ball radius in [0, 1] pixel units. steps: PGD iterations. step_size: per-step size in
    pixel units, None -> 2.5 * eps / steps. norm: 'linf' or 'l2'. random_start: start uniformly
    inside the ball. attack: the gradient attack of ``robustlab.attacks`` that crafts the
    examples ('pgd', the default, is exactly the evaluation's PGD; 'apgd', 'mifgsm', 'ifgsm',
    'fgsm' give APGD-, MI-FGSM-, ... adversarial training); its L2 form is used when
    norm='l2'. The examples are crafted by the same code that evaluates the model.
    """

    name: ClassVar[str] = "pgd"
    summary: ClassVar[str] = "PGD adversarial training (Madry et al. 2018): train on PGD examples"

    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    random_start: bool = True
    warmup_epochs: int = 0
    attack: str = "pgd"

    def _validate(self) -> None:
        norm = self._norm("norm", ("linf", "l2"))
        self._eps("eps", norm)
        self._int("steps", 1)
        self._optional_float("step_size")
        self._bool("random_start")
        self._int("warmup_epochs", 0)
        crafting_attack_name(self.attack, norm)

    @property
    def effective_step_size(self) -> float:
        return default_step_size(self.eps, self.steps) if self.step_size is None else self.step_size

    def crafting_attack(self) -> Any:
        """The ``robustlab.attacks`` attack that crafts this defence's examples.

        It draws its random start from the global RNG (``seed=None``), which the training
        loop seeds per epoch, so training stays reproducible.
        """
        return build_crafting_attack(
            crafting_attack_name(self.attack, self.norm),
            eps=self.eps,
            steps=self.steps,
            abs_stepsize=self.effective_step_size,
            random_start=self.random_start,
        )

    def resolved(self) -> PGDTrainingConfig:
        return dataclasses.replace(self, step_size=self.effective_step_size)


@dataclass(frozen=True)
class FastFGSMConfig(DefenceConfig):
    """Fast adversarial training: FGSM from a random start (Wong, Rice, Kolter 2020, arXiv:2001.03994).

    One signed-gradient step of ``step_size`` from a uniform random point in the L-inf ball,
    projected back into the ball: ``loss = CE(f(x_adv), y)`` at about twice the cost of plain
    training. eps: L-inf radius in [0, 1] pixel units. step_size: None -> 1.25 * eps (the paper's
    alpha; much larger steps cause catastrophic overfitting).
    """

    name: ClassVar[str] = "fast-fgsm"
    summary: ClassVar[str] = (
        "fast adversarial training (Wong et al. 2020): FGSM from a random start"
    )

    eps: float = 8 / 255
    step_size: float | None = None
    warmup_epochs: int = 0

    def _validate(self) -> None:
        self._eps("eps", "linf")
        self._optional_float("step_size")
        self._int("warmup_epochs", 0)

    @property
    def effective_step_size(self) -> float:
        return 1.25 * self.eps if self.step_size is None else self.step_size

    def crafting_attack(self) -> Any:
        """One PGD step of ``step_size`` from a random start: ``robustlab.attacks``' 'pgd'."""
        return build_crafting_attack(
            "pgd", eps=self.eps, steps=1, abs_stepsize=self.effective_step_size, random_start=True
        )

    def resolved(self) -> FastFGSMConfig:
        return dataclasses.replace(self, step_size=self.effective_step_size)


@dataclass(frozen=True)
class TRADESConfig(DefenceConfig):
    """TRADES (Zhang et al. 2019, arXiv:1901.08573).

    ``loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))`` (batch mean), where
    x_adv maximises the KL term by PGD from ``x + 0.001 * N(0, 1)``. beta: robustness/accuracy
    trade-off (paper: 6). eps, steps, step_size (None -> 2.5 * eps / steps), norm as for 'pgd'.
    """

    name: ClassVar[str] = "trades"
    summary: ClassVar[str] = "TRADES (Zhang et al. 2019): clean loss + beta * KL to PGD examples"

    beta: float = 6.0
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    warmup_epochs: int = 0

    def _validate(self) -> None:
        self._float("beta")
        norm = self._norm("norm", ("linf", "l2"))
        self._eps("eps", norm)
        self._int("steps", 1)
        self._optional_float("step_size")
        self._int("warmup_epochs", 0)

    @property
    def effective_step_size(self) -> float:
        return default_step_size(self.eps, self.steps) if self.step_size is None else self.step_size

    def resolved(self) -> TRADESConfig:
        return dataclasses.replace(self, step_size=self.effective_step_size)


@dataclass(frozen=True)
class NSLConfig(DefenceConfig):
    """Adversarial regularisation as TensorFlow Neural Structured Learning does it.

    ``loss = CE(f(x), y) + multiplier * CE(f(x_nbr), y)``: the adversarial neighbour ``x_nbr``
    is built from the gradient of the labeled (supervised, batch-mean) loss, and the neighbour
    loss is the same supervised loss on it. Settings and defaults are those of NSL's
    ``nsl.configs.make_adv_reg_config`` (v1.4):

    multiplier=0.2: weight of the neighbour loss.
    adv_step_size=0.001: size of each step along the normalised gradient (pixel units).
    adv_grad_norm='l2': how the gradient is normalised, per example over all features:
        'l2' (g / ||g||_2), 'linf' (= NSL 'infinity': sign(g)) or 'l1'.
    pgd_iterations=1: gradient steps (1 = one FGM/FGSM-like step).
    pgd_epsilon=None: radius of the ball around x the neighbour is projected into (None: none;
        not supported with 'l1', as in NSL).
    random_init=False: start from a uniform random point of the pgd_epsilon ball (needs
        pgd_epsilon); every step then takes a fresh gradient.
    clip_value_min=None, clip_value_max=None: clip the neighbour's pixels after every step (None:
        unbounded, NSL's default; set 0 and 1 to keep neighbours valid images).
    warmup_epochs=0 (not in NSL): plain loss only for the first epochs.
    """

    name: ClassVar[str] = "nsl"
    summary: ClassVar[str] = (
        "adversarial regularisation as TF Neural Structured Learning: "
        "CE + multiplier * CE on adversarial neighbours"
    )

    multiplier: float = 0.2
    adv_step_size: float = 0.001
    adv_grad_norm: str = "l2"
    pgd_iterations: int = 1
    pgd_epsilon: float | None = None
    random_init: bool = False
    clip_value_min: float | None = None
    clip_value_max: float | None = None
    warmup_epochs: int = 0

    def _validate(self) -> None:
        self._float("multiplier")
        self._float("adv_step_size")
        norm = self._norm("adv_grad_norm", ("l2", "linf", "l1"))
        self._int("pgd_iterations", 1)
        epsilon = self._optional_float("pgd_epsilon")
        random_init = self._bool("random_init")
        low = self._optional_float("clip_value_min", None)
        high = self._optional_float("clip_value_max", None)
        self._int("warmup_epochs", 0)
        if low is not None and high is not None and low > high:
            raise UserError(f"clip_value_min ({low:g}) must be <= clip_value_max ({high:g})")
        if norm == "l1" and epsilon is not None:
            raise UserError("pgd_epsilon is not supported with adv_grad_norm 'l1' (nor in NSL)")
        if random_init and epsilon is None:
            raise UserError("random_init needs pgd_epsilon, the radius of the random start")
