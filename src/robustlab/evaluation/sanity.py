"""Sanity checks that say when a robustness number should not be trusted.

After AutoAttack's checks (``autoattack/checks.py``) and Carlini et al., "On Evaluating
Adversarial Robustness" (2019): accuracy at eps = 0 must equal clean accuracy; accuracy must not
rise with epsilon; an attack with unbounded budget must reach ~0 % accuracy; a black-box or
random-noise perturbation must not beat the white-box attack; input gradients must be non-zero
and finite; the model should output logits, not probabilities, and be deterministic. A model
in train mode is refused outright (``require_eval_mode``).

Each check returns ``Flag`` records (JSON-able via ``to_dict``) rather than raising, so a
report can show every problem at once. Curve checks read the JSON of a ``CurvesResult`` and
need no model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import as_logits_model, get_attack
from robustlab.evaluation.accuracy import model_device, predict_logits, require_eval_mode

log = logging.getLogger(__name__)

# What to run instead when a flag fires (kept in ``details["remedy"]``; the report shows it).
REMEDY_EOT = (
    "attack with EOT: --set eot_samples=20 on apgd / apgd-t, or --attack autoattack "
    "--set version=rand"
)
REMEDY_MASKED = (
    "trust the gradient-free attack: --attack square or --attack autoattack (its Square member); "
    "for a known non-differentiable step wrap the model in robustlab.attacks.BPDA"
)

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Flag:
    """One sanity finding: a stable ``code``, a severity and a one-line message."""

    code: str
    severity: Severity
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tolerance(base: float, n: int) -> float:
    """Never flag a difference of a single image: with n images one image is 1/n."""
    return max(base, 1.0 / max(n, 1)) + 1e-9


def curve_flags(
    curves: Mapping[str, Any],
    *,
    rise_tolerance: float = 0.01,
    beat_tolerance: float = 0.02,
) -> list[Flag]:
    """Checks on a ``CurvesResult.to_dict()``: eps = 0 vs clean, monotonicity, who beats whom.

    ``rise_tolerance`` and ``beat_tolerance`` are accuracy differences (fractions) below which
    nothing is flagged; the noise curve also gets two binomial standard errors of slack.
    """
    n = int(curves["n"])
    epsilons = [float(e) for e in curves["epsilons"]]
    flags = _eps0_flags(curves.get("clean_accuracy"), curves.get("eps0_accuracy"), n)
    for curve in curves["curves"]:
        flags += _rise_flags(curve, epsilons, _tolerance(rise_tolerance, n), n)
    white = next((c for c in curves["curves"] if c["kind"] == "white-box"), None)
    if white is None:
        return flags
    for curve in curves["curves"]:
        if curve["kind"] in ("black-box", "noise"):
            flags += _beat_flags(white, curve, epsilons, _tolerance(beat_tolerance, n))
    return flags


def _eps0_flags(clean: float | None, eps0: float | None, n: int) -> list[Flag]:
    """Accuracy under the attack at eps = 0 must be the clean accuracy (to half an image)."""
    if clean is None or eps0 is None or not abs(eps0 - clean) > 0.5 / max(n, 1):
        return []
    message = (
        f"accuracy under the attack at eps=0 is {eps0:.2%} but clean accuracy is {clean:.2%}: "
        "the attack changes images it should leave alone (or the model is random)"
    )
    details = {"eps0_accuracy": eps0, "clean_accuracy": clean}
    return [Flag("eps0-mismatch", "error", message, details)]


def _rise_flags(
    curve: Mapping[str, Any], epsilons: Sequence[float], tolerance: float, n: int
) -> list[Flag]:
    """The first step where ``curve``'s accuracy rises by more than ``tolerance``.

    One flag per curve is enough to send the reader to the figure.
    """
    accuracy = curve["accuracy"]
    for i in range(1, len(accuracy)):
        before, after = accuracy[i - 1], accuracy[i]
        if before is None or after is None:
            continue
        slack = tolerance
        if curve["kind"] == "noise":
            p = min(max(before, 0.0), 1.0)
            slack = max(slack, 2 * math.sqrt(2 * p * (1 - p) / max(n, 1)))
        if after - before > slack:
            message = (
                f"{curve['label']}: accuracy rises from {before:.2%} at eps={epsilons[i - 1]:.4g} "
                f"to {after:.2%} at eps={epsilons[i]:.4g}; a stronger budget should never help "
                "the model (weak or overshooting attack)"
            )
            details = {
                "curve": curve["label"],
                "eps": [epsilons[i - 1], epsilons[i]],
                "accuracy": [before, after],
            }
            return [Flag("curve-rises", "warning", message, details)]
    return []


def _beat_flags(
    white: Mapping[str, Any],
    other: Mapping[str, Any],
    epsilons: Sequence[float],
    tolerance: float,
) -> list[Flag]:
    """The first epsilon where a black-box or noise curve is below the white-box curve."""
    pairs = zip(epsilons, white["accuracy"], other["accuracy"], strict=True)
    for eps, ours, theirs in pairs:
        if ours is None or theirs is None or not ours - theirs > tolerance:
            continue
        what = "a black-box transfer attack" if other["kind"] == "black-box" else "random noise"
        message = (
            f"{what} ({other['label']}) leaves {theirs:.2%} accuracy at eps={eps:.4g}, "
            f"below the white-box attack's {ours:.2%}: the white-box attack is failing "
            "(possible gradient masking)"
        )
        details = {
            "curve": other["label"],
            "eps": eps,
            "white_box": ours,
            "other": theirs,
            "remedy": REMEDY_MASKED,
        }
        return [Flag(f"{other['kind']}-beats-white-box", "error", message, details)]
    return []


@torch.no_grad()
def output_flags(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> list[Flag]:
    """Flags probability outputs (rows in [0, 1] summing to 1) and non-deterministic outputs."""
    flags: list[Flag] = []
    first = predict_logits(model, x, batch_size)
    sums = first.sum(dim=1)
    if bool(((first >= 0) & (first <= 1)).all()) and bool(
        torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
    ):
        flags.append(
            Flag(
                "probability-outputs",
                "warning",
                "the model outputs probabilities (rows sum to 1), not logits: cross-entropy attacks "
                "apply a second softmax and their gradients vanish; remove the final softmax",
            )
        )
    second = predict_logits(model, x, batch_size)
    difference = float((first - second).abs().max())
    if difference > 1e-4 * max(1.0, float(first.abs().max())):
        flags.append(
            Flag(
                "randomized-outputs",
                "warning",
                f"two forward passes on the same images differ (max |Δ| = {difference:.3g}): the "
                "model is randomised; gradient attacks need expectation over transformation (EOT)",
                {"max_difference": difference, "remedy": REMEDY_EOT},
            )
        )
    return flags


def gradient_flags(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 128
) -> list[Flag]:
    """Flags inputs whose cross-entropy gradient is exactly zero, or NaN/inf."""
    require_eval_mode(model)
    forward = as_logits_model(model)
    device = model_device(model)
    zero = nonfinite = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device).clone().requires_grad_(True)
        yb = y[start : start + batch_size].to(device)
        loss = F.cross_entropy(forward(xb).float(), yb, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb, allow_unused=True)
        if grad is None:  # the output does not depend on the input through autograd at all
            zero += len(xb)
            continue
        grad = grad.flatten(1)
        finite = torch.isfinite(grad).all(dim=1)
        nonfinite += int((~finite).sum())
        zero += int(((grad.abs().amax(dim=1) == 0) & finite).sum())
    flags: list[Flag] = []
    n = len(x)
    if zero:
        flags.append(
            Flag(
                "zero-gradients",
                "error",
                f"{zero} of {n} inputs have an all-zero input gradient: gradient attacks cannot move "
                "them (gradient masking, e.g. a non-differentiable input transform or saturated outputs)",
                {"zero": zero, "n": n, "remedy": REMEDY_MASKED},
            )
        )
    if nonfinite:
        flags.append(
            Flag(
                "nan-gradients",
                "error",
                f"{nonfinite} of {n} inputs have NaN or infinite input gradients",
                {"nonfinite": nonfinite, "n": n},
            )
        )
    return flags


def unbounded_attack_flags(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 1.0,
    steps: int = 20,
    max_accuracy: float = 0.02,
    batch_size: int = 128,
) -> tuple[list[Flag], float]:
    """Run L-inf PGD with a budget that covers the whole image (``eps`` = 1 by default).

    Any classifier can then be driven to ~0 % accuracy; if not, gradients are not guiding the
    attack. Returns the flags and the accuracy reached.
    """
    attack = get_attack("pgd", eps=eps, steps=steps)
    forward = as_logits_model(model)
    device = model_device(model)
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        with torch.no_grad():
            correct += int((forward(attack(model, xb, yb)).argmax(1) == yb).sum())
    accuracy = correct / len(x)
    flags: list[Flag] = []
    if accuracy > max_accuracy:
        flags.append(
            Flag(
                "unbounded-attack-fails",
                "error",
                f"PGD with eps={eps:g} (the whole pixel range) leaves {accuracy:.2%} accuracy, not ~0 %: "
                "possible gradient masking; do not trust the robust accuracy",
                {"eps": eps, "steps": steps, "accuracy": accuracy},
            )
        )
    return flags, accuracy


class SanityFlags(list[Flag]):
    """The flags ``sanity_flags`` found, and the accuracy its unbounded PGD probe left."""

    unbounded_accuracy: float | None = None  # None when the probe was skipped


def sanity_flags(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    curves: Mapping[str, Any] | None = None,
    *,
    unbounded: bool = True,
    batch_size: int = 128,
) -> SanityFlags:
    """All checks: model probes on ``x``/``y`` plus, when given, the checks on ``curves``.

    Refuses (``UserError``) a model in train mode. ``unbounded=False`` skips the PGD run, the
    one costly probe (``steps`` forward+backward passes over ``x``).
    """
    require_eval_mode(model)
    flags = SanityFlags(output_flags(model, x, batch_size=batch_size))
    flags += gradient_flags(model, x, y, batch_size=batch_size)
    if unbounded:
        more, flags.unbounded_accuracy = unbounded_attack_flags(model, x, y, batch_size=batch_size)
        flags += more
    if curves is not None:
        flags += curve_flags(curves)
    for flag in flags:
        log.warning("sanity flag %s: %s", flag.code, flag.message)
    return flags


def flags_to_json(flags: Sequence[Flag]) -> list[dict[str, Any]]:
    return [flag.to_dict() for flag in flags]
