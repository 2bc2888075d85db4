"""Gaussian-mixture fields against dense linear algebra and autograd.

Every closed form of :mod:`manifold_aps.data.gaussian_mixture` (posterior mean, std and component
weights, the noised log-density and the exact noise prediction) is compared with the same quantity
built from dense covariances by ``torch.distributions``, and the diffusion likelihoods of
``exact_prior`` with the mixture's own ``log_prob``.
"""

import math

import pytest
import torch

import manifold_aps as aps
from manifold_aps.data import GaussianMixtureField, matern_mixture
from manifold_aps.diffusion.likelihood import elbo_bound, ode_log_likelihood
from manifold_aps.gaussian_posterior import LowRankGaussian
from manifold_aps.signals import VertexLayout

MultivariateNormal = torch.distributions.MultivariateNormal
NOISE_STD = 0.1


@pytest.fixture(scope="module")
def small_mixture():
    """Three Matérn components on the 48-vertex HEALPix sphere: two that differ only in mean level
    (often confused after masking) and a rough, weaker one."""
    return matern_mixture(aps.healpix_sphere(2), means=(0.4, 0.6, 0.5), length_fractions=(0.5, 0.5, 0.1),
                          stds=(0.15, 0.15, 0.08), weights=(0.3, 0.5, 0.2), num_modes=20, nugget=0.05)


@pytest.fixture(scope="module")
def measurements(small_mixture):
    """Six measurements with their own random masks (60 % hidden), drawn from the mixture."""
    generator = torch.Generator().manual_seed(0)
    truth = small_mixture.sample(6, generator)
    observed = torch.rand(truth.shape, generator=generator, dtype=torch.float64) > 0.6
    y = torch.where(observed, truth + NOISE_STD * torch.randn(truth.shape, generator=generator, dtype=torch.float64), 0.0)
    return truth, y, observed


def _dense_posterior(mixture, y, observed):
    """Mean, std and weights of the mixture posterior from dense covariances, one measurement."""
    means, variances, log_joint = [], [], []
    for weight, component in zip(mixture.weights, mixture.components):
        covariance = component.covariance()
        selection = torch.eye(mixture.dim, dtype=torch.float64)[observed]
        precision = torch.linalg.inv(covariance) + selection.T @ selection / NOISE_STD**2
        posterior_covariance = torch.linalg.inv(precision)
        means.append(posterior_covariance @ (torch.linalg.solve(covariance, component.mean)
                                             + selection.T @ y[observed] / NOISE_STD**2))
        variances.append(torch.diagonal(posterior_covariance))
        marginal = covariance[observed][:, observed] + NOISE_STD**2 * torch.eye(int(observed.sum()), dtype=torch.float64)
        log_joint.append(torch.log(weight) + MultivariateNormal(component.mean[observed], marginal).log_prob(y[observed]))
    weights = torch.softmax(torch.stack(log_joint), dim=0)
    means, variances = torch.stack(means), torch.stack(variances)
    mean = weights @ means
    second_moment = weights @ (variances + means**2)
    return mean, (second_moment - mean**2).sqrt(), weights


def test_posterior_matches_dense_linear_algebra(small_mixture, measurements):
    _, y, observed = measurements
    posterior = small_mixture.posterior(y, observed, NOISE_STD)
    assert posterior.mean.shape == y.shape and posterior.weights.shape == (6, 3)
    for row in range(len(y)):
        mean, std, weights = _dense_posterior(small_mixture, y[row], observed[row])
        assert torch.allclose(posterior.mean[row], mean, rtol=0, atol=1e-8)
        assert torch.allclose(posterior.std[row], std, rtol=0, atol=1e-8)
        assert torch.allclose(posterior.weights[row], weights, rtol=0, atol=1e-8)
    # the check is only as strong as its weights are mixed: some measurement must leave doubt
    assert ((posterior.weights > 0.05) & (posterior.weights < 0.95)).any()
    single = small_mixture.posterior(y[2], observed[2], NOISE_STD)
    assert single.mean.shape == (48,) and single.weights.shape == (3,)
    assert torch.allclose(single.weights, posterior.weights[2], rtol=0, atol=1e-12)


def test_posterior_draws_have_the_posterior_moments_and_weights(small_mixture, measurements):
    _, y, observed = measurements
    posterior = small_mixture.posterior(y[:2], observed[:2], NOISE_STD)
    draws = posterior.sample(4000, torch.Generator().manual_seed(1))
    assert draws.shape == (4000, 2, 48)
    standard_error = posterior.std / math.sqrt(4000)
    assert ((draws.mean(0) - posterior.mean).abs() < 5 * standard_error).all()
    assert ((draws.std(0) / posterior.std - 1).abs() < 0.1).all()
    # E_{x ~ p(x|y)} p(k | x) = p(k | y): the soft fractions of exact draws are unbiased for the weights
    for row in range(2):
        soft = small_mixture.responsibilities(draws[:, row])
        error = soft.std(0) / math.sqrt(len(soft))
        assert ((soft.mean(0) - posterior.weights[row]).abs() < 5 * error + 1e-3).all()


def test_log_prob_and_prior_draws(small_mixture, measurements):
    truth, _, _ = measurements
    dense = torch.stack([torch.log(w) + MultivariateNormal(c.mean, c.covariance()).log_prob(truth)
                         for w, c in zip(small_mixture.weights, small_mixture.components)])
    assert torch.allclose(small_mixture.log_prob(truth), torch.logsumexp(dense, dim=0), rtol=1e-10)
    draws = small_mixture.sample(20000, torch.Generator().manual_seed(2))
    mean = sum(w * c.mean for w, c in zip(small_mixture.weights, small_mixture.components))
    assert (draws.mean(0) - mean).abs().max() < 0.01
    labels = small_mixture.responsibilities(draws).argmax(1)  # the mean levels set most draws apart
    fractions = torch.bincount(labels, minlength=3) / len(labels)
    assert (fractions - small_mixture.weights).abs().max() < 0.1


def _dense_noised_log_prob(mixture, layout, x, t, sde):
    """``log p_t(x)`` of the padded mixture, from dense covariances (padding: mean 0, variance 0)."""
    real = mixture.dim
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    terms = []
    for weight, component in zip(mixture.weights, mixture.components):
        mean = torch.zeros(layout.dim, dtype=torch.float64)
        mean[:real] = component.mean
        covariance = torch.zeros(layout.dim, layout.dim, dtype=torch.float64)
        covariance[:real, :real] = component.covariance()
        noised = alpha**2 * covariance + sigma**2 * torch.eye(layout.dim, dtype=torch.float64)
        terms.append(torch.log(weight) + MultivariateNormal(alpha * mean, noised).log_prob(x))
    return torch.logsumexp(torch.stack(terms), dim=0)


@pytest.mark.parametrize("time", [1e-3, 0.05, 0.3, 1.0])
def test_exact_noise_prediction_is_minus_sigma_times_the_autograd_score(small_mixture, time):
    layout = VertexLayout(48, multiple=32)  # 16 padding entries
    prior = small_mixture.exact_prior(layout)
    sde = prior.sde
    t = torch.tensor(time, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    x0 = layout.pad(small_mixture.sample(4, generator)[..., None]).flatten(1)
    x = (sde.alpha(t) * x0 + sde.sigma(t) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)).requires_grad_()
    dense = _dense_noised_log_prob(small_mixture, layout, x, t, sde)
    (score,) = torch.autograd.grad(dense.sum(), x)
    times = t.expand(4)
    prediction = prior(x.detach(), times)
    assert torch.allclose(prediction, -sde.sigma(t) * score, rtol=1e-8, atol=1e-8 * float(prediction.abs().max()))
    assert torch.allclose(prior.network.log_prob_noised(x.detach(), times), dense.detach(), rtol=1e-10)
    single = prior(x.detach().float(), times.float())
    assert single.dtype == torch.float32 and torch.allclose(single.double(), prediction, atol=1e-4)


def test_exact_noise_prediction_stays_finite_on_the_4_degree_sphere():
    """V = 4140: log-densities of order 10⁴, responsibilities decided by their differences."""
    mixture = matern_mixture(aps.latlon_sphere(4.0), means=(0.3, 0.7), length_fractions=(0.2, 0.2), stds=(0.1, 0.1))
    layout = VertexLayout(4140)
    prior = mixture.exact_prior(layout)
    x0 = layout.pad(mixture.components[1].sample(2, torch.Generator().manual_seed(4))[..., None]).flatten(1)
    t = torch.full((2,), 0.01, dtype=torch.float64)
    x = prior.sde.perturb(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    log_joint, predictions = prior.network.component_terms(x, t)
    assert (log_joint[:, 1] - log_joint[:, 0] > 30).all() and log_joint.abs().min() > 1e3  # exp() would overflow
    assert torch.allclose(prior(x, t), predictions[1], rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def bimodal_prior():
    """Two rank-2 Gaussians in 5 dimensions, 3 mean-stds apart (clearly bimodal), padded to 8."""
    generator = torch.Generator().manual_seed(6)
    components = [LowRankGaussian(torch.full((5,), level, dtype=torch.float64),
                                  torch.randn(5, 2, generator=generator, dtype=torch.float64) / 2,
                                  torch.tensor([1.0, 0.5], dtype=torch.float64), 0.1) for level in (-0.6, 0.6)]
    mixture = GaussianMixtureField(components, [0.35, 0.65])
    return mixture, mixture.exact_prior(VertexLayout(5, multiple=8))


def test_exact_prior_ode_likelihood_matches_log_prob(bimodal_prior):
    mixture, prior = bimodal_prior
    x = mixture.sample(4, torch.Generator().manual_seed(7))
    result = ode_log_likelihood(prior, torch.nn.functional.pad(x, (0, 3)), divergence="exact")
    assert (result.log_likelihood - mixture.log_prob(x)).abs().max() / 5 < 1e-2


def test_exact_prior_full_elbo_is_a_tight_bound(bimodal_prior):
    mixture, prior = bimodal_prior
    x = mixture.sample(3, torch.Generator().manual_seed(8))
    draws = 4000
    generator = torch.Generator().manual_seed(9)
    for point in torch.nn.functional.pad(x, (0, 3)):
        estimates = elbo_bound(prior, point.expand(draws, 8).clone(), generator=generator)
        bound, standard_error = estimates.mean(), estimates.std() / math.sqrt(draws)
        exact = mixture.log_prob(point[None, :5])[0]
        assert bound <= exact + 3 * standard_error
        assert exact - bound < 0.02 * 5 + 3 * standard_error


def test_bad_inputs_raise_clear_errors(small_mixture):
    component = small_mixture.components[0]
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixtureField([component, component], [0.5, 0.6])
    with pytest.raises(ValueError, match="positive"):
        GaussianMixtureField([component, component], [1.5, -0.5])
    with pytest.raises(ValueError, match="K = 0"):
        GaussianMixtureField([], [])
    other = LowRankGaussian(torch.zeros(5), torch.ones(5, 1), torch.ones(1), 0.1)
    with pytest.raises(ValueError, match="same dimension"):
        GaussianMixtureField([component, other], [0.5, 0.5])
    with pytest.raises(ValueError, match="one per component"):
        GaussianMixtureField([component, component], [1.0])
    with pytest.raises(ValueError, match="nugget"):
        GaussianMixtureField([LowRankGaussian(torch.zeros(5), torch.ones(5, 1), torch.ones(1), 0.0)], [1.0])
    with pytest.raises(ValueError, match="D=48"):
        small_mixture.posterior(torch.zeros(3, 47), torch.ones(3, 47, dtype=torch.bool), NOISE_STD)
    with pytest.raises(ValueError, match="one entry per component"):
        matern_mixture(aps.healpix_sphere(2), means=(0.4, 0.6), length_fractions=(0.5,), stds=(0.1, 0.1))
