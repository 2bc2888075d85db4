"""Exact noise predictors for Gaussian data: the ground truth every diffusion check uses.

For data ``x_0 ~ N(μ, Σ)`` the VPSDE marginal is ``p_t = N(α_t μ, α_t² Σ + σ_t² I)``, so the
score is ``∇log p_t(x) = −(α_t² Σ + σ_t² I)^{-1}(x − α_t μ)`` and the ideal noise predictor is
``ε*(x, t) = −σ_t ∇log p_t(x)``. With ``Σ = U diag(s) Uᵀ`` the inverse is diagonal in ``U``.
"""

from __future__ import annotations

import torch

from manifold_aps.diffusion.sde import VPSDE

__all__ = ["GaussianNoisePredictor"]


class GaussianNoisePredictor(torch.nn.Module):
    """``ε*(x_t, t)`` for ``N(mean, covariance)`` data; a drop-in for a trained network.

    Arguments:
        mean: ``(d,)``; covariance: ``(d, d)`` symmetric positive semi-definite (zero variance
            directions such as padding vertices are allowed).
        sde: the VPSDE whose marginals are used.
    """

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, sde: VPSDE | None = None):
        super().__init__()
        self.sde = sde or VPSDE()
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        covariance = 0.5 * (covariance + covariance.T)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("eigenvalues", eigenvalues.clamp_min(0.0))
        self.register_buffer("eigenvectors", eigenvectors)

    def marginal_precision_apply(self, residual: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(α_t² Σ + σ_t² I)^{-1} r`` for a batch of residuals ``(B, d)``."""
        alpha2 = self.sde.alpha(t.double())[:, None] ** 2
        sigma2 = self.sde.sigma(t.double())[:, None] ** 2
        coefficients = residual @ self.eigenvectors
        return (coefficients / (alpha2 * self.eigenvalues + sigma2)) @ self.eigenvectors.T

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        residual = x.double() - self.sde.alpha(t.double())[:, None] * self.mean
        return (-self.marginal_precision_apply(residual, t)).to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (-self.sde.sigma(t)[:, None] * self.score(x, t)).to(x.dtype)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact ``log N(x0; μ, Σ)`` (needs Σ positive definite)."""
        distribution = torch.distributions.MultivariateNormal(
            self.mean, scale_tril=torch.linalg.cholesky(self.eigenvectors * self.eigenvalues @ self.eigenvectors.T)
        )
        return distribution.log_prob(x0.double())
