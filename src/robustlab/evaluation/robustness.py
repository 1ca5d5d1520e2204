"""Robustness curves: target accuracy vs epsilon under white-box, black-box and noise perturbations.

``robustness_curves(target, x, y, attack, epsilons, surrogates={...}, noise=True)`` gives the
leaf study's three-curve figure in one call:

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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack, as_logits_model, get_attack
from robustlab.attacks.sweep import sweep_chunks
from robustlab.errors import UserError
from robustlab.evaluation.accuracy import model_device, predict_logits, require_eval_mode
from robustlab.evaluation.grade import evaluation_grade
from robustlab.evaluation.sanity import (
    Flag,
    curve_flags,
    gradient_flags,
    output_flags,
    unbounded_attack_flags,
)
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


def score_perturbations(
    target: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    epsilons: Sequence[float],
    *,
    source: nn.Module | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep: Iterable[int] = (),
    target_labels: torch.Tensor | None = None,
    worst_case: bool = False,
) -> Outcome:
    """Craft ``attack`` at each epsilon on ``source`` (default: the target) and score on ``target``.

    ``x``: ``(N, C, H, W)`` in [0, 1]; ``y``: ``(N,)`` true labels; ``target_labels``: ``(N,)``
    classes for a targeted attack. ``worst_case``: see ``robustlab.attacks.sweep`` (each image's
    strongest adversarial over every epsilon up to the current one, judged on ``source``);
    False crafts a full-strength adversarial at every epsilon. Runs batch by batch so memory
    stays at one batch times ``E`` epsilons; only the images in ``keep`` are returned.
    """
    epsilons = list(epsilons)
    crafter = target if source is None else source
    require_eval_mode(target, "target model")
    require_eval_mode(crafter, "surrogate model")
    score = as_logits_model(target)
    crafter_device, target_device = model_device(crafter), model_device(target)
    keep = sorted(set(keep))

    def scored(part: slice, xb: torch.Tensor, result: Any) -> dict[str, Any]:
        """One batch's adversarials scored on the target (on the rank that crafted them)."""
        kept = [index for index in keep if part.start <= index < part.stop]
        rows: dict[str, Any] = {"pred": [], "conf": [], "l2": [], "linf": [], "probs": []}
        for adversarial in result.adversarials:
            adversarial = adversarial.detach()
            with torch.no_grad():
                probs = score(adversarial.to(target_device)).float().softmax(dim=1).cpu()
            conf, pred = probs.max(dim=1)
            delta = (adversarial - xb).cpu().flatten(1)
            rows["pred"].append(pred)
            rows["conf"].append(conf)
            rows["l2"].append(delta.norm(dim=1))
            rows["linf"].append(delta.abs().amax(dim=1))
            rows["probs"].append(probs[[i - part.start for i in kept]])
        at = [i - part.start for i in kept]
        return {
            **{key: torch.stack(rows[key]) for key in ("pred", "conf", "l2", "linf")},
            "min_eps": None if result.min_eps is None else result.min_eps.detach().float().cpu(),
            "stage": None if result.stage is None else result.stage.cpu(),
            "kept": kept,
            "examples": torch.stack([adv[at].detach().cpu() for adv in result.adversarials], 1),
            "example_probs": torch.stack(rows["probs"], 1),
        }

    # each rank crafts and scores its own batches under torchrun; the scores are gathered
    parts = sweep_chunks(
        attack,
        crafter,
        x,
        y,
        epsilons,
        reduce=scored,
        target=target_labels,
        batch_size=batch_size,
        keep_adversarials=True,
        worst_case=worst_case,
        device=crafter_device,
    )
    preds = [part["pred"] for part in parts]
    confs = [part["conf"] for part in parts]
    l2s = [part["l2"] for part in parts]
    linfs = [part["linf"] for part in parts]
    min_eps = [part["min_eps"] for part in parts]
    stages = [part["stage"] for part in parts]
    examples = {i: p["examples"][k] for p in parts for k, i in enumerate(p["kept"])}
    example_probs = {i: p["example_probs"][k] for p in parts for k, i in enumerate(p["kept"])}
    return Outcome(
        epsilons=epsilons,
        pred=torch.cat(preds, dim=1),
        conf=torch.cat(confs, dim=1),
        l2=torch.cat(l2s, dim=1),
        linf=torch.cat(linfs, dim=1),
        min_eps=None if any(m is None for m in min_eps) else torch.cat(min_eps),
        stage=None if any(s is None for s in stages) else torch.cat(stages, dim=1),  # type: ignore[misc]
        examples=examples,
        example_probs=example_probs,
    )


@dataclass
class CurvesResult:
    """Accuracy-vs-epsilon curves for one target; ``to_dict()`` is what ``curves.json`` holds.

    ``curves``: list of ``{"label", "kind" ('white-box' | 'black-box' | 'noise'), "source"
    (model that crafted the perturbation, None for noise), "accuracy" (one fraction per epsilon)}``.
    ``outcomes`` (per-sample tensors, by curve label) is kept in memory only.
    """

    target: str
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


def _eps0_accuracy(
    target: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int
) -> float:
    """Accuracy under the attack run on every image with a zero budget (must equal clean)."""
    return score_perturbations(target, x, y, attack, [0.0], batch_size=batch_size).accuracy(y)[0]


def robustness_curves(
    target: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Attack,
    epsilons: Iterable[float],
    *,
    surrogates: Mapping[str, nn.Module] | None = None,
    noise: bool | Attack = True,
    target_name: str = "target",
    target_labels: torch.Tensor | None = None,
    worst_case: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep: Iterable[int] = (),
    sanity: bool = True,
    unbounded_check: bool = True,
    seed: int = 0,
) -> CurvesResult:
    """Accuracy of ``target`` vs epsilon: white-box, one black-box curve per surrogate, and noise.

    ``x``: ``(N, C, H, W)`` float32 in [0, 1]; ``y``: ``(N,)`` int64; ``epsilons`` in pixel
    units. ``surrogates``: name -> model (same classes and input size as the target).
    ``noise``: True for the matching noise baseline, or an explicit noise ``Attack``.
    ``target_labels``: ``(N,)`` classes for a targeted attack. ``worst_case`` (white-box
    curve only): an image counts as broken at eps once any budget up to eps broke it, as
    foolbox and AutoAttack report; False attacks afresh at every eps, as the leaf study did
    (such a curve can rise). Black-box and noise curves always craft afresh per eps, at full
    strength. ``keep``: image indices whose perturbed images are kept in ``outcomes`` (for
    figures). ``sanity``: run the model probes (``unbounded_check``: PGD at eps = 1, the costly
    one) and the curve checks, and store the flags. ``seed``: seed of the noise baseline; the
    global RNG is restored afterwards.
    """
    epsilons = check_epsilons(epsilons, attack)
    surrogates = dict(surrogates or {})
    if target_name in surrogates:
        raise UserError(f"surrogate name '{target_name}' is also the target's name")
    check_compatible({target_name: target, **surrogates}, x)
    keep = list(keep)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clean_logits = predict_logits(target, x, batch_size)
        clean_accuracy = float((clean_logits.argmax(1) == y).float().mean())
        models = {target_name: {"role": "target", "clean_accuracy": clean_accuracy}}
        curves, outcomes = [], {}

        def add(label: str, kind: str, source: str | None, outcome: Outcome) -> None:
            curves.append(
                {"label": label, "kind": kind, "source": source, "accuracy": outcome.accuracy(y)}
            )
            outcomes[label] = outcome
            log.info("%s: %s", label, ", ".join(f"{a:.3f}" for a in curves[-1]["accuracy"]))

        common = {"batch_size": batch_size, "keep": keep, "target_labels": target_labels}
        white = score_perturbations(target, x, y, attack, epsilons, worst_case=worst_case, **common)
        add(f"white-box {attack.name} on {target_name}", "white-box", target_name, white)
        for name, surrogate in surrogates.items():
            accuracy = predict_logits(surrogate, x, batch_size).argmax(1) == y
            models[name] = {"role": "surrogate", "clean_accuracy": float(accuracy.float().mean())}
            outcome = score_perturbations(
                target, x, y, attack, epsilons, source=surrogate, **common
            )
            add(f"black-box {attack.name} from {name}", "black-box", name, outcome)
        if isinstance(noise, Attack):
            noise_attack: Attack | None = noise
        else:
            noise_attack = noise_attack_for(attack, seed) if noise else None
        if noise_attack is not None:
            outcome = score_perturbations(
                target, x, y, noise_attack, epsilons, batch_size=batch_size, keep=keep
            )
            add(f"{noise_attack.name} (random)", "noise", None, outcome)
        result = CurvesResult(
            target=target_name,
            attack=attack_settings(attack),
            epsilons=epsilons,
            n=len(x),
            clean_accuracy=clean_accuracy,
            curves=curves,
            models=models,
            eps0_accuracy=_eps0_accuracy(target, x, y, attack, batch_size),
            settings={
                "worst_case": worst_case,
                "batch_size": batch_size,
                "seed": seed,
                "noise": None if noise_attack is None else attack_settings(noise_attack),
                "targeted": target_labels is not None,
            },
            outcomes=outcomes,
            evaluation=evaluation_grade(attack, white.stage, clean_logits.shape[1]),
        )
        if sanity:
            flags: list[Flag] = output_flags(target, x, batch_size=batch_size)
            flags += gradient_flags(target, x, y, batch_size=batch_size)
            if unbounded_check:
                more, result.unbounded_accuracy = unbounded_attack_flags(
                    target, x, y, batch_size=batch_size
                )
                flags += more
            flags += curve_flags(result.to_dict())
            for flag in flags:
                log.warning("sanity flag %s: %s", flag.code, flag.message)
            result.flags = [flag.to_dict() for flag in flags]
    return result
