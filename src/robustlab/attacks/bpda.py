"""BPDA: attack through a non-differentiable preprocessing step with a differentiable stand-in.

Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018,
https://arxiv.org/abs/1802.00420 (Section 4.1). A defence that quantises, compresses or
denoises its input before the classifier gives zero or useless input gradients, so gradient
attacks fail and over-state robustness. ``BPDA`` runs the real step on the forward pass and
takes the gradient of the stand-in (default: the identity, i.e. the straight-through
estimator) on the backward pass::

    quantise = lambda x: torch.round(x * 255) / 255
    model = BPDA(classifier, quantise)              # forward: classifier(quantise(x))
    x_adv = get_attack("apgd", eps=8/255)(model.eval(), x, y)

Every attack of the registry works on the wrapped model unchanged (it is an ``nn.Module``
whose mode is the classifier's).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

Transform = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


class BPDA(nn.Module):
    """``model(step(x))`` forward, gradient of ``model(stand_in(x))`` backward.

    Args:
        model: the classifier, ``(B, C, H, W)`` in [0, 1] -> logits.
        step: the non-differentiable preprocessing, ``(B, C, H, W) -> (B, C, H, W)``.
        stand_in: a differentiable approximation of ``step`` (same shapes); the identity
            when ``None`` (right for steps that keep the image close to itself).
    """

    def __init__(
        self, model: nn.Module, step: Transform, stand_in: Transform | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.step = step
        self.stand_in = stand_in or _identity
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        approximation = self.stand_in(x)
        # value of the real step, gradient of the stand-in
        return self.model(approximation + (self.step(x) - approximation).detach())
