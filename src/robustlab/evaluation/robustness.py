"""Robustness curves: target accuracy vs epsilon under white-box, black-box and noise perturbations.

``robustness_curves(target_model, x, y, CurveRequest(attack, epsilons), surrogate_models={...})``
gives the leaf study's three-curve figure in one call:

* white-box: adversarials crafted on the target itself;
* black-box: adversarials crafted on each surrogate model and scored on the target;
* noise: random perturbations of the same size (sign noise for L-inf attacks, Gaussian
  noise scaled to the same L2 norm for L2 attacks), the baseline an attack must beat.

Accuracies are fractions in [0, 1] of all ``n`` images (clean mistakes count as errors).
Epsilons are in [0, 1] pixel units. The result is JSON-able (``CurvesResult.to_dict``) and carries
the sanity flags of ``robustlab.evaluation.sanity``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack, SweepResult, as_logits_model, get_attack
from robustlab.attacks.sweep import sweep_chunks
from robustlab.errors import UserError
from robustlab.evaluation.accuracy import model_device, predict_logits, require_eval_mode
from robustlab.evaluation.grade import evaluation_grade
from robustlab.evaluation.sanity import flags_to_json, sanity_flags
from robustlab.reporting.results import CURVES_FORMAT

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 128
# Random perturbations with the same budget as an attack of each norm (the leaf study's baseline).
NOISE_FOR_NORM = {"linf": "sign-noise"}


def attack_settings(attack: Attack) -> dict[str, Any]:
    """The attack's name, norm and settings as a JSON-able dict (for result files)."""
    return {"name": attack.name, "norm": attack.norm, **attack.settings()}


def check_epsilons(epsilons: Iterable[float], attack: Attack) -> list[float]:
    """Validate epsilons for ``attack`` (pixel units); return them ascending, without duplicates.

    Values are rounded to 12 significant digits, so a range like 0.01:0.05:5 gives 0.03 and
    not 0.030000000000000002 in result files.
    """
    values = [float(f"{float(e):.12g}") for e in epsilons]
    if not values:
        raise UserError("the epsilon list is empty; give at least one epsilon (e.g. --eps 8/255)")
    if attack.norm == "none":
        raise UserError(
            f"attack '{attack.name}' has no epsilon budget, so it has no accuracy-vs-epsilon curve"
        )
    for eps in values:
        if not math.isfinite(eps):
            raise UserError(f"epsilon must be a finite number, got {eps}")
        attack.with_eps(eps)  # the attack's own range check names the field
    ordered = sorted(set(values))
    if ordered != values:
        log.info("epsilons sorted ascending: %s", ordered)
    return ordered


def check_compatible(models: Mapping[str, nn.Module], x: torch.Tensor) -> int:
    """All models must take images shaped like ``x`` and share one class count; returns it.

    Adversarials are only transferable between models that see the same input and answer in
    the same label space, so a mismatch is a ``UserError`` naming the model.
    """
    counts: dict[str, int] = {}
    shape = tuple(x.shape[1:])
    for name, model in models.items():
        require_eval_mode(model, f"model '{name}'")
        spec = getattr(model, "spec", None)
        if spec is not None and (spec.in_chans, spec.input_size) != (shape[0], shape[-1]):
            raise UserError(
                f"model '{name}' takes {spec.in_chans}x{spec.input_size}x{spec.input_size} images "
                f"but the evaluation images are {'x'.join(map(str, shape))}"
            )
        try:
            counts[name] = int(predict_logits(model, x[:1]).shape[1])
        except RuntimeError as error:
            raise UserError(
                f"model '{name}' cannot take images shaped {'x'.join(map(str, shape))}: "
                f"{str(error).splitlines()[0]}"
            ) from None
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"'{name}' has {count}" for name, count in counts.items())
        raise UserError(f"models must share the same classes to transfer attacks; {shown} outputs")
    return next(iter(counts.values()))


@dataclass
class Outcome:
    """Per-sample results of one perturbation source, scored on the target, at every epsilon.

    Shapes: ``E`` epsilons, ``N`` images, ``K`` classes. ``pred``/``conf``: target's predicted
    class and its softmax probability on the perturbed image; ``l2``/``linf``: the norms of
    ``x_adv - x`` in pixel units; ``examples``: index -> ``(E, C, H, W)`` perturbed images and
    ``example_probs``: index -> ``(E, K)`` target probabilities, for the indices asked to keep.
    """

    epsilons: list[float]
    pred: torch.Tensor  # (E, N) int64
    conf: torch.Tensor  # (E, N) float32
    l2: torch.Tensor  # (E, N) float32
    linf: torch.Tensor  # (E, N) float32
    min_eps: torch.Tensor | None = None  # (N,) from minimum-norm attacks, inf = not found
    stage: torch.Tensor | None = None  # (E, N) cascade member that fooled each image (autoattack)
    examples: dict[int, torch.Tensor] = field(default_factory=dict)
    example_probs: dict[int, torch.Tensor] = field(default_factory=dict)

    def correct(self, y: torch.Tensor) -> torch.Tensor:
        """``(E, N)`` bool: the target still classifies the perturbed image correctly."""
        return self.pred == y.unsqueeze(0)

    def accuracy(self, y: torch.Tensor) -> list[float]:
        return self.correct(y).float().mean(dim=1).tolist()

    @classmethod
    def concat(cls, parts: Sequence[Outcome]) -> Outcome:
        """Join per-batch outcomes along the image axis (examples keep their global index)."""
        min_eps = [part.min_eps for part in parts]
        stages = [part.stage for part in parts]
        return cls(
            epsilons=parts[0].epsilons,
            pred=torch.cat([part.pred for part in parts], dim=1),
            conf=torch.cat([part.conf for part in parts], dim=1),
            l2=torch.cat([part.l2 for part in parts], dim=1),
            linf=torch.cat([part.linf for part in parts], dim=1),
            min_eps=None if any(m is None for m in min_eps) else torch.cat(min_eps),  # type: ignore[arg-type]
            stage=None if any(s is None for s in stages) else torch.cat(stages, dim=1),  # type: ignore[arg-type]
            examples={i: e for part in parts for i, e in part.examples.items()},
            example_probs={i: p for part in parts for i, p in part.example_probs.items()},
        )


@dataclass(frozen=True)
class ScoreRequest:
    """One perturbation source for ``score_perturbations``: an attack over epsilons.

    ``worst_case``: see ``robustlab.attacks.sweep`` (each image's strongest adversarial over
    every epsilon up to the current one, judged on the crafting model); False crafts a
    full-strength adversarial at every epsilon. ``keep_examples``: image indices whose
    perturbed images (and target probabilities) the ``Outcome`` keeps.
    """

    attack: Attack
    epsilons: tuple[float, ...]
    worst_case: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    keep_examples: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilons", tuple(self.epsilons))
        object.__setattr__(self, "keep_examples", tuple(sorted(set(self.keep_examples))))


def score_perturbations(
    target_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    request: ScoreRequest,
    *,
    crafting_model: nn.Module | None = None,
    target_classes: torch.Tensor | None = None,
) -> Outcome:
    """Craft ``request.attack`` on ``crafting_model`` (default: the target) and score on the target.

    ``x``: ``(N, C, H, W)`` in [0, 1]; ``y``: ``(N,)`` true labels; ``target_classes``: ``(N,)``
    classes for a targeted attack. Runs batch by batch so memory stays at one batch times
    ``E`` epsilons; only the images in ``request.keep_examples`` are returned.
    """
    crafting_model = target_model if crafting_model is None else crafting_model
    require_eval_mode(target_model, "target model")
    require_eval_mode(crafting_model, "surrogate model")
    scorer = _Scorer(as_logits_model(target_model), model_device(target_model), request)
    # under torchrun each rank crafts and scores its own batches; only the scores are gathered
    parts = sweep_chunks(
        request.attack,
        crafting_model,
        x,
        y,
        list(request.epsilons),
        reduce=lambda part, xb, result: scorer.score(xb, part.start, result),
        target=target_classes,
        batch_size=request.batch_size,
        keep_adversarials=True,
        worst_case=request.worst_case,
        device=model_device(crafting_model),
    )
    return Outcome.concat(parts)


@dataclass(frozen=True)
class _Scorer:
    """Scores one batch's adversarials (every epsilon) on the target model."""

    logits: nn.Module  # the target, returning plain logits
    device: torch.device  # the target's
    request: ScoreRequest

    def score(self, xb: torch.Tensor, start: int, result: SweepResult) -> Outcome:
        """The ``Outcome`` of images ``start .. start + len(xb)`` (examples by global index)."""
        wanted = [i for i in self.request.keep_examples if start <= i < start + len(xb)]
        preds, confs, l2s, linfs = [], [], [], []  # one (B,) tensor per epsilon
        examples: dict[int, list[torch.Tensor]] = {i: [] for i in wanted}
        example_probs: dict[int, list[torch.Tensor]] = {i: [] for i in wanted}
        for adversarial in result.adversarials or []:
            adversarial = adversarial.detach()
            with torch.no_grad():
                probs = self.logits(adversarial.to(self.device)).float().softmax(dim=1).cpu()
            conf, pred = probs.max(dim=1)
            delta = (adversarial - xb).cpu().flatten(1)
            preds.append(pred)
            confs.append(conf)
            l2s.append(delta.norm(dim=1))
            linfs.append(delta.abs().amax(dim=1))
            for index in wanted:
                examples[index].append(adversarial[index - start].cpu())
                example_probs[index].append(probs[index - start])
        return Outcome(
            epsilons=list(self.request.epsilons),
            pred=torch.stack(preds),
            conf=torch.stack(confs),
            l2=torch.stack(l2s),
            linf=torch.stack(linfs),
            min_eps=None if result.min_eps is None else result.min_eps.detach().float().cpu(),
            stage=None if result.stage is None else result.stage.cpu(),
            examples={i: torch.stack(images) for i, images in examples.items()},
            example_probs={i: torch.stack(probs) for i, probs in example_probs.items()},
        )


@dataclass
class CurvesResult:
    """Accuracy-vs-epsilon curves for one target; ``to_dict()`` is what ``curves.json`` holds.

    ``target``: the target model's name. ``curves``: list of ``{"label", "kind" ('white-box' |
    'black-box' | 'noise'), "source" (name of the model that crafted the perturbation, None for
    noise), "accuracy" (one fraction per epsilon)}``. ``outcomes`` (per-sample tensors, by
    curve label) is kept in memory only.
    """

    target: str  # the target model's name (the key curves.json has always used)
    attack: dict[str, Any]
    epsilons: list[float]
    n: int
    clean_accuracy: float
    curves: list[dict[str, Any]]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    eps0_accuracy: float | None = None
    unbounded_accuracy: float | None = None
    flags: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # robustlab.evaluation.grade.evaluation_grade
    outcomes: dict[str, Outcome] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "outcomes"}
        return {
            "format": CURVES_FORMAT,
            "format_version": 1,
            **data,
            "epsilons_255": [e * 255 for e in self.epsilons],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurvesResult:
        if data.get("format") != CURVES_FORMAT:
            raise UserError(f"not a robustness-curves result (format {data.get('format')!r})")
        names = {f.name for f in dataclasses.fields(cls)} - {"outcomes"}
        return cls(**{k: v for k, v in data.items() if k in names})

    def curve(self, kind: str, source: str | None = None) -> dict[str, Any]:
        """The first curve of ``kind`` (and ``source``, when given)."""
        for curve in self.curves:
            if curve["kind"] == kind and (source is None or curve["source"] == source):
                return curve
        raise KeyError(f"no {kind} curve{'' if source is None else f' from {source}'}")

    def add_curve(
        self, label: str, kind: str, source: str | None, outcome: Outcome, y: torch.Tensor
    ) -> None:
        """Append the curve of ``outcome`` (scored against true labels ``y``) and keep it."""
        self.curves.append(
            {"label": label, "kind": kind, "source": source, "accuracy": outcome.accuracy(y)}
        )
        self.outcomes[label] = outcome
        log.info("%s: %s", label, ", ".join(f"{a:.3f}" for a in self.curves[-1]["accuracy"]))


def noise_attack_for(attack: Attack, seed: int = 0) -> Attack | None:
    """Random noise with the same budget as ``attack`` (sign noise for L-inf); None if there is none.

    The attack registry has L-inf noise only, so L2 attacks get no noise curve.
    """
    name = NOISE_FOR_NORM.get(attack.norm)
    if name is None:
        log.warning(
            "no %s-bounded noise baseline available; the noise curve is skipped", attack.norm
        )
        return None
    return get_attack(name, eps=attack.eps, seed=seed)


@dataclass(frozen=True)
class CurveRequest:
    """What ``robustness_curves`` measures, validated once when it is made.

    ``attack`` over ``epsilons`` (pixel units; checked, sorted ascending, deduplicated).
    ``target_name``: the target's name in the result. ``noise``: True for the matching noise
    baseline (``noise_attack_for``), False for none, or an explicit noise ``Attack``.
    ``worst_case`` (white-box curve only): an image counts as broken at eps once any budget
    up to eps broke it, as foolbox and AutoAttack report; False attacks afresh at every eps,
    as the leaf study did (such a curve can rise). ``keep_examples``: image indices whose
    perturbed images are kept in ``CurvesResult.outcomes`` (for figures). ``sanity``: run the
    sanity checks (``unbounded_check``: PGD at eps = 1, the costly one) and store the flags.
    ``seed``: seed of the noise baseline and of the global RNG while measuring (restored after).
    """

    attack: Attack
    epsilons: tuple[float, ...]
    target_name: str = "target"
    noise: bool | Attack = True
    worst_case: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    keep_examples: tuple[int, ...] = ()
    sanity: bool = True
    unbounded_check: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilons", tuple(check_epsilons(self.epsilons, self.attack)))
        object.__setattr__(self, "keep_examples", tuple(self.keep_examples))

    def score_request(self) -> ScoreRequest:
        """The black-box request (fresh full-strength attack per eps); ``replace`` for others."""
        return ScoreRequest(
            self.attack, self.epsilons, batch_size=self.batch_size, keep_examples=self.keep_examples
        )

    def noise_attack(self) -> Attack | None:
        if isinstance(self.noise, Attack):
            return self.noise
        return noise_attack_for(self.attack, self.seed) if self.noise else None

    def settings(self, noise_attack: Attack | None, targeted: bool) -> dict[str, Any]:
        """The ``settings`` entry of ``curves.json``."""
        return {
            "worst_case": self.worst_case,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "noise": None if noise_attack is None else attack_settings(noise_attack),
            "targeted": targeted,
        }


def robustness_curves(
    target_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    request: CurveRequest,
    *,
    surrogate_models: Mapping[str, nn.Module] | None = None,
    target_classes: torch.Tensor | None = None,
) -> CurvesResult:
    """Accuracy of ``target_model`` vs epsilon: white-box, one black-box curve per surrogate, noise.

    ``x``: ``(N, C, H, W)`` float32 in [0, 1]; ``y``: ``(N,)`` int64. ``surrogate_models``:
    name -> model (same classes and input size as the target). ``target_classes``: ``(N,)``
    classes for a targeted attack (white-box and black-box curves). Black-box and noise curves
    always craft afresh per eps, at full strength. The global RNG is restored afterwards.
    """
    surrogate_models = dict(surrogate_models or {})
    if request.target_name in surrogate_models:
        raise UserError(f"surrogate name '{request.target_name}' is also the target's name")
    check_compatible({request.target_name: target_model, **surrogate_models}, x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(request.seed)
        result = _measure_curves(target_model, x, y, request, surrogate_models, target_classes)
        if request.sanity:
            flags = sanity_flags(
                target_model,
                x,
                y,
                result.to_dict(),
                unbounded=request.unbounded_check,
                batch_size=request.batch_size,
            )
            result.flags = flags_to_json(flags)
            result.unbounded_accuracy = flags.unbounded_accuracy
    return result


def _measure_curves(
    target_model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    request: CurveRequest,
    surrogate_models: Mapping[str, nn.Module],
    target_classes: torch.Tensor | None,
) -> CurvesResult:
    """The curves of ``robustness_curves`` without the sanity checks, in its RNG order."""
    clean_logits = predict_logits(target_model, x, request.batch_size)
    clean_accuracy = float((clean_logits.argmax(1) == y).float().mean())
    target_name, attack = request.target_name, request.attack
    result = CurvesResult(
        target=target_name,
        attack=attack_settings(attack),
        epsilons=list(request.epsilons),
        n=len(x),
        clean_accuracy=clean_accuracy,
        curves=[],
        models={target_name: {"role": "target", "clean_accuracy": clean_accuracy}},
    )
    black_box = request.score_request()
    white_box = replace(black_box, worst_case=request.worst_case)
    white = score_perturbations(target_model, x, y, white_box, target_classes=target_classes)
    label = f"white-box {attack.name} on {target_name}"
    result.add_curve(label, "white-box", target_name, white, y)
    for surrogate_name, surrogate_model in surrogate_models.items():
        accuracy = predict_logits(surrogate_model, x, request.batch_size).argmax(1) == y
        result.models[surrogate_name] = {
            "role": "surrogate",
            "clean_accuracy": float(accuracy.float().mean()),
        }
        outcome = score_perturbations(
            target_model,
            x,
            y,
            black_box,
            crafting_model=surrogate_model,
            target_classes=target_classes,
        )
        label = f"black-box {attack.name} from {surrogate_name}"
        result.add_curve(label, "black-box", surrogate_name, outcome, y)
    noise_attack = request.noise_attack()
    if noise_attack is not None:
        outcome = score_perturbations(target_model, x, y, replace(black_box, attack=noise_attack))
        result.add_curve(f"{noise_attack.name} (random)", "noise", None, outcome, y)
    # the attack with a zero budget on every image: must equal clean accuracy (a sanity check)
    at_zero = ScoreRequest(attack, (0.0,), batch_size=request.batch_size)
    result.eps0_accuracy = score_perturbations(target_model, x, y, at_zero).accuracy(y)[0]
    result.settings = request.settings(noise_attack, targeted=target_classes is not None)
    result.evaluation = evaluation_grade(attack, white.stage, clean_logits.shape[1])
    return result
