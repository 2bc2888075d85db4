"""The diffusion machinery against closed-form Gaussian ground truth.

The exact noise predictor of ``N(μ, Σ)`` data (:class:`GaussianNoisePredictor`) replaces the
network, so every discrepancy is an error of the estimator, sampler or solver under test.
"""

import math

import pytest
import torch

from manifold_aps.diffusion import DiffusionPrior, GaussianNoisePredictor, VPSDE
from manifold_aps.diffusion.likelihood import bits_per_dim, elbo_bound, elbo_constant, ode_log_likelihood
from manifold_aps.diffusion.sampling import (sample_ancestral, sample_euler_maruyama, sample_ode,
                                             sample_ode_adaptive, time_grid)
from manifold_aps.signals import VertexLayout

DIM = 6


@pytest.fixture(scope="module")
def gaussian():
    """A correlated ``N(μ, Σ)`` in 6 dimensions with variances between 0.05 and 1.5."""
    generator = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator, dtype=torch.float64))
    variances = torch.linspace(0.05, 1.5, DIM, dtype=torch.float64)
    covariance = basis @ torch.diag(variances) @ basis.T
    mean = 0.5 * torch.randn(DIM, generator=generator, dtype=torch.float64)
    predictor = GaussianNoisePredictor(mean, covariance)
    prior = DiffusionPrior(predictor, VertexLayout(DIM, multiple=1))
    return prior, mean, covariance


def _draws(mean, covariance, count, seed):
    generator = torch.Generator().manual_seed(seed)
    white = torch.randn(count, DIM, generator=generator, dtype=torch.float64)
    return mean + white @ torch.linalg.cholesky(covariance).T


def test_gaussian_ode_likelihood_matches_analytic_density(gaussian):
    prior, mean, covariance = gaussian
    x0 = _draws(mean, covariance, 4, seed=2)
    result = ode_log_likelihood(prior, x0, divergence="exact")
    exact = prior.network.log_prob(x0)
    assert (result.log_likelihood - exact).abs().max() / DIM < 1e-2
    assert result.nfe > 10
    assert torch.allclose(bits_per_dim(exact, DIM), -exact / (DIM * math.log(2)))


def test_gaussian_ode_likelihood_hutchinson_is_unbiased(gaussian):
    prior, mean, covariance = gaussian
    copies = 64  # one Rademacher probe per copy: 64 independent estimates of the same log p(x0)
    point = _draws(mean, covariance, 1, seed=2)
    estimates = ode_log_likelihood(prior, point.expand(copies, DIM).clone(), divergence="hutchinson",
                                   generator=torch.Generator().manual_seed(3)).log_likelihood
    exact = prior.network.log_prob(point)[0]
    standard_error = estimates.std() / math.sqrt(copies)
    assert abs(estimates.mean() - exact) < 4 * standard_error + 1e-2 * DIM
    assert estimates.std() > 1e-3  # the probes really are random


def test_gaussian_full_elbo_is_below_exact_with_small_gap(gaussian):
    prior, mean, covariance = gaussian
    x0 = _draws(mean, covariance, 3, seed=4)
    draws = 4000
    generator = torch.Generator().manual_seed(5)
    for point in x0:
        estimates = elbo_bound(prior, point.expand(draws, DIM).clone(), generator=generator)
        bound, standard_error = estimates.mean(), estimates.std() / math.sqrt(draws)
        exact = prior.network.log_prob(point[None])[0]
        assert bound <= exact + 3 * standard_error  # a bound (within Monte-Carlo error)
        assert exact - bound < 0.02 * DIM + 3 * standard_error  # and a tight one for the exact score


def _expected_squared_residual(predictor, sde, x0, times):
    """``E_e‖ε*(α_t x_0 + σ_t e, t) − e‖²`` in closed form (ε* is linear in e)."""
    offset = (x0 - predictor.mean) @ predictor.eigenvectors
    alpha2, sigma2 = sde.alpha(times)[:, None] ** 2, sde.sigma(times)[:, None] ** 2
    precision = 1.0 / (alpha2 * predictor.eigenvalues + sigma2)
    return (sigma2 * alpha2 * precision**2 * offset**2).sum(1) + ((sigma2 * precision - 1.0) ** 2).sum(1)


def test_elbo_importance_sampling_is_unbiased_against_quadrature(gaussian):
    prior, mean, covariance = gaussian
    sde = prior.sde
    point = _draws(mean, covariance, 1, seed=6)[0]
    times = torch.logspace(math.log10(sde.eps), 0.0, 200001, dtype=torch.float64)
    integrand = sde.beta(times) / sde.sigma(times) ** 2 * _expected_squared_residual(prior.network, sde, point, times)
    integral = torch.trapezoid(integrand, times)
    alpha1, sigma1 = sde.alpha(torch.tensor(1.0, dtype=torch.float64)), sde.sigma(torch.tensor(1.0, dtype=torch.float64))
    reference = -0.5 * DIM * math.log(2 * math.pi) - 0.5 * (alpha1**2 * point.pow(2).sum() + sigma1**2 * DIM)
    quadrature = reference - 0.5 * integral
    draws = 20000
    estimates = prior.elbo(point.expand(draws, DIM).clone(), generator=torch.Generator().manual_seed(7))
    standard_error = estimates.std() / math.sqrt(draws)
    assert abs(estimates.mean() - quadrature) < 4 * standard_error


def test_elbo_constant_matches_its_integrals():
    sde = VPSDE()
    times = torch.logspace(math.log10(sde.eps), 0.0, 400001, dtype=torch.float64)
    normaliser = torch.trapezoid(sde.beta(times) / sde.sigma(times) ** 2, times)
    integrated_beta = torch.trapezoid(sde.beta(times), times)
    assert elbo_constant(sde, 10) == pytest.approx(5 * float(normaliser - integrated_beta), rel=1e-6)


@pytest.mark.parametrize("sampler, diffusion_steps", [(sample_euler_maruyama, 250), (sample_ancestral, 200),
                                                      (sample_ode, 50), (sample_ode_adaptive, None)])
def test_gaussian_reverse_samplers_match_mean_and_covariance(gaussian, sampler, diffusion_steps):
    prior, mean, covariance = gaussian
    count = 6000
    generator = torch.Generator().manual_seed(8)
    x_T = torch.randn(count, DIM, generator=generator, dtype=torch.float64)
    if diffusion_steps is None:
        samples, nfe = sampler(prior, x_T, rtol=1e-6, atol=1e-6)
    else:
        samples, nfe = sampler(prior, x_T, diffusion_steps=diffusion_steps, generator=generator)
        assert nfe == diffusion_steps * (2 if sampler is sample_ode else 1)
    # Sampling error of the moments of 6000 draws: ~ sqrt(Σ_ii / n) ≤ 0.016 for the mean.
    assert (samples.mean(0) - mean).abs().max() < 0.06
    covariance_error = torch.linalg.matrix_norm(torch.cov(samples.T) - covariance) / torch.linalg.matrix_norm(covariance)
    assert covariance_error < 0.06


def test_sampler_callback_sees_every_step(gaussian):
    prior, _, _ = gaussian
    seen = []
    sample_ancestral(prior, torch.randn(2, DIM, dtype=torch.float64), time_grid(7, prior.sde.eps),
                     callback=lambda info: seen.append(info["t"]))
    assert len(seen) == 7 and seen[0] == 1.0 and seen == sorted(seen, reverse=True)
    with pytest.raises(ValueError, match="diffusion_steps"):
        sample_euler_maruyama(prior, torch.randn(2, DIM, dtype=torch.float64), diffusion_steps=0)
    with pytest.raises(ValueError, match="x_T"):
        sample_ode(prior, torch.randn(2, DIM + 1, dtype=torch.float64), diffusion_steps=3)


def test_gaussian_likelihoods_of_padded_signals_count_only_real_entries():
    """Zero padding is a degenerate direction; ``real_only`` removes its closed-form contribution."""
    real, padded = 5, 8
    generator = torch.Generator().manual_seed(9)
    factor = torch.randn(real, real, generator=generator, dtype=torch.float64)
    real_covariance = factor @ factor.T / real + 0.2 * torch.eye(real, dtype=torch.float64)
    covariance = torch.zeros(padded, padded, dtype=torch.float64)
    covariance[:real, :real] = real_covariance
    prior = DiffusionPrior(GaussianNoisePredictor(torch.zeros(padded), covariance), VertexLayout(real, multiple=8))
    real_part = torch.randn(2, real, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(real_covariance).T
    x0 = torch.nn.functional.pad(real_part, (0, padded - real))
    exact = torch.distributions.MultivariateNormal(torch.zeros(real, dtype=torch.float64), real_covariance).log_prob(real_part)
    ode = ode_log_likelihood(prior, x0, divergence="exact").log_likelihood
    assert (ode - exact).abs().max() / real < 1e-2
    draws = 4000
    bound = elbo_bound(prior, x0[:1].expand(draws, padded).clone(), generator=torch.Generator().manual_seed(11))
    standard_error = bound.std() / math.sqrt(draws)
    assert bound.mean() <= exact[0] + 3 * standard_error
    assert exact[0] - bound.mean() < 0.02 * real + 3 * standard_error


@pytest.mark.parametrize("min_time, far_from_exact", [(1e-3, True), (1e-5, False)])
def test_elbo_gradient_is_the_score_of_the_prior_smoothed_at_its_lower_time_limit(min_time, far_from_exact):
    """``E ∇_x b'(x)`` over ``[ε, 1]`` is ``−(Σ + s² I)⁻¹ (x − μ)``, ``s² = σ_ε²/α_ε²``: the ELBO
    sees the prior smoothed by ``N(0, s² I)``, which matters where Σ has variances near ``s²``."""
    generator = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator, dtype=torch.float64))
    covariance = basis @ torch.diag(torch.logspace(-5, -2, DIM, dtype=torch.float64)) @ basis.T
    mean = 0.5 * torch.ones(DIM, dtype=torch.float64)
    prior = DiffusionPrior(GaussianNoisePredictor(mean, covariance), VertexLayout(DIM, multiple=1))
    point = _draws(mean, covariance, 1, seed=4)[0]
    draws = 40000
    x = point.expand(draws, DIM).clone().requires_grad_(True)
    (gradients,) = torch.autograd.grad(prior.elbo(x, generator=torch.Generator().manual_seed(5),
                                                  min_time=min_time).sum(), x)
    eps = torch.tensor(min_time, dtype=torch.float64)
    smoothing = float(prior.sde.sigma(eps) ** 2 / prior.sde.alpha(eps) ** 2)
    smoothed = -torch.linalg.solve(covariance + smoothing * torch.eye(DIM, dtype=torch.float64), point - mean)
    exact = -torch.linalg.solve(covariance, point - mean)
    standard_error = gradients.std(dim=0) / math.sqrt(draws)
    assert ((gradients.mean(dim=0) - smoothed).abs() < 5 * standard_error + 1e-3 * smoothed.abs()).all()
    # at the default ε = 1e-3 (s ≈ 0.0105) the smoothing dominates variances of 1e-5; at 1e-5 (s ≈ 0.001) it does not
    assert ((smoothed - exact).norm() > 0.5 * exact.norm()) == far_from_exact
