"""Model error: the white variance a Gaussian prior misses, estimated from the measurement alone.

A prior fitted on one source (a climate model's fields) and applied to another (reanalysis) is
too sure of itself where the new fields carry variance it never saw: its 90 % intervals cover far
less than 90 %. Model the missing variance as white noise of variance ``δ²`` on every entry
(kriging's nugget, data assimilation's representativeness error), ``x = x_prior + δ ξ``. Under a
:class:`~manifold_aps.gaussian_posterior.LowRankGaussian` prior ``N(μ, Φ S Φᵀ + τ² I)`` the ``m``
observed entries of ``y = x_o + σ n`` are then

    y_o ~ N(μ_o, A Aᵀ + c I),   A = Φ_o S^½,   c = τ² + δ² + σ²,

and :func:`estimate_model_error` takes the ``δ² ≥ 0`` of largest marginal likelihood (empirical
Bayes: no clean field is needed). With ``AᵀA = U diag(λ) Uᵀ``, ``r = y_o − μ_o`` and
``q = Uᵀ Aᵀ r`` (one ``k × k`` eigen-decomposition per measurement, then ``O(k)`` per ``c``):

    −2 log p(y_o) = m log 2π + (m − k) log c + Σ_i log(c + λ_i) + (‖r‖² − Σ_i q_i² / (c + λ_i)) / c.

``δ² = 0`` where the prior explains the measurement (it is what the data say, not a floor). The
posterior with model error is that of the prior with nugget ``τ² + δ²``
(:func:`with_model_error`). A sampler trained without it draws ``x_prior`` as if its observed
entries had noise ``σ²``, not ``σ² + δ²``; :func:`add_model_error` then adds ``δ ξ`` from its exact
conditional given each draw and ``y``. The result is the posterior with model error up to that
``σ²`` (exact when ``δ² ≪ σ²``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from manifold_aps.gaussian_posterior import LowRankGaussian

__all__ = ["marginal_log_likelihood", "estimate_model_error", "with_model_error", "add_model_error"]

GRID_POINTS = 256  # log-spaced δ² candidates between 1e-6 (τ² + σ²) and the residual's variance
REFINE_STEPS = 40  # golden-section steps between the best candidate's neighbours


class _Innovations(NamedTuple):
    """What the marginal likelihood needs of each measurement's observed residual ``r = y_o − μ_o``."""

    eigenvalues: torch.Tensor  # λ (B, k) of AᵀA
    squared: torch.Tensor  # q² (B, k)
    norm: torch.Tensor  # ‖r‖² (B,)
    count: torch.Tensor  # m (B,)
    white: float  # τ² + σ², the white variance before model error


def _innovations(gaussian: LowRankGaussian, y, observed, noise_std: float) -> _Innovations:
    y, observed, noise_variance = gaussian._checked(y, observed, noise_std)
    if not bool(observed.any(dim=1).all()):
        raise ValueError("every measurement needs at least one observed entry to estimate model error from")
    mask = observed.to(torch.float64)
    residual = torch.where(observed, y - gaussian.mean, torch.zeros_like(y))
    root_spectrum = gaussian.spectrum.sqrt()
    eigenvalues, projected = [], []
    for start in range(0, y.shape[0], gaussian.BLOCK):
        block = slice(start, start + gaussian.BLOCK)
        gram = torch.einsum("bv,vi,vj->bij", mask[block], gaussian.modes, gaussian.modes)
        gram = gram * root_spectrum[:, None] * root_spectrum[None, :]
        values, vectors = torch.linalg.eigh(gram)
        eigenvalues.append(values.clamp_min(0.0))
        projected.append(torch.einsum("bij,bi->bj", vectors, (residual[block] @ gaussian.modes) * root_spectrum))
    return _Innovations(torch.cat(eigenvalues), torch.cat(projected) ** 2, (residual**2).sum(dim=1), mask.sum(dim=1),
                        gaussian.nugget_variance + noise_variance)


def _negative_twice_log_likelihood(innovations: _Innovations, c: torch.Tensor) -> torch.Tensor:
    """``−2 log p(y_o)`` per measurement ``(B, G)`` for total white variances ``c`` ``(B, G)``."""
    eigenvalues, squared, norm, count, _ = innovations
    k = eigenvalues.shape[1]
    shifted = c[..., None] + eigenvalues[:, None, :]
    quadratic = (norm[:, None] - (squared[:, None, :] / shifted).sum(dim=-1)) / c
    return (count[:, None] * math.log(2 * math.pi) + (count[:, None] - k) * torch.log(c)
            + torch.log(shifted).sum(dim=-1) + quadratic)


def marginal_log_likelihood(gaussian: LowRankGaussian, y, observed, noise_std: float, model_error) -> torch.Tensor:
    """``log p(y_o)`` ``(B,)`` under the prior with extra white variance ``model_error`` (``δ²``,
    a scalar or one per measurement): ``N(μ_o, A Aᵀ + (τ² + δ² + σ²) I)``."""
    innovations = _innovations(gaussian, y, observed, noise_std)
    extra = torch.as_tensor(model_error, dtype=torch.float64).expand(innovations.norm.shape)
    if (extra < 0).any() or not torch.isfinite(extra).all():
        raise ValueError(f"model_error is a variance: it must be finite and ≥ 0, got {model_error}")
    return -0.5 * _negative_twice_log_likelihood(innovations, (innovations.white + extra)[:, None])[:, 0]


def estimate_model_error(gaussian: LowRankGaussian, y, observed, noise_std: float, pooled: bool = False) -> torch.Tensor:
    """The maximum-likelihood ``δ² ≥ 0`` (module docstring) of each measurement ``(B,)``, or one
    shared by all of them (``pooled``, repeated ``B`` times), in the Gaussian's units squared.

    A log grid of ``GRID_POINTS`` candidates (and ``δ² = 0``) up to the variance of the
    observed residual ``‖r‖²/m``, then golden-section search between the best one's neighbours.
    """
    innovations = _innovations(gaussian, y, observed, noise_std)
    base, count = innovations.white, len(innovations.norm)

    def objective(c):  # (B', G) candidates → (B', G); pooled: one row, the sum over measurements
        if pooled:
            return _negative_twice_log_likelihood(innovations, c.expand(count, -1)).sum(0, keepdim=True)
        return _negative_twice_log_likelihood(innovations, c)

    top = (innovations.norm.sum() / innovations.count.sum()).reshape(1) if pooled else innovations.norm / innovations.count
    top = torch.maximum(top, torch.full_like(top, 2e-6 * base))
    steps = torch.linspace(0.0, 1.0, GRID_POINTS, dtype=torch.float64)
    grid = torch.cat([torch.zeros_like(top)[:, None],
                      1e-6 * base * (top[:, None] / (1e-6 * base)) ** steps[None, :]], dim=1)  # (B', G + 1) δ²
    best = objective(base + grid).argmin(dim=1)
    rows = torch.arange(grid.shape[0])
    low = grid[rows, (best - 1).clamp_min(0)]
    high = grid[rows, (best + 1).clamp_max(grid.shape[1] - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(REFINE_STEPS):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        values = objective(base + torch.stack([left, right], dim=1))
        keep_left = values[:, 0] <= values[:, 1]
        high = torch.where(keep_left, right, high)
        low = torch.where(keep_left, low, left)
    refined = 0.5 * (low + high)
    candidates = torch.stack([grid[rows, best], refined], dim=1)
    chosen = candidates[rows, objective(base + candidates).argmin(dim=1)]
    return chosen.expand(count).clone() if pooled else chosen


def with_model_error(gaussian: LowRankGaussian, model_error: float) -> LowRankGaussian:
    """The prior with nugget ``τ² + δ²`` (``model_error`` = ``δ²``, a float ≥ 0)."""
    if not math.isfinite(model_error) or model_error < 0:
        raise ValueError(f"model_error is a variance: it must be finite and ≥ 0, got {model_error}")
    return LowRankGaussian(gaussian.mean, gaussian.modes, gaussian.spectrum, gaussian.nugget_variance + model_error)


def add_model_error(draws: torch.Tensor, y: torch.Tensor, observed: torch.Tensor, noise_std: float,
                    model_error: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws of ``x = x_prior + δ ξ`` from draws of ``x_prior``: ``draws`` ``(n, B, V, C)`` plus
    ``δ ξ`` drawn from its posterior given each draw and ``y`` ``(B, V, C)`` (``model_error`` =
    ``δ²`` ``(B,)``, ``observed`` ``(B, V)``):

        hidden entries:   δ ξ ~ N(0, δ²),
        observed entries: δ ξ ~ N(w (y − x_prior), w σ²),   w = δ² / (δ² + σ²).
    """
    model_error = torch.as_tensor(model_error, dtype=draws.dtype, device=draws.device)
    if model_error.shape != draws.shape[1:2]:
        raise ValueError(f"need one model error per measurement ({draws.shape[1]}), got shape {tuple(model_error.shape)}")
    if y.shape != draws.shape[1:] or observed.shape != draws.shape[1:3]:
        raise ValueError(f"y {tuple(y.shape)} and observed {tuple(observed.shape)} do not match draws {tuple(draws.shape)}")
    variance = model_error.reshape(1, -1, *([1] * (draws.dim() - 2)))
    weight = variance / (variance + float(noise_std) ** 2)
    seen = observed[None, ..., None].to(draws.device)
    shift = torch.where(seen, weight * (y.to(draws.device)[None] - draws), torch.zeros((), dtype=draws.dtype))
    spread = torch.where(seen, weight * float(noise_std) ** 2, variance).sqrt()
    noise = torch.randn(draws.shape, generator=generator, dtype=draws.dtype,
                        device="cpu" if generator is None else generator.device).to(draws.device)
    return draws + shift + spread * noise
