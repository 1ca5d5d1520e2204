from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from robustlab.attacks import accuracy_from_min_eps, get_attack
from robustlab.evaluation import (
    RECORD_FIELDS,
    AdversarialSet,
    CurveRequest,
    EvaluatedImages,
    load_png,
    min_eps_from_grid,
    predict_logits,
    quantise,
    records_summary,
    robustness_curves,
    sample_records,
    save_adversarials,
    write_records_csv,
)

EPSILONS = [0.02, 0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def white_box(target_model: nn.Module, test_batch):
    x, y = test_batch
    request = CurveRequest(get_attack("fgsm"), EPSILONS, noise=False, sanity=False)
    result = robustness_curves(target_model, x, y, request)
    return result, result.outcomes[result.curve("white-box")["label"]]


def test_min_eps_from_a_worst_case_sweep_reproduces_the_curve(
    white_box, target_model: nn.Module, test_batch
) -> None:
    result, outcome = white_box
    x, y = test_batch
    clean_correct = predict_logits(target_model, x).argmax(1) == y
    min_eps = min_eps_from_grid(outcome, y, clean_correct)
    assert accuracy_from_min_eps(min_eps, EPSILONS) == pytest.approx(
        result.curve("white-box")["accuracy"]
    )
    assert set(min_eps[clean_correct].tolist()) <= {*EPSILONS, math.inf}
    assert set(min_eps[~clean_correct].tolist()) <= {0.0}


def test_records_have_every_field_and_agree_with_the_outcome(
    white_box, target_model: nn.Module, test_batch, tmp_path: Path
) -> None:
    result, outcome = white_box
    x, y = test_batch
    classes = [str(k) for k in range(10)]
    rows = sample_records(outcome, EvaluatedImages(x, y, predict_logits(target_model, x), classes))
    assert len(rows) == len(EPSILONS) * len(y)
    assert all(tuple(row) == RECORD_FIELDS for row in rows)
    for row in rows:
        assert 0 < row["clean_conf"] <= 1 and 0 < row["adv_conf"] <= 1
        assert row["linf"] <= row["eps"] + 1e-6
        if not row["clean_correct"]:
            assert row["min_eps"] == 0.0
        elif not row["adv_correct"]:
            assert row["min_eps"] <= row["eps"]  # broken at eps: its minimal eps is no larger
    summary = records_summary(rows)
    assert [p["accuracy"] for p in summary["per_eps"]] == pytest.approx(
        result.curve("white-box")["accuracy"]
    )
    rates = [p["success_rate"] for p in summary["per_eps"]]
    assert rates == sorted(rates)  # worst case: success only grows with eps
    assert summary["min_eps"]["found"] + summary["min_eps"]["not_found"] == sum(
        r["clean_correct"] for r in rows if r["eps"] == EPSILONS[0]
    )

    write_records_csv(tmp_path / "records.csv", rows)
    with open(tmp_path / "records.csv", newline="") as handle:
        back = list(csv.DictReader(handle))
    assert len(back) == len(rows) and tuple(back[0]) == RECORD_FIELDS
    assert float(back[5]["l2"]) == pytest.approx(rows[5]["l2"], rel=1e-5)


def test_minimum_norm_attack_min_eps_is_used(target_model: nn.Module, test_batch) -> None:
    x, y = test_batch
    attack = get_attack("minimal", base="fgsm", search_steps=6)
    request = CurveRequest(attack, [0.05, 0.1, 0.3], noise=False, sanity=False)
    result = robustness_curves(target_model, x[:40], y[:40], request)
    outcome = result.outcomes[result.curve("white-box")["label"]]
    assert outcome.min_eps is not None and outcome.min_eps.shape == (40,)
    classes = [str(k) for k in range(10)]
    images = EvaluatedImages(x[:40], y[:40], predict_logits(target_model, x[:40]), classes)
    rows = sample_records(outcome, images)
    found = [r["min_eps"] for r in rows if r["clean_correct"] and math.isfinite(r["min_eps"])]
    assert found and not set(found) <= {0.05, 0.1, 0.3}  # finer than the sweep's grid


class Threshold(nn.Module):
    """Class 1 when the mean pixel is above ``level``, else class 0 (sharply)."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = (x.flatten(1).mean(1) - self.level) * 1000
        return torch.stack([-margin, margin], dim=1)


def test_png_quantisation_can_undo_an_adversarial(tmp_path: Path) -> None:
    model = Threshold(127.8 / 255).eval()
    x = torch.full((2, 3, 4, 4), 129 / 255)  # class 1, correct
    x_adv = torch.stack([torch.full((3, 4, 4), 127.6 / 255),  # below the threshold, but
                         torch.full((3, 4, 4), 120 / 255)])  # fmt: skip  # rounds to 128 > it
    y = torch.ones(2, dtype=torch.long)
    summary = save_adversarials(
        tmp_path, model, AdversarialSet(x, x_adv, y, ["low", "high"], eps=0.01)
    )
    assert summary["adversarial_float"] == 2 and summary["adversarial_png"] == 1
    assert summary["lost_by_quantisation"] == 1
    assert [image["adversarial_png"] for image in summary["images"]] == [False, True]

    tensors = load_file(tmp_path / "adversarials.safetensors")
    assert torch.equal(tensors["adversarial"], x_adv) and torch.equal(tensors["labels"], y)
    reloaded = load_png(tmp_path / summary["images"][0]["png"], channels=3)
    assert torch.equal(reloaded, quantise(x_adv[0]))


def test_grey_pngs_round_trip(tmp_path: Path, test_batch, target_model: nn.Module) -> None:
    x, y = test_batch
    unchanged = AdversarialSet(x[:3], x[:3], y[:3], [str(k) for k in range(10)])
    summary = save_adversarials(tmp_path, target_model, unchanged)
    assert torch.equal(load_png(tmp_path / summary["images"][2]["png"], 1), quantise(x[2]))
    assert (tmp_path / "adversarials.json").is_file()


def test_adversarial_set_refuses_mismatched_shapes() -> None:
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        AdversarialSet(x, torch.zeros(2, 1, 4, 5), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(ValueError, match="shape mismatch"):
        AdversarialSet(x, x, torch.zeros(3, dtype=torch.long), ["a"])
