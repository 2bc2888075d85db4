"""The forward-KL term of APS: prior draws, and the sampler's exact density log q(x | y) — the inverse
of its sampling map, checked against the map itself, the exact Gaussian posterior, and finite
differences of the bisection inverse."""

import pytest
import torch

import manifold_aps as aps
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, condition_channels, train_aps
from manifold_aps.aps.forward_kl import dequantise, draw_prior_signals, log_density, marginal_inverse
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.flows import build_flow

from test_aps import LAYOUT, MESH, NOISE, exact_prior, task_operator
from test_gaussian_base import identity_model, marginal_model, measurement_of


@pytest.fixture(scope="module")
def field():
    return GaussianRandomField(MESH, length_scale=1.0, num_modes=40, nugget=0.1, mean=0.5, variance=0.02)


def assert_log_density_inverts_generate(model, measurement, atol):
    """``log q(G(z)) = log N(z; 0, I) − log|det ∂G/∂z|`` for a few ``z``."""
    z = torch.randn(len(measurement), model.flow.dim, generator=torch.Generator().manual_seed(3))
    standard_normal = -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * torch.log(torch.tensor(2 * torch.pi))
    with torch.no_grad():
        x, log_det = model.generate(measurement, z)
        torch.testing.assert_close(log_density(model, measurement, x), standard_normal - log_det, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("make", [marginal_model, identity_model])
def test_log_density_inverts_the_sampling_map(field, make):
    model = make(field).eval()  # in training mode a first inverse pass would initialise ActNorm
    assert_log_density_inverts_generate(model, measurement_of(field), atol=2e-2)


def test_log_density_without_a_base_is_the_flows():
    field = GaussianRandomField(MESH, length_scale=1.0, num_modes=40)
    model = AmortizedPosteriorSampler(
        build_flow("realnvp", LAYOUT, condition_channels(LAYOUT, False, False), MESH.edge_index,
                   **APSConfig.preset("smoke").flow_shape()), exact_prior(field), task_operator()).eval()
    assert_log_density_inverts_generate(model, measurement_of(field), atol=1e-3)


def test_at_the_identity_flow_it_is_the_exact_gaussian_posterior_density(field):
    model = identity_model(field).eval()
    measurement = measurement_of(field, count=2)
    V = LAYOUT.num_vertices
    x = LAYOUT.pad(field.sample(2, torch.Generator().manual_seed(5)).float()[..., None])
    with torch.no_grad():
        ours = log_density(model, measurement, x)
    for i in range(2):
        exact = field.posterior(measurement.y[i, :V, 0], measurement.observed[i, :V], NOISE, full_covariance=True)
        truth = torch.distributions.MultivariateNormal(exact.mean, exact.covariance).log_prob(x[i, :V, 0].double())
        torch.testing.assert_close(ours[i].double(), truth, atol=5e-2, rtol=1e-4)


def test_the_map_inverse_carries_the_implicit_gradient(field):
    model = marginal_model(field).double().eval()
    measurement = measurement_of(field)
    root = model.base_root(measurement)
    features, mean, std = (value.double() for value in model.marginal_inputs(model.condition(measurement, root), root))
    x = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    bias = model.marginal.head.bias

    def inverse_sum():
        value, log_det = marginal_inverse(model.marginal, x, features, mean, std)
        return value.sum() + log_det.sum()

    torch.testing.assert_close(model.marginal(marginal_inverse(model.marginal, x, features, mean, std)[0].detach(),
                                              features, mean, std)[0], x, atol=1e-9, rtol=0)
    gradient = torch.autograd.grad(inverse_sum(), bias)[0]
    step = 1e-6
    for index in (0, 1, 3, 6, 9):
        with torch.no_grad():
            bias[index] += step
            up = inverse_sum()
            bias[index] -= 2 * step
            down = inverse_sum()
            bias[index] += step
        torch.testing.assert_close(gradient[index], (up - down) / (2 * step), atol=1e-4, rtol=1e-4)


def test_prior_draws_follow_the_prior():
    field = GaussianRandomField(MESH, length_scale=1.0, num_modes=40)
    draws = draw_prior_signals(exact_prior(field), 2000, diffusion_steps=100, seed=0, batch_size=1000)
    assert draws.shape == (2000, LAYOUT.padded_vertices, 1) and (draws[:, LAYOUT.num_vertices:] == 0).all()
    real = draws[:, : LAYOUT.num_vertices, 0].double()
    std = field.covariance().diagonal().sqrt()
    assert (real.mean(0) / std).abs().max() < 0.12  # 2000 draws: s.e. 0.022 std
    assert ((real.std(0) / std) - 1).abs().mean() < 0.05


def test_fit_with_the_forward_term_keeps_its_draws_and_needs_them(field, tmp_path):
    signals = field.sample(64, torch.Generator().manual_seed(0)).numpy()
    prior = exact_prior(field)
    options = dict(prior=prior, scale="smoke", iterations=6, forward_kl_weight=1.0, forward_kl_draws=16,
                   forward_kl_steps=4, progress=False, checkpoint_dir=tmp_path)
    model = aps.fit(MESH, signals, **options)
    stored = torch.load(tmp_path / "prior_draws.pt", weights_only=True)
    assert stored["draws"].shape == (16, LAYOUT.padded_vertices, 1)
    assert torch.isfinite(model.sample_measurement(measurement_of(field), 2)).all()
    modified = (tmp_path / "prior_draws.pt").stat().st_mtime_ns
    aps.fit(MESH, signals, **options)  # resumes: same draws, not drawn again
    assert (tmp_path / "prior_draws.pt").stat().st_mtime_ns == modified
    with pytest.raises(ValueError, match="give forward_kl_weight"):
        aps.fit(MESH, signals, prior=prior, scale="smoke", iterations=2, prior_draws=signals, progress=False)
    with pytest.raises(ValueError, match="needs prior_draws"):
        train_aps(model, measurement_of(field), APSConfig.preset("smoke", iterations=1, forward_kl_weight=1.0),
                  progress=False)
    with pytest.raises(ValueError, match="forward_kl_weight"):
        APSConfig.preset("smoke", forward_kl_weight=-1.0)


def test_posterior_density_benchmark_scores_a_gaussian_root_exactly(field):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "posterior_density.py"
    spec = importlib.util.spec_from_file_location("posterior_density_benchmark", script)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    measurement = measurement_of(field, count=2)
    V = LAYOUT.num_vertices
    y, observed = measurement.real_entries(V)
    root = field.posterior_root(y.double(), observed, NOISE, field.rank)
    x = field.sample(2, torch.Generator().manual_seed(7)).double()
    ours = benchmark.base_log_density(root, x)
    for i in range(2):
        exact = field.posterior(y[i], observed[i], NOISE, full_covariance=True)
        truth = torch.distributions.MultivariateNormal(exact.mean, exact.covariance).log_prob(x[i])
        torch.testing.assert_close(ours[i], truth, atol=1e-6, rtol=1e-8)
    # a mixture base's row uses the mixture's density: two copies of the field are the field
    from manifold_aps.data import GaussianMixtureField
    from manifold_aps.mixture_base import mixture_posterior_root

    twice = mixture_posterior_root(GaussianMixtureField([field, field], [0.5, 0.5]), y.double(), observed, NOISE)
    torch.testing.assert_close(benchmark.base_log_density(twice, x), ours, atol=1e-6, rtol=1e-8)

    # the posterior-mean scores: the four regions partition the squared error, PSNR per signal
    truth = torch.rand(3, V, 1) * (torch.rand(3, V, 1) > 0.5)
    mean = truth + 0.1 * torch.randn(3, V, 1, generator=torch.Generator().manual_seed(8))
    observed = torch.rand(3, V, generator=torch.Generator().manual_seed(9)) > 0.3
    scores = benchmark.mean_scores(mean, truth, observed, V)
    squared = ((mean - truth) ** 2).double()
    regions = sum(value for key, value in scores.items() if key.startswith("squared_error_"))
    torch.testing.assert_close(torch.tensor(regions, dtype=torch.float64), squared.mean())
    torch.testing.assert_close(torch.tensor(scores["psnr"], dtype=torch.float64),
                               (10 * torch.log10(1 / squared.mean((1, 2)))).mean())
    hidden_mse = (squared[..., 0] * ~observed).sum(1) / (~observed).sum(1)
    torch.testing.assert_close(torch.tensor(scores["psnr_hidden"], dtype=torch.float64),
                               (10 * torch.log10(1 / hidden_mse)).mean())


def test_a_run_with_other_prior_draws_does_not_resume(field, tmp_path):
    from manifold_aps.checkpoint import CheckpointError

    signals = field.sample(64, torch.Generator().manual_seed(0)).numpy()
    options = dict(prior=exact_prior(field), scale="smoke", iterations=4, forward_kl_weight=1.0, progress=False,
                   checkpoint_dir=tmp_path)
    aps.fit(MESH, signals, prior_draws=signals[:16], **options)
    with pytest.raises(CheckpointError, match="metadata"):
        aps.fit(MESH, signals, prior_draws=signals[16:32], **options)


def test_dequantise_adds_noise_of_its_std_to_real_entries_only():
    x = torch.zeros(4000, LAYOUT.padded_vertices, 1)
    x[:, : LAYOUT.num_vertices] = 0.5
    assert dequantise(x, 0.0, LAYOUT) is x
    noisy = dequantise(x, 0.1, LAYOUT, torch.Generator().manual_seed(0))
    assert (noisy[:, LAYOUT.num_vertices:] == 0).all()
    real = noisy[:, : LAYOUT.num_vertices, 0] - 0.5
    assert real.mean().abs() < 2e-3 and (real.std() - 0.1).abs() < 2e-3


def test_a_dequantised_run_is_its_own_run(field, tmp_path):
    from manifold_aps.checkpoint import CheckpointError

    signals = field.sample(64, torch.Generator().manual_seed(0)).numpy()
    options = dict(prior=exact_prior(field), scale="smoke", iterations=4, forward_kl_weight=1.0, progress=False,
                   prior_draws=signals[:16])
    plain = aps.fit(MESH, signals, checkpoint_dir=tmp_path, **options)
    dequantised = aps.fit(MESH, signals, forward_kl_noise=0.05, **options)
    assert any(not torch.equal(a, b) for a, b in zip(plain.flow.state_dict().values(),
                                                     dequantised.flow.state_dict().values()))
    with pytest.raises(CheckpointError, match="metadata"):
        aps.fit(MESH, signals, checkpoint_dir=tmp_path, forward_kl_noise=0.05, **options)
    with pytest.raises(ValueError, match="forward_kl_noise"):
        APSConfig.preset("smoke", forward_kl_noise=-0.1)


def test_a_blind_sampler_trains_with_the_term_and_its_density_inverts_its_map(field):
    signals = field.sample(64, torch.Generator().manual_seed(0)).numpy()
    model = aps.fit(MESH, signals, prior=exact_prior(field), scale="smoke", iterations=4, blind=True,
                    marginal_components=2, forward_kl_weight=0.1, prior_draws=signals[:16], progress=False)
    generator = torch.Generator().manual_seed(1)
    measurement = model.operator(LAYOUT.pad(field.sample(3, generator).float()[..., None]), generator)
    assert_log_density_inverts_generate(model.eval(), measurement, atol=1e-3)
