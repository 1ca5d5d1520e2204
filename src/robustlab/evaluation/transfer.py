"""Transfer matrix: how adversarials crafted on one model fool each of the others.

For N models and one attack at one epsilon, ``accuracy[i][j]`` is the accuracy of model ``j``
(target, column) on adversarials crafted on model ``i`` (surrogate, row); the diagonal is the
white-box accuracy. A black-box entry below its column's white-box entry is flagged: the
white-box attack on that target is then failing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack, as_logits_model
from robustlab.errors import UserError
from robustlab.evaluation.accuracy import model_device, predict_logits
from robustlab.evaluation.robustness import DEFAULT_BATCH_SIZE, attack_settings, check_compatible
from robustlab.evaluation.sanity import Flag
from robustlab.reporting.results import TRANSFER_FORMAT

log = logging.getLogger(__name__)


@dataclass
class TransferMatrix:
    """``accuracy[i][j]``: model ``models[j]`` on adversarials crafted on ``models[i]``."""

    models: list[str]
    attack: dict[str, Any]
    eps: float
    n: int
    accuracy: list[list[float]]
    clean_accuracy: dict[str, float]
    flags: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRANSFER_FORMAT,
            "format_version": 1,
            **dataclasses.asdict(self),
            "eps_255": self.eps * 255,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransferMatrix:
        if data.get("format") != TRANSFER_FORMAT:
            raise UserError(f"not a transfer-matrix result (format {data.get('format')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def white_box(self, name: str) -> float:
        i = self.models.index(name)
        return self.accuracy[i][i]


def transfer_flags(matrix: TransferMatrix, tolerance: float = 0.02) -> list[Flag]:
    """Flag every target whose best black-box entry is below its white-box (diagonal) entry."""
    flags = []
    slack = max(tolerance, 1.0 / max(matrix.n, 1)) + 1e-9
    for j, target_name in enumerate(matrix.models):
        white = matrix.accuracy[j][j]
        column = [
            (matrix.accuracy[i][j], surrogate_name)
            for i, surrogate_name in enumerate(matrix.models)
            if i != j
        ]
        if not column:
            continue
        best, surrogate_name = min(column)
        if white - best > slack:
            flags.append(
                Flag(
                    "black-box-beats-white-box",
                    "error",
                    f"adversarials from '{surrogate_name}' leave '{target_name}' at {best:.2%} "
                    f"accuracy, below its white-box {white:.2%}: the white-box attack on "
                    f"'{target_name}' is failing (possible gradient masking)",
                    {
                        "target": target_name,
                        "surrogate": surrogate_name,
                        "white_box": white,
                        "black_box": best,
                    },
                )
            )
    return flags


@dataclass(frozen=True)
class TransferRequest:
    """What ``transfer_matrix`` measures: ``attack`` at its own ``attack.eps``.

    ``seed`` seeds the global RNG while attacking (restored afterwards).
    """

    attack: Attack
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0


def transfer_matrix(
    models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, request: TransferRequest
) -> TransferMatrix:
    """The N x N accuracy table for ``request.attack``.

    ``models``: name -> model in eval mode, all sharing classes and input size (checked);
    ``x``: ``(N, C, H, W)`` float32 in [0, 1]; ``y``: ``(N,)`` int64. Cost: one attack per model
    plus N forward passes per adversarial batch.
    """
    if len(models) < 2:
        raise UserError(f"a transfer matrix needs at least 2 models, got {len(models)}")
    check_compatible(models, x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(request.seed)
        correct = _transfer_counts(models, x, y, request)
    clean = {
        name: float((predict_logits(model, x, request.batch_size).argmax(1) == y).float().mean())
        for name, model in models.items()
    }
    matrix = TransferMatrix(
        models=list(models),
        attack=attack_settings(request.attack),
        eps=float(request.attack.eps),
        n=len(x),
        accuracy=(correct.double() / len(x)).tolist(),
        clean_accuracy=clean,
        settings={"batch_size": request.batch_size, "seed": request.seed},
    )
    matrix.flags = [flag.to_dict() for flag in transfer_flags(matrix)]
    return matrix


def _transfer_counts(
    models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, request: TransferRequest
) -> torch.Tensor:
    """``(M, M)`` int64: ``[i, j]`` images model ``j`` still gets right when model ``i`` crafted."""
    names = list(models)
    scorers = {name: as_logits_model(model) for name, model in models.items()}
    devices = {name: model_device(model) for name, model in models.items()}
    correct = torch.zeros(len(names), len(names), dtype=torch.long)
    for i, surrogate_name in enumerate(names):
        device = devices[surrogate_name]
        for start in range(0, len(x), request.batch_size):
            xb = x[start : start + request.batch_size].to(device)
            yb = y[start : start + request.batch_size]
            adversarial = request.attack(models[surrogate_name], xb, yb.to(device)).detach()
            with torch.no_grad():
                for j, target_name in enumerate(names):
                    logits = scorers[target_name](adversarial.to(devices[target_name]))
                    correct[i, j] += int((logits.argmax(1).cpu() == yb).sum())
        log.info("adversarials from %s scored on every model", surrogate_name)
    return correct
