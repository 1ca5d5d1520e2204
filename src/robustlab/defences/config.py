"""Typed settings of every defence, validated at construction (errors name the field).

All epsilons and step sizes are in [0, 1] pixel units (8/255 = 0.0314), the pixel convention of
the whole package. ``warmup_epochs`` (every defence) trains on the plain loss for epochs
1..warmup_epochs and adds the adversarial term from the next epoch on: a clean warm start that
keeps pretrained backbones from collapsing when adversarial fine-tuning begins.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from robustlab.errors import UserError, check_range, unknown_name

if TYPE_CHECKING:
    from robustlab.attacks import AttackSpec

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

    def _filled(self, **derived: Any) -> Self:
        """A copy with derived defaults filled in (already validated: no second check)."""
        copied = copy.copy(self)
        for field, value in derived.items():
            object.__setattr__(copied, field, value)
        return copied

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


# The L2 form of a Linf attack whose name is not NAME-l2.
_L2_FORMS = {"fgsm": "fgm"}
# TRADES' initial jitter around the clean input (official code: 0.001 * randn).
TRADES_INIT_STD = 0.001


def crafting_attacks() -> list[str]:
    """The registry's attacks that can craft training examples: every fixed-budget gradient
    attack (those taking ``eot_samples``), not minimum-norm, target-only or cascade attacks."""
    from robustlab.attacks import AutoAttack, MinimumNormAttack
    from robustlab.attacks.registry import ATTACKS

    def crafts(cls: type) -> bool:
        names = {field.name for field in dataclasses.fields(cls)}
        composite = issubclass(cls, MinimumNormAttack | AutoAttack)  # AutoAttack runs Square
        return "eot_samples" in names and not cls.requires_target and not composite

    return sorted(name for name, cls in ATTACKS.items() if crafts(cls))


def crafting_attack_name(attack: str, norm: str) -> str:
    """The registry name of the crafting attack ``attack`` in ``norm`` (errors name the field)."""
    from robustlab.attacks import attack_class

    attack_class(attack)  # an unknown name: one line with the closest name
    allowed = crafting_attacks()
    if attack not in allowed:
        raise UserError(
            f"attack '{attack}' cannot craft training examples: only fixed-budget gradient "
            f"attacks can ({', '.join(allowed)})"
        )
    if attack_class(attack).norm == norm:
        return attack
    other = _L2_FORMS.get(attack, f"{attack}-l2") if norm == "l2" else None
    if other not in allowed:
        raise UserError(f"attack '{attack}' has no {norm} form; choose another attack or norm")
    return other  # type: ignore[return-value]


def crafting_spec(name: str, **settings: Any) -> AttackSpec:
    """The ``AttackSpec`` of ``name`` with the settings it knows, seeded from the global RNG
    (``seed=None``: the training loop seeds it per epoch, so training stays reproducible)."""
    from robustlab.attacks import AttackSpec, setting_names
    from robustlab.attacks.spec import validated

    if settings.get("eps") == 0:  # a zero ball: every step is zero, which PGD's checks refuse
        settings.pop("abs_stepsize", None)
    known = setting_names(name)
    kept = {key: value for key, value in settings.items() if key in known and value is not None}
    return validated(AttackSpec, {"name": name, "settings": {**kept, "seed": None}})


def attack_default(name: str, field: str) -> Any:
    """A setting's default, read from the attack class (the one place it is written)."""
    from robustlab.attacks import get_attack

    return getattr(get_attack(name), field)


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s rule of thumb: ``2.5 * eps / steps`` lets PGD reach the ball's surface."""
    return 2.5 * eps / steps


@dataclass(frozen=True)
class PGDTrainingConfig(DefenceConfig):
    """PGD adversarial training (Madry et al. 2018, arXiv:1706.06083).

    Each batch is replaced by its adversarial examples: ``loss = CE(f(x_adv), y)``.
    attack: the gradient attack of ``robustlab.attacks`` that crafts them ('pgd', the default,
    is exactly the evaluation's PGD; 'apgd', 'mifgsm', 'ifgsm', 'fgsm', ... any fixed-budget
    gradient attack of the registry), in its L2 form when norm='l2'. eps (ball radius, pixel
    units) and steps: None takes the attack's own default. step_size: the attack's per-step size
    in pixel units (``abs_stepsize``), None -> 2.5 * eps / steps. random_start: start
    uniformly inside the ball. The examples are crafted by the same code that evaluates.
    """

    name: ClassVar[str] = "pgd"
    summary: ClassVar[str] = "PGD adversarial training (Madry et al. 2018): train on PGD examples"

    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    norm: str = "linf"
    random_start: bool = True
    warmup_epochs: int = 0
    attack: str = "pgd"

    def _validate(self) -> None:
        norm = self._norm("norm", ("linf", "l2"))
        self._int("warmup_epochs", 0)
        crafting_attack_name(self.attack, norm)
        self.crafting_spec()  # the attack checks eps, steps, step size and start

    def _attack_name(self) -> str:
        return crafting_attack_name(self.attack, self.norm)

    def resolved(self) -> PGDTrainingConfig:
        name = self._attack_name()
        eps = attack_default(name, "eps") if self.eps is None else self.eps
        steps = self.steps
        if steps is None:
            steps = attack_default(name, "steps") if "steps" in _fields(name) else 1
        step = self.step_size
        if step is None and isinstance(steps, int) and steps >= 1:  # else the attack refuses
            step = default_step_size(eps, steps)
        return self._filled(eps=eps, steps=steps, step_size=step)

    def crafting_spec(self) -> AttackSpec:
        """The ``robustlab.attacks`` attack that crafts this defence's examples."""
        c = self.resolved()
        return crafting_spec(
            self._attack_name(),
            eps=c.eps,
            steps=c.steps,
            abs_stepsize=c.step_size,
            random_start=c.random_start,
        )


def _fields(name: str) -> list[str]:
    from robustlab.attacks import setting_names

    return setting_names(name)


@dataclass(frozen=True)
class FastFGSMConfig(DefenceConfig):
    """Fast adversarial training: FGSM from a random start (Wong, Rice, Kolter 2020, arXiv:2001.03994).

    One signed-gradient step of ``step_size`` from a uniform random point in the L-inf ball,
    projected back into the ball (``robustlab.attacks``' 'pgd' with one step):
    ``loss = CE(f(x_adv), y)`` at about twice the cost of plain training. eps: L-inf radius in
    [0, 1] pixel units (None: pgd's default). step_size: None -> 1.25 * eps (the paper's alpha;
    much larger steps cause catastrophic overfitting).
    """

    name: ClassVar[str] = "fast-fgsm"
    summary: ClassVar[str] = (
        "fast adversarial training (Wong et al. 2020): FGSM from a random start"
    )

    eps: float | None = None
    step_size: float | None = None
    warmup_epochs: int = 0

    def _validate(self) -> None:
        self._int("warmup_epochs", 0)
        self.crafting_spec()

    def resolved(self) -> FastFGSMConfig:
        eps = attack_default("pgd", "eps") if self.eps is None else self.eps
        step = 1.25 * eps if self.step_size is None else self.step_size
        return self._filled(eps=eps, step_size=step)

    def crafting_spec(self) -> AttackSpec:
        c = self.resolved()
        return crafting_spec("pgd", eps=c.eps, steps=1, abs_stepsize=c.step_size, random_start=True)


@dataclass(frozen=True)
class TRADESConfig(DefenceConfig):
    """TRADES (Zhang et al. 2019, arXiv:1901.08573).

    ``loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))`` (batch mean), where
    x_adv maximises the KL term by ``robustlab.attacks``' PGD with ``loss='kl'``, from
    ``x + 0.001 * N(0, 1)``. beta: robustness/accuracy trade-off (paper: 6). eps, steps,
    step_size (None -> 2.5 * eps / steps), norm as for 'pgd'.
    """

    name: ClassVar[str] = "trades"
    summary: ClassVar[str] = "TRADES (Zhang et al. 2019): clean loss + beta * KL to PGD examples"

    beta: float = 6.0
    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    norm: str = "linf"
    warmup_epochs: int = 0

    def _validate(self) -> None:
        self._float("beta")
        self._norm("norm", ("linf", "l2"))
        self._int("warmup_epochs", 0)
        self.crafting_spec()

    def resolved(self) -> TRADESConfig:
        pgd = PGDTrainingConfig(
            eps=self.eps, steps=self.steps, step_size=self.step_size, norm=self.norm
        ).resolved()
        return self._filled(eps=pgd.eps, steps=pgd.steps, step_size=pgd.step_size)

    def crafting_spec(self) -> AttackSpec:
        c = self.resolved()
        return crafting_spec(
            crafting_attack_name("pgd", self.norm),
            eps=c.eps,
            steps=c.steps,
            abs_stepsize=c.step_size,
            loss="kl",
            start_sigma=TRADES_INIT_STD,
        )


@dataclass(frozen=True)
class NSLConfig(DefenceConfig):
    """Adversarial regularisation as TensorFlow Neural Structured Learning does it.

    ``loss = CE(f(x), y) + multiplier * CE(f(x_nbr), y)``: the adversarial neighbour ``x_nbr``
    is built from the gradient of the labeled loss, and the neighbour loss is the same
    supervised loss on it. Settings and defaults are those of NSL's
    ``nsl.configs.make_adv_reg_config`` (v1.4); the neighbour is crafted by
    ``robustlab.attacks``: one step is FGM ('l2': g / ||g||_2) or FGSM ('linf' = NSL's
    'infinity': sign(g)), more steps (or a random start) PGD in that norm.

    multiplier=0.2: weight of the neighbour loss.
    adv_step_size=0.001: size of each step along the normalised gradient (pixel units).
    adv_grad_norm='l2': 'l2' or 'linf' (NSL's 'l1' has no attack in robustlab.attacks).
    pgd_iterations=1: gradient steps (1 = one FGM/FGSM step).
    pgd_epsilon=None: radius of the ball around x the neighbour is projected into (None: none).
    random_init=False: start from a uniform random point of the pgd_epsilon ball (needs
        pgd_epsilon).
    clip_value_min=None, clip_value_max=None: clip the neighbour's pixels (None: unbounded,
        NSL's default, for one step; PGD's iterates always stay in [0, 1], the attack contract,
        and the clip values then apply to its result).
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
        self._norm("adv_grad_norm", ("l2", "linf"))
        self._int("pgd_iterations", 1)
        epsilon = self._optional_float("pgd_epsilon")
        random_init = self._bool("random_init")
        low = self._optional_float("clip_value_min", None)
        high = self._optional_float("clip_value_max", None)
        self._int("warmup_epochs", 0)
        if low is not None and high is not None and low > high:
            raise UserError(f"clip_value_min ({low:g}) must be <= clip_value_max ({high:g})")
        if random_init and epsilon is None:
            raise UserError("random_init needs pgd_epsilon, the radius of the random start")
        self.crafting_spec()

    @property
    def one_step(self) -> bool:
        """One step from the clean input: FGSM / FGM's direction, NSL's unclipped step."""
        return self.pgd_iterations == 1 and not self.random_init

    def crafting_spec(self) -> AttackSpec:
        step, norm = self.adv_step_size, self.adv_grad_norm
        reach = step * self.pgd_iterations  # as far as the steps can go: no ball
        eps = reach if self.pgd_epsilon is None else min(self.pgd_epsilon, reach)
        if norm == "linf":
            eps = min(eps, 1.0)  # beyond 1 the pixel box is the only bound
        if self.one_step:
            return crafting_spec(crafting_attack_name("fgsm", norm), eps=eps)
        return crafting_spec(
            crafting_attack_name("pgd", norm),
            eps=eps,
            steps=self.pgd_iterations,
            abs_stepsize=step,
            random_start=self.random_init,
        )
