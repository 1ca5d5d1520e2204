"""Result files written by hand, so reporting is tested without any model or attack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from robustlab.io import write_json


@pytest.fixture
def curves_data() -> dict[str, Any]:
    return curves_json()


@pytest.fixture
def transfer_data() -> dict[str, Any]:
    return transfer_json()


def curves_json() -> dict[str, Any]:
    return {
        "format": "robustlab-curves",
        "format_version": 1,
        "target": "inception",
        "attack": {"name": "fgsm", "norm": "linf", "eps": 0.05, "loss": "mse"},
        "epsilons": [0.01, 0.02, 0.03, 0.04, 0.05],
        "epsilons_255": [2.55, 5.1, 7.65, 10.2, 12.75],
        "n": 812,
        "clean_accuracy": 0.95,
        "eps0_accuracy": 0.95,
        "unbounded_accuracy": 0.0,
        "curves": [
            {"label": "white-box fgsm on inception", "kind": "white-box", "source": "inception",
             "accuracy": [0.07, 0.09, 0.13, 0.15, 0.19]},
            {"label": "black-box fgsm from mobilenet", "kind": "black-box", "source": "mobilenet",
             "accuracy": [0.90, 0.82, 0.73, 0.68, 0.63]},
            {"label": "sign-noise", "kind": "noise", "source": None,
             "accuracy": [0.96, 0.96, 0.96, 0.96, 0.95]},
        ],
        "models": {"inception": {"role": "target", "clean_accuracy": 0.95},
                   "mobilenet": {"role": "surrogate", "clean_accuracy": 0.97}},
        "flags": [{"code": "curve-rises", "severity": "warning",
                   "message": "white-box fgsm on inception: accuracy rises", "details": {}}],
        "settings": {"batch_size": 64, "seed": 0, "split": "test"},
    }  # fmt: skip


def transfer_json() -> dict[str, Any]:
    return {
        "format": "robustlab-transfer",
        "format_version": 1,
        "models": ["a", "b", "c"],
        "attack": {"name": "pgd", "norm": "linf", "eps": 0.03},
        "eps": 0.03,
        "eps_255": 7.65,
        "n": 100,
        "accuracy": [[0.0, 0.4, 0.5], [0.3, 0.01, 0.6], [0.35, 0.45, 0.02]],
        "clean_accuracy": {"a": 0.9, "b": 0.92, "c": 0.88},
        "flags": [],
        "settings": {"batch_size": 64},
    }


def metrics_json() -> dict[str, Any]:
    split = {
        "n": 10, "correct": 8, "accuracy": 0.8, "classes": ["healthy", "unhealthy"],
        "per_class": [{"class": "healthy", "n": 4, "correct": 3, "accuracy": 0.75},
                      {"class": "unhealthy", "n": 6, "correct": 5, "accuracy": 5 / 6}],
        "confusion": [[3, 1], [1, 5]],
    }  # fmt: skip
    return {
        "format": "robustlab-metrics",
        "format_version": 1,
        "run_dir": "runs/leaf",
        "model": {"arch": "simple-cnn"},
        "splits": {"test": split},
        "settings": {"batch_size": 256},
    }


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """A run directory with clean metrics, one robustness result with an example, a transfer result."""
    write_json(tmp_path / "metrics.json", metrics_json())
    robustness = tmp_path / "robustness" / "fgsm"
    write_json(robustness / "curves.json", curves_json())
    example = np.random.default_rng(0).integers(0, 255, (32, 96, 3), dtype=np.uint8)
    (robustness / "examples").mkdir(parents=True)
    Image.fromarray(example).save(robustness / "examples" / "00003_triptych.png")
    write_json(
        robustness / "examples.json",
        {"format": "robustlab-examples", "format_version": 1,
         "figures": [{"path": "examples/00003_triptych.png", "caption": "image 3"}]},
    )  # fmt: skip
    write_json(tmp_path / "transfer" / "transfer.json", transfer_json())
    return tmp_path
