"""The variance-preserving SDE (VPSDE) of Song et al. 2021 with a linear β schedule.

    dx = −½ β(t) x dt + √β(t) dw,   β(t) = β_min + t (β_max − β_min),   t ∈ [ε, 1]

Marginals ``x_t = α_t x_0 + σ_t e`` with ``α_t = exp(−t² (β_max − β_min)/4 − t β_min/2)`` and
``σ_t² = 1 − α_t²``; diffusion ``g(t)² = β(t)``. Reverse SDE
``dx = [f − g² ∇log p_t] dt + g dw̄`` and probability-flow ODE ``dx/dt = f − ½ g² ∇log p_t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["VPSDE"]


@dataclass(frozen=True)
class VPSDE:
    """Arguments: ``beta_min`` 0.1, ``beta_max`` 20 (paper), ``eps``: the smallest time used."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3

    def __post_init__(self):
        if not (0 < self.beta_min < self.beta_max) or not (0 < self.eps < 1):
            raise ValueError(f"need 0 < beta_min < beta_max and 0 < eps < 1, got {self}")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``β(t) = g(t)²``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Mean scale ``α_t`` of ``p(x_t | x_0) = N(α_t x_0, σ_t² I)``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``σ_t = √(1 − α_t²)`` (computed with expm1 for accuracy at small t)."""
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``f(x, t) = −½ β(t) x`` for a batch ``x`` ``(B, d)`` and times ``(B,)``."""
        return -0.5 * self.beta(t)[:, None] * x

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = α_t x_0 + σ_t e``."""
        return self.alpha(t)[:, None] * x0 + self.sigma(t)[:, None] * noise

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; 0, I)`` per sample: the reference distribution at ``t = 1``."""
        return -0.5 * (x**2).sum(dim=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
