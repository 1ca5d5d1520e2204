"""Random-noise baselines: how much accuracy does noise of the same size cost?

Both are Linf-bounded, so their curves sit on the same epsilon axis as FGSM and PGD. They do not
use the model's gradients (the model only checks the labels); ``y`` and ``target`` only define
success in a sweep.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from robustlab.attacks.base import Batch, DirectionAttack, noise_like
from robustlab.errors import check_range


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoiseAttack(DirectionAttack):
    """A random direction drawn per pixel; the model only checks the labels."""

    norm = "linf"

    eps: float = 8 / 255

    def _direction(
        self, batch: Batch, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        batch.view.validate(batch.x)  # labels checked against the model, which is not attacked
        return self._draw(batch.x, generator), None

    def _draw(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignNoise(NoiseAttack):
    """The leaf study's baseline: ``clip(x + eps * s, 0, 1)``, ``s`` uniform in {-1, +1} per pixel.

    Args:
        eps: Linf radius in [0, 1] pixel units; every pixel moves by exactly eps before clipping.

    In a sweep the same sign pattern is used for every epsilon.
    """

    name = "sign-noise"

    def _draw(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
        return bits.to(x.dtype).mul_(2).sub_(1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaussianNoise(NoiseAttack):
    """Gaussian noise, truncated to the Linf ball: ``clip(x + clamp(sigma * n, -eps, eps), 0, 1)``.

    The noise is clamped per pixel to ``[-eps, eps]`` so the attack keeps the Linf contract and
    shares the epsilon axis of the other attacks. With the default ``sigma = eps`` about 32% of
    the pixels are clamped; for (almost) untruncated Gaussian noise of a fixed ``sigma`` pass
    ``sigma`` explicitly and a large ``eps`` (e.g. ``eps=1, sigma=0.05`` clamps at 20 sigma).

    Args:
        eps: Linf radius in [0, 1] pixel units.
        sigma: standard deviation in pixel units; ``None`` means ``sigma = eps``.
    """

    name = "gaussian-noise"

    sigma: float | None = None

    def _validate(self) -> None:
        super()._validate()
        if self.sigma is not None:
            check_range(self._field("sigma"), self.sigma, 0.0)

    def _draw(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return noise_like(x, generator, gaussian=True)

    def _apply(self, x: Tensor, direction: Tensor, eps: Tensor | float) -> Tensor:
        noise = direction * (eps if self.sigma is None else self.sigma)
        return (x + noise.clamp_(min=-eps, max=eps)).clamp_(0.0, 1.0)
