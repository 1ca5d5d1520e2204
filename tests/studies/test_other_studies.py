"""Tiny versions of the layer-transfer, targeted-face and adversarial-regularisation studies."""

from __future__ import annotations

import json

import pytest

from robustlab.studies import load_study, run_study


def run_tiny(name: str, overrides: list[str], out) -> dict:
    study = load_study(name, overrides)
    results = run_study(study, out)
    assert (out / "report.html").exists() and (out / "config.yaml").exists()
    assert json.loads((out / "results.json").read_text())["steps"] == results["steps"]
    html = (out / "report.html").read_text()
    assert "missing figure" not in html and "What this study does" in html
    return results["steps"]


DIGITS = ["data.name=digits", "data.task=null", "data.image_size=16", "data.channels=3"]


@pytest.mark.slow
def test_layer_transfer_tiny(tmp_path):
    steps = run_tiny(
        "layer-transfer",
        [
            *DIGITS,
            "data.limit=100",
            "blocks=[3]",
            "variants=[AnB, BnB+]",
            "epochs=1",
            "plus_epochs=1",
            "plus_finetune_epochs=1",
            "base_b_epochs=1",
            "eval_limit=12",
            "pgd.settings.steps=1",
        ],
        tmp_path,
    )
    models = ["base-B", "A3B", "B3B+", "A9B"]
    assert set(steps["evaluate"]["accuracy"]) == set(models)
    assert steps["craft-fgsm"]["crafted_on"] == "A9B"
    assert steps["train-A3B"]["blocks_copied"] == 3
    for row in steps["evaluate"]["accuracy"].values():
        assert 0.0 <= row["pgd_white_box"] <= 1.0
    # the crafting model is attacked white-box by the FGSM set: it cannot beat its own clean accuracy
    crafter = steps["evaluate"]["accuracy"]["A9B"]
    assert crafter["fgsm_from_A"] <= crafter["natural"]
    assert (tmp_path / "evaluate" / "transfer_performance.png").exists()


@pytest.mark.slow
def test_targeted_face_tiny(tmp_path):
    steps = run_tiny(
        "targeted-face",
        [
            "data.name=digits",
            "data.task=null",
            "data.classes=[0, 1]",
            "data.image_size=16",
            "data.limit=150",
            "model.epochs=3",
            "attack.settings.iterations=60",
            "sweep.betas=[0.0, 10.0]",
            "sweep.iterations=60",
            "sweep.limit=10",
        ],
        tmp_path,
    )
    face = steps["one-face"]
    assert [row["image"] for row in face["images"]] == ["original", "beta = 0", "beta = 0.5"]
    assert face["images"][0]["predicted"] == "1" and face["images"][0]["l2"] == 0.0
    assert face["images"][1]["scores"]["0"] > face["images"][0]["scores"]["0"]  # pushed to target
    low, high = steps["beta-sweep"]["rows"]
    assert high["mean_l2"] < low["mean_l2"]  # the penalty shrinks the filter
    assert (tmp_path / "one-face" / "filter_beta0.5.png").exists()


@pytest.mark.slow
def test_adversarial_regularisation_tiny(tmp_path):
    steps = run_tiny(
        "adversarial-regularisation",
        [
            "data.name=digits",
            "data.image_size=16",
            "data.limit=150",
            "models.*.epochs=1",
            "models.tl-finetune.epochs=2",
            "models.tl-frozen.resize_to=32",
            "models.tl-finetune.resize_to=32",
            "limit=12",
            "eps=[0.05]",
            "transfer.limit=12",
            "attacks=[{name: fgsm}]",
        ],
        tmp_path,
    )
    for target in ("base", "nsl", "pgd-at", "tl-frozen", "tl-finetune"):
        summary = steps[f"attack-{target}-fgsm"]
        assert [c["kind"] for c in summary["curves"]] == ["white-box", "black-box", "noise"]
        assert summary["curves"][1]["source"] == "surrogate"
    assert steps["train-nsl"]["epochs_run"] == 1
    assert len(steps["transfer-matrix"]["models"]) == 6
