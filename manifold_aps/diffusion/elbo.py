"""The diffusion model's evidence lower bound as a differentiable prior term (docs/method.md, "The
prior: a diffusion model over vertex vectors").

For a candidate signal ``x_0`` (e.g. a flow output) APS maximises

    b'(x_0) = E_e[log N(x_1; 0, I)] − ½ ∫_ε^1 β(t)/σ_t² E_e‖ε_θ(x_t, t) − e‖² dt,
    x_t = α_t x_0 + σ_t e,

(``g² ‖s_θ − ∇log p(x_t | x_0)‖² = β ‖ε_θ − e‖² / σ_t²``). The first term is closed form:
``−d/2 log 2π − ½ (α_1² ‖x_0‖² + σ_1² d)``. The integral is estimated by importance sampling
``t ~ q(t) ∝ w(t) = β(t)/σ_t²`` (likelihood weighting), for which ``w(t)/q(t) = Z = ∫ w`` is
constant, so the estimator is ``Z · mean_k ‖ε_θ(x_{t_k}, t_k) − e_k‖²``. ``q`` is sampled by a
tabulated inverse CDF. The terms of the full bound that do not depend on ``x_0`` are added in
:mod:`manifold_aps.diffusion.likelihood`.
"""

from __future__ import annotations

import math

import torch

from manifold_aps.diffusion.sde import VPSDE

__all__ = ["ImportanceTimeSampler", "elbo_prior_term"]


class ImportanceTimeSampler:
    """Draw ``t ∈ [ε, 1]`` with density ``q(t) = w(t) / Z``, ``w(t) = β(t) / σ_t²``.

    The CDF is tabulated on a grid that is uniform in ``log t`` (``w ~ 1/t`` near 0) and inverted
    by linear interpolation.
    """

    def __init__(self, sde: VPSDE, grid_size: int = 20001):
        self.sde = sde
        times = torch.logspace(math.log10(sde.eps), 0.0, grid_size, dtype=torch.float64)
        weights = sde.beta(times) / sde.sigma(times) ** 2
        increments = 0.5 * (weights[1:] + weights[:-1]) * (times[1:] - times[:-1])
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64), increments.cumsum(0)])
        self.normaliser = float(cdf[-1])  # Z = ∫_ε^1 β/σ² dt
        self._times = times
        self._cdf = cdf / cdf[-1]

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return self.sde.beta(t) / self.sde.sigma(t) ** 2

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """``q(t)``."""
        return self.weight(t) / self.normaliser

    def sample(self, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        uniform = torch.rand(shape, generator=generator, dtype=torch.float64,
                             device=generator.device if generator is not None else "cpu")
        index = torch.searchsorted(self._cdf, uniform.cpu().flatten()).clamp(1, len(self._cdf) - 1)
        c0, c1 = self._cdf[index - 1], self._cdf[index]
        t0, t1 = self._times[index - 1], self._times[index]
        times = t0 + (uniform.cpu().flatten() - c0) / (c1 - c0).clamp_min(1e-300) * (t1 - t0)
        return times.reshape(shape).to(device=device or uniform.device, dtype=torch.float32)


def elbo_prior_term(noise_predictor, sde: VPSDE, x0: torch.Tensor, num_times: int = 1,
                    time_sampler: ImportanceTimeSampler | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``b'(x_0)`` per sample ``(B,)``, differentiable in ``x_0`` ``(B, d)``.

    Arguments:
        noise_predictor: ``ε_θ(x_t, t)`` taking ``(B, d)`` and ``(B,)``.
        num_times: Monte-Carlo draws of ``(t, e)`` per sample (the variance falls as 1/num_times).
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, d), got {tuple(x0.shape)}")
    sampler = time_sampler or ImportanceTimeSampler(sde)
    batch, dim = x0.shape
    one = torch.ones(1, dtype=torch.float64)
    alpha1, sigma1 = float(sde.alpha(one)), float(sde.sigma(one))
    reference = -0.5 * dim * math.log(2 * math.pi) - 0.5 * (alpha1**2 * (x0**2).sum(dim=1) + sigma1**2 * dim)
    times = sampler.sample((num_times * batch,), generator=generator, device=x0.device).to(x0.dtype)
    repeated = x0.repeat(num_times, 1)
    noise = torch.randn(repeated.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    residual = noise_predictor(sde.perturb(repeated, times, noise), times) - noise
    squared = (residual**2).sum(dim=1).reshape(num_times, batch).mean(dim=0)
    return reference - 0.5 * sampler.normaliser * squared
