"""The sanity flags fire on broken evaluations and stay quiet on a healthy one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import get_attack
from robustlab.errors import UserError
from robustlab.evaluation import (
    CurveRequest,
    TransferRequest,
    curve_flags,
    gradient_flags,
    output_flags,
    robustness_curves,
    sanity_flags,
    transfer_matrix,
)

MASKING_FLAGS = {
    "zero-gradients",
    "unbounded-attack-fails",
    "black-box-beats-white-box",
    "noise-beats-white-box",
}


def test_gradient_masked_model_raises_every_masking_flag(
    masked_model: nn.Module, surrogate_model: nn.Module, test_batch
) -> None:
    """round(x*8)/8 in front of the model: FGSM sees zero gradients and changes nothing, while
    noise and adversarials transferred from an ordinary model still hurt."""
    x, y = test_batch
    request = CurveRequest(get_attack("fgsm"), [0.1, 0.2, 0.3], target_name="masked")
    result = robustness_curves(
        masked_model, x, y, request, surrogate_models={"surrogate": surrogate_model}
    )
    white = result.curve("white-box")["accuracy"]
    assert white == pytest.approx([result.clean_accuracy] * 3)  # the attack did nothing
    assert result.curve("black-box")["accuracy"][-1] < white[-1] - 0.2
    codes = {flag["code"] for flag in result.flags}
    assert codes >= MASKING_FLAGS, codes
    assert all(f["severity"] == "error" for f in result.flags if f["code"] in MASKING_FLAGS)
    assert result.unbounded_accuracy is not None and result.unbounded_accuracy > 0.02


def test_transfer_matrix_flags_the_masked_model(
    masked_model: nn.Module, surrogate_model: nn.Module, test_batch
) -> None:
    x, y = test_batch
    models = {"masked": masked_model, "plain": surrogate_model}
    matrix = transfer_matrix(models, x, y, TransferRequest(get_attack("fgsm", eps=0.3)))
    flags = [f for f in matrix.flags if f["code"] == "black-box-beats-white-box"]
    assert [f["details"]["target"] for f in flags] == ["masked"]


def test_healthy_model_raises_no_flags(target_model: nn.Module, test_batch) -> None:
    x, y = test_batch
    assert sanity_flags(target_model, x, y) == []


class Softmaxed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


class Noisy(nn.Module):
    """Randomised even in eval mode (a randomised defence)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


class NanGradient(nn.Module):
    """Same outputs, but sqrt at 0 puts inf * 0 = NaN into the input gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + 0 * torch.sqrt(x - x.detach()).sum()


def test_probability_outputs_are_flagged(target_model: nn.Module, test_batch) -> None:
    x, _ = test_batch
    assert [f.code for f in output_flags(Softmaxed(target_model).eval(), x)] == [
        "probability-outputs"
    ]


def test_randomised_outputs_are_flagged(target_model: nn.Module, test_batch) -> None:
    x, _ = test_batch
    assert [f.code for f in output_flags(Noisy(target_model).eval(), x)] == ["randomized-outputs"]


def test_nan_gradients_are_flagged(target_model: nn.Module, test_batch) -> None:
    x, y = test_batch
    flags = gradient_flags(NanGradient(target_model).eval(), x[:10], y[:10])
    assert [f.code for f in flags] == ["nan-gradients"]
    assert flags[0].details == {"nonfinite": 10, "n": 10}


def test_train_mode_is_refused(target_model: nn.Module, test_batch) -> None:
    x, y = test_batch
    target_model.train()
    try:
        with pytest.raises(UserError, match="train mode"):
            sanity_flags(target_model, x, y, unbounded=False)
    finally:
        target_model.eval()


def _curves(white, black=None, noise=None, n=200, clean=0.9, eps0=0.9):
    curves = [{"label": "wb", "kind": "white-box", "source": "t", "accuracy": white}]
    if black is not None:
        curves.append({"label": "bb", "kind": "black-box", "source": "s", "accuracy": black})
    if noise is not None:
        curves.append({"label": "noise", "kind": "noise", "source": None, "accuracy": noise})
    return {"n": n, "epsilons": [0.01, 0.02, 0.03][: len(white)], "clean_accuracy": clean,
            "eps0_accuracy": eps0, "curves": curves}  # fmt: skip


def test_curve_flags_on_hand_made_results() -> None:
    assert curve_flags(_curves([0.5, 0.4, 0.3], [0.8, 0.7, 0.6], [0.9, 0.9, 0.88])) == []
    codes = [f.code for f in curve_flags(_curves([0.5, 0.6, 0.3]))]
    assert codes == ["curve-rises"]  # FGSM overshoot, as in the leaf study's white-box curve
    assert [f.code for f in curve_flags(_curves([0.5, 0.4], eps0=0.7))] == ["eps0-mismatch"]
    codes = {f.code for f in curve_flags(_curves([0.5, 0.4], black=[0.5, 0.2], noise=[0.3, 0.3]))}
    assert codes == {"black-box-beats-white-box", "noise-beats-white-box"}


def test_curve_flags_forgive_a_single_image_and_noise_jitter() -> None:
    # 1 image in 20 is 5 %: no flag for a one-image wobble.
    assert curve_flags(_curves([0.50, 0.55], black=[0.45, 0.5], n=20, clean=0.9, eps0=0.9)) == []
    # Noise accuracy wobbles by chance: within two binomial standard errors is fine.
    assert curve_flags(_curves([0.2, 0.1], noise=[0.80, 0.83], n=200)) == []
    assert [f.code for f in curve_flags(_curves([0.2, 0.1], noise=[0.60, 0.80], n=200))] == [
        "curve-rises"
    ]
