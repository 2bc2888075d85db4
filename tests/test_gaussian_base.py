"""The Gaussian posterior base of APS: at the flow's identity the sampler draws exactly from the
optimal-interpolation posterior of the fitted Gaussian; its log-det adds Σ log s; it is saved."""

import numpy as np
import pytest
import torch

import manifold_aps as aps
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, condition_channels
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.flows import build_flow
from manifold_aps.gaussian_posterior import fit_gaussian_base
from manifold_aps.operators import RandomVertexMask

from test_aps import LAYOUT, MESH, NOISE, exact_prior, task_operator


@pytest.fixture(scope="module")
def field():
    return GaussianRandomField(MESH, length_scale=1.0, num_modes=40, nugget=0.1, mean=0.5, variance=0.02)


def identity_model(field, kind="mesh", blind=False, base_rank=64):
    torch.manual_seed(0)
    config = APSConfig.preset("smoke")
    flow = build_flow(kind, LAYOUT, condition_channels(LAYOUT, blind, True), MESH.edge_index, **config.flow_shape())
    return AmortizedPosteriorSampler(flow, exact_prior(field), task_operator(blind), base=field, base_rank=base_rank)


def measurement_of(field, count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    truth = field.sample(count, generator).float()[..., None]
    operator = RandomVertexMask(LAYOUT.num_vertices, LAYOUT.padded_vertices, 0.6, NOISE)
    return operator(LAYOUT.pad(truth), generator)


@pytest.mark.parametrize("kind", ["realnvp", "mesh"])
def test_identity_flow_samples_the_exact_gaussian_posterior(field, kind):
    model = identity_model(field, kind)
    measurement = measurement_of(field)
    draws = model.sample_measurement(measurement, 4000, torch.Generator().manual_seed(1))[..., : LAYOUT.num_vertices, 0]
    exact = field.posterior(measurement.y[:, : LAYOUT.num_vertices, 0], measurement.observed[:, : LAYOUT.num_vertices],
                            NOISE)
    std = exact.std.float()
    assert (draws.mean(0) - exact.mean.float()).abs().div(std).max() < 0.1  # 4000 draws: s.e. ≈ 0.016 std
    np.testing.assert_allclose(draws.std(0) / std, 1.0, atol=0.08)
    full = field.posterior(measurement.y[0, : LAYOUT.num_vertices, 0], measurement.observed[0, : LAYOUT.num_vertices],
                           NOISE, full_covariance=True).covariance.float()
    centred = draws[:, 0] - draws[:, 0].mean(0)
    empirical = centred.T @ centred / (len(draws) - 1)
    correlation = torch.outer(full.diagonal().rsqrt(), full.diagonal().rsqrt())
    assert ((empirical - full) * correlation).abs().max() < 0.12  # correlations kept, not only marginals


def test_log_det_adds_the_base_log_det(field):
    model = identity_model(field)
    measurement = measurement_of(field)
    root = model.base_root(measurement)
    z = torch.randn(len(measurement), model.flow.dim)
    x, log_det = model.generate(measurement, z)
    _, flow_log_det = model.flow(z, model.condition(measurement, root))
    torch.testing.assert_close(log_det, flow_log_det + root.log_det())
    torch.testing.assert_close(x[:, : LAYOUT.num_vertices, 0], root.transform(z), atol=1e-5, rtol=1e-5)
    assert (x[:, LAYOUT.num_vertices:] == 0).all()


def test_base_is_saved_and_loaded(field, tmp_path):
    model = identity_model(field)
    model.save(tmp_path / "m.pt")
    loaded = AmortizedPosteriorSampler.load(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.base.modes, field.modes)
    measurement = measurement_of(field)
    torch.testing.assert_close(loaded.sample_measurement(measurement, 3, torch.Generator().manual_seed(2)),
                               model.sample_measurement(measurement, 3, torch.Generator().manual_seed(2)))


def test_fit_gaussian_base_chooses_a_rank_on_held_out_signals(field):
    signals = field.sample(200, torch.Generator().manual_seed(3)).float()[..., None]
    operator = RandomVertexMask(LAYOUT.num_vertices, LAYOUT.padded_vertices, 0.6, NOISE)
    base = fit_gaussian_base(signals, operator)
    assert 4 <= base.rank <= 128 and base.dim == LAYOUT.num_vertices
    torch.testing.assert_close(base.mean, signals[..., 0].double().mean(0))
    with pytest.warns(UserWarning, match="no Gaussian base"):
        assert fit_gaussian_base(signals[:5], operator) is None


def test_fit_without_base_trains_a_plain_flow(field):
    signals = field.sample(16, torch.Generator().manual_seed(4)).float().numpy()
    model = aps.fit(MESH, signals, noise_std=NOISE, prior=exact_prior(field), scale="smoke", progress=False,
                    iterations=2, gaussian_base=False)
    assert model.base is None


def test_fit_base_signals_fit_the_base_while_the_flow_trains_on_fewer(field):
    signals = field.sample(16, torch.Generator().manual_seed(4)).float().numpy()
    many = field.sample(120, torch.Generator().manual_seed(5)).float().numpy()
    model = aps.fit(MESH, signals, noise_std=NOISE, prior=exact_prior(field), scale="smoke", progress=False,
                    iterations=2, base_signals=many)
    torch.testing.assert_close(model.base.mean, torch.as_tensor(many).double().mean(0))
    default = aps.fit(MESH, signals, noise_std=NOISE, prior=exact_prior(field), scale="smoke", progress=False,
                      iterations=2)
    torch.testing.assert_close(default.base.mean, torch.as_tensor(signals).double().mean(0))
    with pytest.raises(ValueError, match="base_signals: signals of shape"):
        aps.fit(MESH, signals, noise_std=NOISE, prior=exact_prior(field), scale="smoke", progress=False,
                iterations=2, base_signals=many[:, :-1])
    with pytest.raises(ValueError, match="base_signals contain ±inf"):
        aps.fit(MESH, signals, noise_std=NOISE, prior=exact_prior(field), scale="smoke", progress=False,
                iterations=2, base_signals=np.where(many > 0.5, np.inf, many))


def test_root_marginal_std_is_the_exact_posterior_std(field):
    measurement = measurement_of(field)
    root = identity_model(field).base_root(measurement)
    exact = field.posterior(measurement.y[:, : LAYOUT.num_vertices, 0], measurement.observed[:, : LAYOUT.num_vertices],
                            NOISE)
    torch.testing.assert_close(root.marginal_std(), exact.std.float(), rtol=1e-4, atol=1e-6)
    # the general square root, keeping fewer directions than the factor has: diag of S (I + E Eᵀ)² S
    from manifold_aps.gaussian_posterior import square_root

    generator = torch.Generator().manual_seed(4)
    factor = torch.randn(2, 9, 5, generator=generator, dtype=torch.float64)
    general = square_root(torch.zeros(2, 9, dtype=torch.float64), factor,
                          torch.rand(2, 9, generator=generator, dtype=torch.float64) + 0.1, rank=3)
    half = torch.eye(9, dtype=torch.float64) + general.directions @ general.directions.transpose(1, 2)
    variance = general.scale**2 * torch.diagonal(half @ half, dim1=1, dim2=2)
    torch.testing.assert_close(general.marginal_std(), variance.sqrt())


def marginal_model(field):
    from manifold_aps.aps import marginal_feature_channels
    from manifold_aps.flows import VertexwiseMonotone

    model = identity_model(field)
    torch.manual_seed(1)
    marginal = VertexwiseMonotone(1, marginal_feature_channels(LAYOUT, blind=False), components=3)
    torch.nn.init.normal_(marginal.head.weight, std=0.5)  # a map far from the identity
    return AmortizedPosteriorSampler(model.flow, model.prior, model.operator, base=field, base_rank=64, marginal=marginal)


def test_marginal_map_adds_its_log_det_and_is_saved(field, tmp_path):
    model = marginal_model(field)
    measurement = measurement_of(field)
    root = model.base_root(measurement)
    z = torch.randn(len(measurement), model.flow.dim)
    x, log_det = model.generate(measurement, z)
    flow_values, flow_log_det = model.flow(z, model.condition(measurement, root))
    before = root.transform(flow_values).requires_grad_(True)
    after, _ = model._apply_marginal(before, model.condition(measurement, root), root)
    slope = torch.autograd.grad(after.sum(), before)[0]  # the map is entrywise: its Jacobian is diagonal
    assert (slope > 0).all()
    torch.testing.assert_close(log_det, flow_log_det + root.log_det() + slope.log().sum(1), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(x[:, : LAYOUT.num_vertices, 0], after.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)
    model.save(tmp_path / "m.pt")
    loaded = AmortizedPosteriorSampler.load(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.sample_measurement(measurement, 3, torch.Generator().manual_seed(2)),
                               model.sample_measurement(measurement, 3, torch.Generator().manual_seed(2)))


def test_marginal_map_needs_a_base_and_matching_features(field):
    from manifold_aps.flows import VertexwiseMonotone

    model = identity_model(field)
    with pytest.raises(ValueError, match="needs a base"):
        AmortizedPosteriorSampler(model.flow, model.prior, model.operator, marginal=VertexwiseMonotone(1, 8))
    with pytest.raises(ValueError, match="features"):
        AmortizedPosteriorSampler(model.flow, model.prior, model.operator, base=field, marginal=VertexwiseMonotone(1, 5))
    with pytest.raises(ValueError, match="gaussian_base=True"):
        aps.fit(MESH, field.sample(8, torch.Generator().manual_seed(0)).numpy(), prior=exact_prior(field),
                scale="smoke", gaussian_base=False, marginal_components=2, progress=False)
