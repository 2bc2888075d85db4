"""APS with a Gaussian-mixture base (manifold_aps.mixture_base): the mixture posterior's exact
density and moments against dense linear algebra, the sampler at the identity flow drawing that
posterior exactly, its density as the inverse of its sampling map, training, saving and errors."""

import numpy as np
import pytest
import torch

import manifold_aps as aps
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, condition_channels, marginal_feature_channels, train_aps
from manifold_aps.aps.forward_kl import log_density
from manifold_aps.checkpoint import load_checkpoint, save_checkpoint
from manifold_aps.data import matern_mixture
from manifold_aps.flows import VertexwiseMonotone, build_flow
from manifold_aps.mixture_base import MixtureRoot, mixture_posterior_root

from test_aps import LAYOUT, MESH, NOISE, task_operator
from test_gaussian_base import measurement_of


@pytest.fixture(scope="module")
def mixture():
    """Two smooth components that differ in level and a rough one: mixed posterior weights."""
    return matern_mixture(MESH, means=(0.4, 0.6, 0.5), length_fractions=(0.5, 0.5, 0.1), stds=(0.15, 0.15, 0.08),
                          num_modes=30, nugget=0.05)


def mixture_model(mixture, marginal=False, blind=False):
    torch.manual_seed(0)
    config = APSConfig.preset("smoke")
    flow = build_flow("realnvp", LAYOUT, condition_channels(LAYOUT, blind, True), MESH.edge_index, **config.flow_shape())
    vertexwise = (VertexwiseMonotone(1, marginal_feature_channels(LAYOUT, blind), components=3) if marginal else None)
    if marginal:
        torch.nn.init.normal_(vertexwise.head.weight, std=0.5)  # a map far from the identity
    return AmortizedPosteriorSampler(flow, mixture.exact_prior(LAYOUT), task_operator(blind), base=mixture,
                                     marginal=vertexwise)


def dense_posterior_log_prob(mixture, y, observed, x):
    """log Σ_k r_k N(x; m_k, C_k) with the components' dense posterior covariances."""
    weights = mixture.posterior(y, observed, NOISE).weights
    terms = []
    for k, component in enumerate(mixture.components):
        exact = component.posterior(y, observed, NOISE, full_covariance=True)
        terms.append(torch.log(weights[k]) + torch.distributions.MultivariateNormal(exact.mean, exact.covariance).log_prob(x))
    return torch.logsumexp(torch.stack(terms), dim=0)


def test_mixture_root_density_and_moments_are_exact(mixture):
    measurement = measurement_of(mixture, count=3)
    V = LAYOUT.num_vertices
    y, observed = measurement.y[:, :V, 0].double(), measurement.observed[:, :V]
    root = mixture_posterior_root(mixture, y, observed, NOISE)
    exact = mixture.posterior(y, observed, NOISE)
    torch.testing.assert_close(root.mean, exact.mean, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(root.marginal_std(), exact.std, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(root.log_weights.exp(), exact.weights, atol=1e-10, rtol=1e-8)
    x = mixture.sample(3, torch.Generator().manual_seed(4))
    ours = root.log_prob(x)
    for i in range(3):
        torch.testing.assert_close(ours[i], dense_posterior_log_prob(mixture, y[i], observed[i], x[i]), atol=1e-8, rtol=1e-10)


def test_mixture_root_draws_follow_the_posterior(mixture):
    measurement = measurement_of(mixture, count=2, seed=1)
    V = LAYOUT.num_vertices
    y, observed = measurement.y[:, :V, 0].double(), measurement.observed[:, :V]
    root = mixture_posterior_root(mixture, y, observed, NOISE)
    generator = torch.Generator().manual_seed(2)
    draws = root.draw(torch.randn(6000, 2, V, generator=generator, dtype=torch.float64), generator)
    assert (draws.mean(0) - root.mean).abs().div(root.scale).max() < 0.1  # s.e. ≈ 0.013 std
    np.testing.assert_allclose((draws.std(0) / root.scale).numpy(), 1.0, atol=0.08)
    fractions = torch.stack([mixture.responsibilities(draws[:, i]).mean(0) for i in range(2)])
    torch.testing.assert_close(fractions, root.log_weights.exp(), atol=0.03, rtol=0)


def test_identity_flow_samples_the_exact_mixture_posterior(mixture):
    model = mixture_model(mixture)
    measurement = measurement_of(mixture, count=2, seed=1)
    V = LAYOUT.num_vertices
    draws = model.sample_measurement(measurement, 4000, torch.Generator().manual_seed(1))
    assert draws.shape == (4000, 2, LAYOUT.padded_vertices, 1) and (draws[:, :, V:] == 0).all()
    exact = mixture.posterior(measurement.y[:, :V, 0], measurement.observed[:, :V], NOISE)
    std = exact.std.float()
    assert (draws[..., :V, 0].mean(0) - exact.mean.float()).abs().div(std).max() < 0.1
    np.testing.assert_allclose((draws[..., :V, 0].std(0) / std).numpy(), 1.0, atol=0.08)


@pytest.mark.parametrize("marginal", [False, True])
def test_log_density_inverts_the_sampling_map(mixture, marginal):
    """``log q(G(z)) = log N(z; 0, I) − (what generate returns)``, and at the identity flow it is
    the exact mixture-posterior density."""
    model = mixture_model(mixture, marginal).eval()
    measurement = measurement_of(mixture, count=3)
    z = torch.randn(3, model.flow.dim, generator=torch.Generator().manual_seed(3))
    standard_normal = -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * torch.log(torch.tensor(2 * torch.pi))
    with torch.no_grad():
        x, log_det = model.generate(measurement, z, generator=torch.Generator().manual_seed(4))
        ours = log_density(model, measurement, x)
    torch.testing.assert_close(ours, standard_normal - log_det, atol=2e-2, rtol=1e-5)
    if not marginal:
        V = LAYOUT.num_vertices
        for i in range(3):
            truth = dense_posterior_log_prob(mixture, measurement.y[i, :V, 0].double(), measurement.observed[i, :V],
                                             x[i, :V, 0].double())
            torch.testing.assert_close(ours[i].double(), truth, atol=5e-2, rtol=1e-4)


def test_training_moves_the_flow_and_the_file_keeps_the_mixture(mixture, tmp_path):
    model = mixture_model(mixture, marginal=True)
    before = {name: value.clone() for name, value in model.flow.state_dict().items()}
    truth = LAYOUT.pad(mixture.sample(16, torch.Generator().manual_seed(0)).float()[..., None])
    measurements = model.operator(truth, torch.Generator().manual_seed(1))
    result = train_aps(model, measurements, APSConfig.preset("smoke", iterations=3, batch_size=4), progress=False)
    assert np.isfinite(result.losses).all()
    assert any(not torch.equal(before[name], value) for name, value in model.flow.state_dict().items())
    path = tmp_path / "mixture_aps.pt"  # the exact mixture prior is not a savable network: the file leaves it out
    save_checkpoint(path, model.state_payload(include_prior=False), kind="aps_model")
    loaded = AmortizedPosteriorSampler.from_payload(load_checkpoint(path, kind="aps_model"), prior=model.prior)
    assert loaded.mixture_base and loaded.base.num_components == 3
    torch.testing.assert_close(loaded.base.weights, mixture.weights)
    measurement = measurement_of(mixture, count=2, seed=5)
    torch.testing.assert_close(model.sample_measurement(measurement, 4, torch.Generator().manual_seed(0)),
                               loaded.sample_measurement(measurement, 4, torch.Generator().manual_seed(0)))


def test_forward_kl_trains_with_a_mixture_base(mixture):
    model = mixture_model(mixture, marginal=True)
    truth = LAYOUT.pad(mixture.sample(16, torch.Generator().manual_seed(0)).float()[..., None])
    measurements = model.operator(truth, torch.Generator().manual_seed(1))
    config = APSConfig.preset("smoke", iterations=2, batch_size=4, forward_kl_weight=0.5)
    draws = LAYOUT.pad(mixture.sample(8, torch.Generator().manual_seed(2)).float()[..., None])
    assert np.isfinite(train_aps(model, measurements, config, progress=False, prior_draws=draws).losses).all()


def test_fit_with_base_components_fits_a_mixture_of_ppca():
    mixture = matern_mixture(MESH, means=(0.3, 0.7), length_fractions=(0.5, 0.2), stds=(0.1, 0.1), num_modes=20)
    signals = mixture.sample(60, torch.Generator().manual_seed(0)).float().numpy()
    model = aps.fit(MESH, signals, mask_rate=0.6, noise_std=NOISE, scale="smoke", progress=False, base_rank=8,
                    base_components=2, iterations=2)
    assert model.mixture_base and model.base.num_components == 2 and model.base.components[0].rank in (4, 8)
    mean, std = model.posterior(np.where(np.arange(MESH.num_vertices) % 3 == 0, signals[0], np.nan), n=8)
    assert np.isfinite(mean).all() and (std > 0).all()
    with pytest.raises(ValueError, match="base_components"):
        aps.fit(MESH, signals, scale="smoke", progress=False, base_components=2, gaussian_base=False)
    with pytest.raises(ValueError, match="base_components"):
        aps.fit(MESH, signals, scale="smoke", progress=False, base_components=0)


def test_mixture_base_errors_name_the_problem(mixture):
    model = mixture_model(mixture)
    measurement = measurement_of(mixture, count=1)
    with pytest.raises(ValueError, match="Gaussian base"):
        model.estimate_model_error(measurement)
    with pytest.raises(ValueError, match="Gaussian base"):
        AmortizedPosteriorSampler(model.flow, model.prior, model.operator, base=mixture, model_error=True)
    with pytest.raises(ValueError, match="every posterior direction"):
        AmortizedPosteriorSampler(model.flow, model.prior, model.operator, base=mixture, base_rank=4)
    with pytest.raises(TypeError, match="GaussianMixtureField"):
        AmortizedPosteriorSampler(model.flow, model.prior, model.operator, base="ppca")
    assert isinstance(model.base_root(measurement), MixtureRoot)


def test_benchmark_scores_a_mixture_base_sampler_against_its_own_start(mixture):
    """``standard_methods``' ``aps_base`` row of a mixture-base sampler is its mixture posterior,
    which an identity flow reproduces: the same mean up to Monte-Carlo error."""
    from manifold_aps.benchmark import standard_methods

    model = mixture_model(mixture)
    methods = standard_methods(("aps",), LAYOUT, aps_model=model)
    measurement = measurement_of(mixture, count=2, seed=3)
    operator = model.operator
    base = methods["aps_base"](measurement, operator, torch.Generator().manual_seed(0))
    exact = mixture.posterior(*measurement.real_entries(LAYOUT.num_vertices), NOISE)
    torch.testing.assert_close(base.mean[..., 0], exact.mean.float())
    assert base.info == dict(components=3, rank=mixture.components[0].rank)
    ours = methods["aps_n128"](measurement, operator, torch.Generator().manual_seed(0))
    assert ((ours.mean[..., 0] - exact.mean.float()).abs() / exact.std.float()).max() < 0.5  # 128 draws: s.e. 0.09 std


def test_training_without_the_kept_roots_matches_training_with_them(mixture, monkeypatch):
    """Above ``MIXTURE_ROOTS_BYTES`` each batch's roots are solved at each step: the same training."""
    from manifold_aps.aps import training

    truth = LAYOUT.pad(mixture.sample(16, torch.Generator().manual_seed(0)).float()[..., None])
    config = APSConfig.preset("smoke", iterations=2, batch_size=4)
    states = []
    for budget in (training.MIXTURE_ROOTS_BYTES, 0):
        monkeypatch.setattr(training, "MIXTURE_ROOTS_BYTES", budget)
        model = mixture_model(mixture, marginal=True)
        train_aps(model, model.operator(truth, torch.Generator().manual_seed(1)), config, progress=False)
        states.append(model.flow.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, atol=1e-5, rtol=1e-4)


def test_a_known_mask_sampler_as_blind_reads_the_mask_off_y_and_draws_the_same(mixture, tmp_path):
    model = mixture_model(mixture, marginal=True)
    blind = model.as_blind((0.3, 0.6))
    assert blind.blind and not model.blind and blind.flow is model.flow and blind.base is model.base
    assert blind.operator.hidden_range == (0.3, 0.6) and blind.report["as_blind_of"] == model.operator.to_config()
    measurement = measurement_of(mixture, count=3, seed=5)  # hidden entries 0, visible ones noisy
    torch.testing.assert_close(blind.sample_measurement(measurement, 4, torch.Generator().manual_seed(0)),
                               model.sample_measurement(measurement, 4, torch.Generator().manual_seed(0)))
    # it reads y alone: a wrong mask handed in with y changes nothing
    wrong = aps.Measurement(measurement.y, torch.ones_like(measurement.observed))
    torch.testing.assert_close(blind.sample_measurement(wrong, 4, torch.Generator().manual_seed(0)),
                               model.sample_measurement(measurement, 4, torch.Generator().manual_seed(0)))
    path = tmp_path / "blind.pt"
    save_checkpoint(path, blind.state_payload(include_prior=False), kind="aps_model")
    loaded = AmortizedPosteriorSampler.from_payload(load_checkpoint(path, kind="aps_model"), prior=model.prior)
    assert loaded.blind and loaded.mask_from_y and loaded.report["as_blind_of"] == model.operator.to_config()
    with pytest.raises(ValueError, match="blind already"):
        blind.as_blind()
