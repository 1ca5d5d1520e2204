from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
from torch import nn

from robustlab.attacks import get_attack
from robustlab.data import DataSplits
from robustlab.errors import UserError
from robustlab.evaluation import (
    CurveRequest,
    CurvesResult,
    ScoreRequest,
    robustness_curves,
    sanity_flags,
    score_perturbations,
)
from robustlab.models import ModelSpec, create_model

EPSILONS = [0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def curves(target_model: nn.Module, surrogate_model: nn.Module, test_batch) -> CurvesResult:
    x, y = test_batch
    request = CurveRequest(get_attack("fgsm"), EPSILONS, keep_examples=(0, 1, 2))
    return robustness_curves(
        target_model, x, y, request, surrogate_models={"surrogate": surrogate_model}
    )


def test_three_kinds_of_curves(curves: CurvesResult) -> None:
    assert [c["kind"] for c in curves.curves] == ["white-box", "black-box", "noise"]
    assert curves.curve("black-box", "surrogate")["source"] == "surrogate"
    for curve in curves.curves:
        assert len(curve["accuracy"]) == len(EPSILONS)
        assert all(0.0 <= a <= 1.0 for a in curve["accuracy"])
    assert set(curves.models) == {"target", "surrogate"}


def test_curves_behave_like_an_attack_should(curves: CurvesResult) -> None:
    white = curves.curve("white-box")["accuracy"]
    black = curves.curve("black-box")["accuracy"]
    noise = curves.curve("noise")["accuracy"]
    assert curves.clean_accuracy > 0.8
    assert curves.eps0_accuracy == pytest.approx(curves.clean_accuracy)
    assert all(b <= a for a, b in itertools.pairwise(white))  # worst case: never rises
    assert white[-1] < curves.clean_accuracy - 0.3  # the white-box attack works
    assert all(w <= n for w, n in zip(white, noise, strict=True))  # noise is the weakest
    assert all(w <= b + 1e-9 for w, b in zip(white, black, strict=True))
    assert curves.unbounded_accuracy is not None and curves.unbounded_accuracy <= 0.02
    assert not [f for f in curves.flags if f["severity"] == "error"], curves.flags


def test_result_is_json_and_round_trips(curves: CurvesResult) -> None:
    data = json.loads(json.dumps(curves.to_dict()))
    assert data["format"] == "robustlab-curves"
    assert data["epsilons_255"] == pytest.approx([e * 255 for e in EPSILONS])
    again = CurvesResult.from_dict(data)
    assert again.curves == curves.curves and again.flags == curves.flags
    with pytest.raises(UserError, match="not a robustness-curves result"):
        CurvesResult.from_dict({"format": "robustlab-transfer"})


def test_outcomes_keep_the_requested_images(curves: CurvesResult, test_batch) -> None:
    x, y = test_batch
    white = curves.outcomes[curves.curve("white-box")["label"]]
    assert sorted(white.examples) == [0, 1, 2]
    assert white.examples[0].shape == (len(EPSILONS), *x.shape[1:])
    assert white.accuracy(y) == curves.curve("white-box")["accuracy"]
    for e, eps in enumerate(EPSILONS):
        assert float(white.linf[e].max()) <= eps + 1e-6  # inside the ball
        assert bool((white.l2[e] >= white.linf[e] - 1e-6).all())


def test_per_eps_curves_are_never_below_worst_case(
    target_model: nn.Module, curves: CurvesResult, test_batch
) -> None:
    x, y = test_batch
    request = CurveRequest(
        get_attack("fgsm"), EPSILONS, noise=False, worst_case=False, sanity=False
    )
    fresh = robustness_curves(target_model, x, y, request)
    worst = curves.curve("white-box")["accuracy"]
    assert all(
        w <= f + 1e-9 for w, f in zip(worst, fresh.curve("white-box")["accuracy"], strict=True)
    )
    assert fresh.settings["worst_case"] is False and fresh.flags == []


@pytest.mark.parametrize(
    ("epsilons", "message"),
    [
        ([], "epsilon list is empty"),
        ([0.1, 1.5], "fgsm.eps must be <= 1"),
        ([float("nan")], "finite number, got nan"),
    ],
)
def test_bad_epsilons_are_refused_when_the_request_is_made(epsilons, message: str) -> None:
    with pytest.raises(UserError, match=message):
        CurveRequest(get_attack("fgsm"), epsilons)


def test_request_sorts_epsilons_and_keeps_them_immutable() -> None:
    request = CurveRequest(get_attack("fgsm"), [0.2, 0.05, 0.2], keep_examples=range(3))
    assert request.epsilons == (0.05, 0.2) and request.keep_examples == (0, 1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 1  # type: ignore[misc]


def test_surrogate_with_other_classes_or_size_is_refused(
    target_model: nn.Module, test_batch
) -> None:
    x, y = test_batch
    three = create_model(
        ModelSpec(arch="simple-cnn", num_classes=3, in_chans=1, input_size=8)
    ).eval()
    request = CurveRequest(get_attack("fgsm"), [0.1])
    with pytest.raises(UserError, match="same classes"):
        robustness_curves(target_model, x, y, request, surrogate_models={"s": three})
    bigger = create_model(
        ModelSpec(arch="simple-cnn", num_classes=10, in_chans=1, input_size=16)
    ).eval()
    with pytest.raises(UserError, match="model 's' takes 1x16x16 images"):
        robustness_curves(target_model, x, y, request, surrogate_models={"s": bigger})


def test_unbounded_attack_cannot_be_curved() -> None:
    with pytest.raises(UserError, match="no epsilon budget"):
        CurveRequest(get_attack("filter", iterations=1), [0.1])


def test_model_in_train_mode_is_refused(digits: DataSplits, test_batch) -> None:
    x, y = test_batch
    model = create_model(ModelSpec(arch="simple-cnn", num_classes=10, in_chans=1, input_size=8))
    assert model.training
    with pytest.raises(UserError, match="train mode"):
        robustness_curves(model, x, y, CurveRequest(get_attack("fgsm"), [0.1]))
    assert torch.is_grad_enabled()


def test_scores_do_not_depend_on_the_batch_size(target_model: nn.Module, test_batch) -> None:
    """Per-batch outcomes join into the one-batch outcome, kept examples included."""
    x, y = test_batch
    keep = (0, 7, 8, 50, 119)  # on both sides of the 8-image batch boundaries
    one = ScoreRequest(get_attack("fgsm"), (0.05, 0.1), batch_size=len(x), keep_examples=keep)
    joined = score_perturbations(target_model, x, y, dataclasses.replace(one, batch_size=8))
    whole = score_perturbations(target_model, x, y, one)
    for name in ("pred", "conf", "l2", "linf"):
        assert getattr(joined, name).shape == (2, len(x))
        assert torch.allclose(getattr(joined, name), getattr(whole, name), atol=1e-6), name
    assert sorted(joined.examples) == list(keep) == sorted(whole.examples)
    for index in keep:
        assert torch.allclose(joined.examples[index], whole.examples[index], atol=1e-6)
        assert joined.example_probs[index].shape == (2, 10)


def test_curves_carry_exactly_what_sanity_flags_finds(masked_model: nn.Module, test_batch) -> None:
    """robustness_curves runs the same checks as sanity_flags on its own curves."""
    x, y = test_batch
    request = CurveRequest(get_attack("fgsm"), [0.1, 0.3], unbounded_check=False)
    result = robustness_curves(masked_model, x, y, request)
    curves = {**result.to_dict(), "flags": []}
    alone = sanity_flags(masked_model, x, y, curves, unbounded=False)
    assert result.flags == [flag.to_dict() for flag in alone] and result.flags
    assert result.unbounded_accuracy is None and alone.unbounded_accuracy is None
