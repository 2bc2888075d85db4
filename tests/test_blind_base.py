"""The blind sampler reads the observed mask off ``y`` (hidden entries are exactly 0, visible ones
carry noise): its Gaussian base is the exact known-mask posterior and its flow reads the mask; blind
files written before keep their stored layout (base = the fitted prior, condition ``y`` alone).
The sampler's fast per-measurement base solve equals ``LowRankGaussian.posterior_root``."""

import pytest
import torch

import manifold_aps as aps
from manifold_aps import pretrained
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, condition_channels
from manifold_aps.aps.sampler import observed_from_y
from manifold_aps.gaussian_posterior import posterior_root_every_direction
from manifold_aps.checkpoint import load_checkpoint
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.flows import build_flow

from test_aps import LAYOUT, MESH, NOISE, exact_prior, task_operator

V = LAYOUT.num_vertices


@pytest.fixture(scope="module")
def field():
    return GaussianRandomField(MESH, length_scale=1.0, num_modes=40, nugget=0.1, mean=0.5, variance=0.02)


def identity_model(field, operator, mask_from_y=True, flow=None):
    """A sampler whose flow is fresh (the identity) around ``field`` as base and exact prior."""
    torch.manual_seed(0)
    if flow is None:
        channels = condition_channels(LAYOUT, operator.blind, True, mask_from_y)
        flow = build_flow("realnvp", LAYOUT, channels, **APSConfig.preset("smoke").flow_shape())
    return AmortizedPosteriorSampler(flow, exact_prior(field), operator, base=field, mask_from_y=mask_from_y)


def blind_measurement(field, count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    truth = LAYOUT.pad(field.sample(count, generator).float()[..., None])
    return task_operator(blind=True)(truth, generator)


def covariance(root, row: int) -> torch.Tensor:
    """``L Lᵀ`` of the base's square root ``L = diag(scale) (I + E Eᵀ)`` for one measurement."""
    E = root.directions[row].double()
    L = root.scale[row, :, None].double() * (torch.eye(E.shape[0], dtype=torch.float64) + E @ E.T)
    return L @ L.T


def test_observed_from_y_recovers_the_operators_mask():
    layout = aps.VertexLayout(MESH.num_vertices, 3)
    operator = aps.BlindVertexMask(layout.num_vertices, layout.padded_vertices, (0.3, 0.6), noise_std=0.01)
    generator = torch.Generator().manual_seed(0)
    truth = layout.pad(torch.rand(64, layout.num_vertices, 3, generator=generator))
    measurement = operator(truth, generator)
    assert measurement.observed.sum(1).unique().numel() > 5  # the hidden fraction varies
    assert torch.equal(observed_from_y(measurement.y, layout.num_vertices), measurement.observed)


def test_blind_base_is_the_known_mask_posterior(field):
    measurement = blind_measurement(field)
    root = identity_model(field, task_operator(blind=True)).base_root(measurement)
    y, observed = measurement.real_entries(V)
    for row in range(len(measurement)):
        exact = field.posterior(y[row], observed[row], NOISE, full_covariance=True)
        torch.testing.assert_close(root.mean[row].double(), exact.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(covariance(root, row), exact.covariance, atol=1e-6, rtol=1e-4)


def test_blind_sampler_at_identity_draws_what_the_known_mask_sampler_draws(field):
    blind = identity_model(field, task_operator(blind=True))
    known = identity_model(field, aps.RandomVertexMask(V, LAYOUT.padded_vertices, 0.6, NOISE), flow=blind.flow)
    measurement = blind_measurement(field)
    hidden_elsewhere = aps.operators.Measurement(measurement.y, measurement.observed.roll(1, dims=1))
    # the blind sampler ignores the measurement's mask: a wrong one changes nothing
    torch.testing.assert_close(blind.condition(hidden_elsewhere, blind.base_root(hidden_elsewhere)),
                               known.condition(measurement, known.base_root(measurement)), atol=0, rtol=0)
    draws = blind.sample_measurement(hidden_elsewhere, 16, torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws, known.sample_measurement(measurement, 16, torch.Generator().manual_seed(1)),
                               atol=0, rtol=0)


def test_blind_sampler_without_mask_from_y_keeps_the_prior_base_and_y_alone(field):
    model = identity_model(field, task_operator(blind=True), mask_from_y=False)
    measurement = blind_measurement(field)
    root = model.base_root(measurement)
    torch.testing.assert_close(root.mean[0], field.mean.float())
    torch.testing.assert_close(covariance(root, 0), field.covariance(), atol=1e-5, rtol=1e-4)
    assert model.condition(measurement, root).shape == (3, V, 3)  # y, base mean, base scale


def test_flag_is_saved_and_files_without_it_load_as_before(field, tmp_path):
    model = identity_model(field, task_operator(blind=True))
    model.save(tmp_path / "blind.pt")
    loaded = AmortizedPosteriorSampler.load(tmp_path / "blind.pt")
    assert loaded.mask_from_y
    measurement = blind_measurement(field)
    torch.testing.assert_close(loaded.sample_measurement(measurement, 3, torch.Generator().manual_seed(2)),
                               model.sample_measurement(measurement, 3, torch.Generator().manual_seed(2)))
    payload = load_checkpoint(tmp_path / "blind.pt", kind="aps_model")
    payload.pop("mask_from_y")
    assert not AmortizedPosteriorSampler.from_payload(payload).mask_from_y


def test_shipped_blind_model_reads_the_mask_off_y():
    model = pretrained.load_sampler("era5_proxy", blind=True)
    known = pretrained.load_sampler("era5_proxy")
    assert model.blind and model.mask_from_y
    layout = model.layout
    truth = layout.pad(torch.full((2, layout.num_vertices, 1), 0.5))
    operator = aps.BlindVertexMask(layout.num_vertices, layout.padded_vertices, (0.3, 0.6), model.noise_std)
    measurement = operator(truth, torch.Generator().manual_seed(0))
    told = aps.Measurement(measurement.y, torch.ones_like(measurement.observed))  # a wrong mask, which it ignores
    torch.testing.assert_close(model.base_root(told).mean, known.base_root(measurement).mean)


def test_fit_blind_trains_with_the_mask_read_off_y(field):
    signals = field.sample(16, torch.Generator().manual_seed(4)).float().numpy()
    model = aps.fit(MESH, signals, noise_std=NOISE, prior=exact_prior(field), scale="smoke", progress=False,
                    iterations=2, blind=True)
    assert model.mask_from_y and model.flow.cond_dim == V * condition_channels(LAYOUT, False, True)


def test_fast_base_solve_is_the_exact_posterior(field):
    measurement = blind_measurement(field, count=5)
    y, observed = measurement.real_entries(V)
    expected = field.posterior(y, observed, NOISE, full_covariance=True)
    fast = posterior_root_every_direction(field, y, observed, NOISE)
    torch.testing.assert_close(fast.mean, expected.mean, atol=1e-12, rtol=0)
    for row in range(5):
        torch.testing.assert_close(covariance(fast, row), expected.covariance[row], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("base_rank", [40, 12])
def test_sampler_base_root_is_the_posterior_root(field, base_rank):
    """Every direction kept (40 = the field's rank): the fast solve; fewer: the library's."""
    model = identity_model(field, task_operator())
    model.base_rank = base_rank
    measurement = blind_measurement(field, count=40)  # more than one block of 32
    root = model.base_root(measurement)
    expected = field.posterior_root(*measurement.real_entries(V), NOISE, base_rank)
    torch.testing.assert_close(root.mean, expected.mean.float())
    torch.testing.assert_close(root.scale, expected.scale.float())
    torch.testing.assert_close(root.directions @ root.directions.transpose(1, 2),
                               (expected.directions @ expected.directions.transpose(1, 2)).float())
