"""Gaussian random fields on meshes: sampling matches the covariance, the posterior is exact."""

import os

import numpy as np
import pytest
import torch

import manifold_aps as aps
from manifold_aps.data.gaussian_fields import GaussianRandomField, laplacian_eigenpairs


@pytest.fixture(scope="module")
def small_field():
    return GaussianRandomField(aps.healpix_sphere(2), length_scale=0.6, smoothness=1.5, variance=2.0, mean=1.0,
                               num_modes=24, nugget=1e-3)


def test_eigenpairs_are_mass_orthonormal_and_match_spherical_harmonics():
    sphere = aps.latlon_sphere(10.0)
    eigenvalues, modes = laplacian_eigenpairs(sphere, 9)
    mass = sphere.mass.numpy()
    assert np.allclose(modes.T @ (mass[:, None] * modes), np.eye(9), atol=1e-10)
    # unit sphere: Laplace-Beltrami eigenvalues l(l+1) = 0, 2 (×3), 6 (×5)
    assert abs(eigenvalues[0]) < 1e-8
    assert np.allclose(eigenvalues[1:4], 2.0, rtol=0.03) and np.allclose(eigenvalues[4:9], 6.0, rtol=0.05)


def test_sample_covariance_matches_covariance(small_field):
    samples = small_field.sample(20000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (20000, 48) and samples.dtype == torch.float64
    empirical = torch.cov(samples.T)
    exact = small_field.covariance()
    relative = torch.linalg.norm(empirical - exact) / torch.linalg.norm(exact)
    assert relative < 0.03, relative  # Monte Carlo error ≈ sqrt(2/n) · (stable rank factor) ≈ 0.01
    assert abs(samples.mean() - 1.0) < 0.05


def test_variance_is_normalised_over_area():
    mesh = aps.latlon_sphere(12.0)
    field = GaussianRandomField(mesh, length_scale=0.4, variance=3.0, num_modes=40, nugget=0.0)
    mass = mesh.mass.double()
    assert torch.isclose((field.pointwise_variance() * mass).sum() / mass.sum(), torch.tensor(3.0, dtype=torch.float64))


def test_shorter_length_scale_is_rougher():
    mesh = aps.healpix_sphere(4)
    generator = torch.Generator().manual_seed(1)
    rough = GaussianRandomField(mesh, length_scale=0.15, num_modes=150).sample(200, generator)
    smooth = GaussianRandomField(mesh, length_scale=0.8, num_modes=150).sample(200, generator)
    source, target = mesh.edge_index
    def edge_jump(x):
        return ((x[:, source] - x[:, target]) ** 2).mean() / x.var()
    assert edge_jump(rough) > 3 * edge_jump(smooth)


def test_posterior_equals_dense_linear_algebra(small_field):
    generator = torch.Generator().manual_seed(2)
    V, noise_std = small_field.num_vertices, 0.2
    truth = small_field.sample(3, generator)
    observed = torch.rand(3, V, generator=generator) < 0.5
    y = truth + noise_std * torch.randn(3, V, generator=generator, dtype=torch.float64)
    posterior = small_field.posterior(y, observed, noise_std, full_covariance=True)
    prior = small_field.covariance()
    prior_precision = torch.linalg.inv(prior)
    for b in range(3):
        A = torch.eye(V, dtype=torch.float64)[observed[b]]
        covariance = torch.linalg.inv(prior_precision + A.T @ A / noise_std**2)
        mean = covariance @ (prior_precision @ torch.full((V,), 1.0, dtype=torch.float64) + A.T @ y[b, observed[b]] / noise_std**2)
        assert torch.allclose(posterior.mean[b], mean, atol=1e-8, rtol=0)
        assert torch.allclose(posterior.covariance[b], covariance, atol=1e-8, rtol=0)
        assert torch.allclose(posterior.std[b], covariance.diagonal().sqrt(), atol=1e-8, rtol=0)


def test_posterior_shrinks_uncertainty_and_tracks_truth():
    mesh = aps.latlon_sphere(6.0)
    field = GaussianRandomField(mesh, length_scale=0.5, num_modes=80)
    generator = torch.Generator().manual_seed(3)
    truth = field.sample(4, generator)
    observed = torch.rand(4, mesh.num_vertices, generator=generator) < 0.4
    posterior = field.posterior(truth, observed, noise_std=0.05)
    assert posterior.mean.shape == (4, 1860) and posterior.std.shape == (4, 1860)
    prior_std = field.pointwise_variance().sqrt()
    assert (posterior.std <= prior_std + 1e-12).all()
    assert (posterior.std[observed] < 0.06).all()
    hidden_error = (posterior.mean - truth)[~observed].pow(2).mean().sqrt()
    assert hidden_error < 0.2 * truth.std()  # a smooth field is well predicted from 40 % of vertices
    # unbatched input gives unbatched output, identical values
    single = field.posterior(truth[0], observed[0], noise_std=0.05)
    assert single.mean.shape == (1860,) and torch.allclose(single.mean, posterior.mean[0])


@pytest.mark.skipif(not os.environ.get("MANIFOLD_APS_DATA"), reason="MANIFOLD_APS_DATA is not set: the bunny comes from the data mirror")
def test_bunny_isolated_vertices_are_independent():
    mesh = aps.bunny()
    isolated = np.flatnonzero(np.abs(mesh.laplacian).sum(axis=1).A1 == 0)
    assert len(isolated) == 2
    field = GaussianRandomField(mesh, length_scale=0.02, num_modes=64)
    covariance = field.covariance()
    others = np.setdiff1d(np.arange(mesh.num_vertices), isolated)
    assert covariance[isolated][:, others].abs().max() < 1e-10
    assert torch.isfinite(field.sample(2, torch.Generator().manual_seed(0))).all()


def test_invalid_arguments_raise():
    sphere = aps.healpix_sphere(1)
    with pytest.raises(ValueError, match="length_scale"):
        GaussianRandomField(sphere, length_scale=-1.0, num_modes=4)
    with pytest.raises(ValueError, match="num_modes"):
        GaussianRandomField(sphere, num_modes=12)
    field = GaussianRandomField(sphere, num_modes=4, nugget=0.0)
    with pytest.raises(ValueError, match="noise_std > 0"):
        field.posterior(torch.zeros(12), torch.ones(12, dtype=torch.bool), noise_std=0.0)
    with pytest.raises(ValueError, match="D=12"):
        field.posterior(torch.zeros(10), torch.ones(10, dtype=torch.bool), noise_std=0.1)
