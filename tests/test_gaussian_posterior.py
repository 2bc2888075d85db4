import numpy as np
import pytest
import torch

from manifold_aps.gaussian_posterior import LowRankGaussian, fit_ppca, optimal_interpolation


def _random_prior(dim=12, rank=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    modes = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
    spectrum = torch.rand(rank, generator=generator, dtype=torch.float64) + 0.5
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)
    return LowRankGaussian(mean, modes, spectrum, nugget_variance=0.05)


def test_posterior_equals_dense_linear_algebra():
    prior = _random_prior()
    generator = torch.Generator().manual_seed(1)
    observed = torch.rand(3, prior.dim, generator=generator) > 0.4
    y = prior.sample(3, generator) + 0.1 * torch.randn(3, prior.dim, generator=generator, dtype=torch.float64)
    result = prior.posterior(y, observed, noise_std=0.1, full_covariance=True)
    sigma = prior.covariance()
    for b in range(3):
        selection = torch.eye(prior.dim, dtype=torch.float64)[observed[b]]
        precision = torch.linalg.inv(sigma) + selection.T @ selection / 0.01
        covariance = torch.linalg.inv(precision)
        mean = covariance @ (torch.linalg.solve(sigma, prior.mean) + selection.T @ y[b][observed[b]] / 0.01)
        assert torch.allclose(result.mean[b], mean, atol=1e-9)
        assert torch.allclose(result.covariance[b], covariance, atol=1e-9)
        assert torch.allclose(result.std[b], covariance.diagonal().sqrt(), atol=1e-9)
    assert (result.std <= prior.pointwise_variance().sqrt() + 1e-12).all()


def test_log_prob_matches_torch_multivariate_normal():
    prior = _random_prior()
    x = prior.sample(5, torch.Generator().manual_seed(2))
    reference = torch.distributions.MultivariateNormal(prior.mean, prior.covariance()).log_prob(x)
    assert torch.allclose(prior.log_prob(x), reference, atol=1e-9)


def test_log_evidence_is_the_observed_entries_marginal_density():
    prior = _random_prior()
    generator = torch.Generator().manual_seed(3)
    observed = torch.rand(20, prior.dim, generator=generator) > 0.5  # more rows than one block of 16
    observed[0] = False  # nothing observed: the evidence of an empty set is log 1
    y = prior.sample(20, generator) + 0.1 * torch.randn(20, prior.dim, generator=generator, dtype=torch.float64)
    evidence = prior.log_evidence(y, observed, noise_std=0.1)
    assert evidence.shape == (20,) and evidence[0] == pytest.approx(0.0, abs=1e-12)
    covariance = prior.covariance() + 0.01 * torch.eye(prior.dim, dtype=torch.float64)
    for row in range(1, 20):
        seen = observed[row]
        reference = torch.distributions.MultivariateNormal(prior.mean[seen], covariance[seen][:, seen]).log_prob(y[row, seen])
        assert evidence[row] == pytest.approx(reference.item(), abs=1e-9)


def test_posterior_root_and_evidence_share_one_solve_and_equal_each_alone():
    prior = _random_prior()
    generator = torch.Generator().manual_seed(4)
    observed = torch.rand(20, prior.dim, generator=generator) > 0.5
    y = prior.sample(20, generator)
    root, evidence = prior.posterior_root_and_evidence(y, observed, noise_std=0.1)
    alone = prior.posterior_root(y, observed, 0.1, prior.rank)
    torch.testing.assert_close(evidence, prior.log_evidence(y, observed, 0.1), rtol=0, atol=1e-10)
    for name in ("mean", "scale"):
        torch.testing.assert_close(getattr(root, name), getattr(alone, name), rtol=0, atol=1e-10)
    torch.testing.assert_close(root.marginal_std(), alone.marginal_std(), rtol=0, atol=1e-10)
    torch.testing.assert_close(root.log_det(), alone.log_det(), rtol=0, atol=1e-10)


def test_ppca_recovers_a_low_rank_covariance():
    truth = _random_prior(dim=30, rank=3, seed=3)
    data = truth.sample(20000, torch.Generator().manual_seed(4))
    fitted = fit_ppca(data, rank=3)
    error = torch.linalg.norm(fitted.covariance() - truth.covariance()) / torch.linalg.norm(truth.covariance())
    assert error < 0.05
    assert fitted.nugget_variance == pytest.approx(0.05, rel=0.1)


def test_optimal_interpolation_chooses_the_true_rank_region():
    truth = _random_prior(dim=40, rank=6, seed=5)
    generator = torch.Generator().manual_seed(6)
    train = truth.sample(2000, generator)
    clean = truth.sample(50, generator)
    observed = torch.rand(50, 40, generator=generator) > 0.5
    y = clean + 0.05 * torch.randn(50, 40, generator=generator, dtype=torch.float64)
    prior, scores = optimal_interpolation(train, (y, observed), clean, noise_std=0.05, ranks=(1, 2, 6, 20))
    # ranks past the truth only model noise directions: no better than the true rank, never chosen below it
    assert prior.rank >= 6 and scores[6] <= 1.02 * min(scores.values())
    assert scores[1] > 1.5 * scores[6] and scores[2] > 1.2 * scores[6]
    with pytest.raises(ValueError, match="NaN"):
        fit_ppca(np.full((3, 4), np.nan), 1)


def test_low_rank_noise_predictor_equals_the_dense_one_with_padding():
    from manifold_aps.diffusion import GaussianNoisePredictor, exact_gaussian_prior
    from manifold_aps.signals import VertexLayout

    gaussian = _random_prior(dim=20, rank=5, seed=7)
    layout = VertexLayout(20, 1)  # padded to 32
    prior = exact_gaussian_prior(gaussian, layout)
    dense_covariance = torch.zeros(32, 32, dtype=torch.float64)
    dense_covariance[:20, :20] = gaussian.covariance()
    mean = torch.zeros(32, dtype=torch.float64)
    mean[:20] = gaussian.mean
    dense = GaussianNoisePredictor(mean, dense_covariance)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(6, 32, generator=generator, dtype=torch.float64)
    t = torch.rand(6, generator=generator, dtype=torch.float64) * 0.99 + 0.01
    assert torch.allclose(prior.network(x, t), dense(x, t), atol=1e-9)
    rebuilt = GaussianNoisePredictor.from_state(prior.network.state_dict(), prior.sde)
    assert torch.allclose(rebuilt(x, t), dense(x, t), atol=1e-9)
    # log-density of the real entries agrees with the LowRankGaussian's
    unpadded = GaussianNoisePredictor.from_low_rank(gaussian.mean, gaussian.modes, gaussian.spectrum, gaussian.nugget_variance)
    samples = gaussian.sample(4, generator)
    assert torch.allclose(unpadded.log_prob(samples), gaussian.log_prob(samples), atol=1e-8)


@pytest.mark.parametrize("rank", [3, 40])
def test_posterior_root_matches_the_dense_posterior(rank):
    from manifold_aps.gaussian_posterior import LowRankGaussian

    generator = torch.Generator().manual_seed(0)
    D, k = 30, 6
    prior = LowRankGaussian(torch.randn(D, generator=generator, dtype=torch.float64),
                            torch.randn(D, k, generator=generator, dtype=torch.float64),
                            torch.rand(k, generator=generator, dtype=torch.float64) + 0.5, 0.05)
    y = torch.randn(2, D, generator=generator, dtype=torch.float64)
    observed = torch.rand(2, D, generator=generator) < 0.5
    exact = prior.posterior(y, observed, 0.1, full_covariance=True)
    root = prior.posterior_root(y, observed, 0.1, rank)
    eye = torch.eye(D, dtype=torch.float64)
    L = root.scale[:, :, None] * (eye + root.directions @ root.directions.transpose(1, 2))  # x = mean + L u
    covariance = L @ L.transpose(1, 2)
    torch.testing.assert_close(root.mean, exact.mean)
    torch.testing.assert_close(torch.diagonal(covariance, dim1=1, dim2=2), exact.std**2)  # marginals always exact
    if rank >= k:
        torch.testing.assert_close(covariance, exact.covariance)
    torch.testing.assert_close(root.log_det(), torch.linalg.slogdet(L)[1])
    u = torch.randn(5, 2, D, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(root.transform(u), root.mean + torch.einsum("bij,nbj->nbi", L, u))
    prior_root = prior.root(k)
    L0 = prior_root.scale[:, :, None] * (eye + prior_root.directions @ prior_root.directions.transpose(1, 2))
    torch.testing.assert_close((L0 @ L0.transpose(1, 2))[0], prior.covariance())
