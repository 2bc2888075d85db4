"""APS: the objective, training on measurements only, sampling API, fit(), and correctness against
the exact posterior of a Gaussian random field with an exact-score prior."""

import math

import numpy as np
import pytest
import torch

import manifold_aps as aps
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, condition_channels, fit, train_aps
from manifold_aps.flows import build_flow
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.diffusion import DiffusionPrior, GaussianNoisePredictor
from manifold_aps.metrics import psnr

FLOWS = ["realnvp", "mesh"]


MESH = aps.latlon_sphere(30.0)  # 84 vertices, padded to 96
LAYOUT = aps.VertexLayout(MESH.num_vertices)
NOISE = 0.05


def gaussian_field(nugget=0.1):
    return GaussianRandomField(MESH, length_scale=1.0, num_modes=40, nugget=nugget)


def exact_prior(field) -> DiffusionPrior:
    """The GRF's exact noise predictor on the padded layout (zero variance on padding)."""
    V, padded = LAYOUT.num_vertices, LAYOUT.padded_vertices
    covariance = torch.zeros(padded, padded, dtype=torch.float64)
    covariance[:V, :V] = field.covariance()
    return DiffusionPrior(GaussianNoisePredictor(torch.zeros(padded, dtype=torch.float64), covariance), LAYOUT)


def task_operator(blind=False):
    if blind:
        return aps.BlindVertexMask(LAYOUT.num_vertices, LAYOUT.padded_vertices, (0.3, 0.6), NOISE)
    return aps.RandomVertexMask(LAYOUT.num_vertices, LAYOUT.padded_vertices, 0.6, NOISE)


def make_model(kind, field, blind=False, **overrides):
    torch.manual_seed(0)  # same network initialisation for every model built here
    config = APSConfig.preset("smoke", **overrides)
    flow = build_flow(kind, LAYOUT, condition_channels(LAYOUT, blind, False), MESH.edge_index, **config.flow_shape())
    model = AmortizedPosteriorSampler(flow, exact_prior(field), task_operator(blind), num_times=config.num_times)
    return model, config


def measurements(field, count, seed=0, fixed_mask=False):
    generator = torch.Generator().manual_seed(seed)
    signals = LAYOUT.pad(field.sample(count, generator=generator).float()[..., None])
    operator = task_operator()
    observed = operator.sample_observed(1 if fixed_mask else count, generator).expand(count, -1)
    return signals, operator.measure(signals, observed, generator)


@pytest.mark.parametrize("kind", FLOWS)
def test_loss_terms_follow_the_objective(kind):
    model, _ = make_model(kind, gaussian_field())
    _, measurement = measurements(gaussian_field(), 5)
    z = torch.randn(5, model.flow.dim)
    x, log_det = model.generate(measurement, z)
    assert x.shape == (5, LAYOUT.padded_vertices, 1)
    assert torch.equal(x[:, LAYOUT.num_vertices:], torch.zeros_like(x[:, LAYOUT.num_vertices:]))  # padding is 0
    terms = model(measurement, torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms["loss"], terms["fidelity"] - terms["prior"] - terms["logdet"])
    # a fresh, uninitialised flow is the identity, so the draw is x = z with the same generator
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(5, model.flow.dim, generator=generator)
    x = LAYOUT.pad(z.reshape(5, -1, 1))
    expected = ((measurement.y - x) ** 2 * measurement.observed[..., None]).flatten(1).sum(1) / (2 * NOISE**2)
    torch.testing.assert_close(terms["fidelity"], expected)
    weighted = AmortizedPosteriorSampler(model.flow, model.prior, task_operator(), prior_weight=0.0, logdet_weight=2.0)
    torch.testing.assert_close(weighted(measurement, torch.Generator().manual_seed(0))["loss"], expected)


def test_training_uses_measurements_only():
    """Clean signals are poisoned with NaN after measuring: training must not notice."""
    field = gaussian_field()
    signals, measurement = measurements(field, 64)
    signals.fill_(float("nan"))
    model, config = make_model("realnvp", field, iterations=30)
    result = train_aps(model, measurement, config, progress=False)
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.losses[-1] < result.losses[0]
    assert all(torch.isfinite(p).all() for p in model.flow.parameters())


def test_gaussian_posterior_matches_exact():
    """Exact-score GRF prior, fixed mask: APS must recover the exact posterior mean and spread."""
    torch.manual_seed(0)
    field = gaussian_field(nugget=0.1)
    signals, measurement = measurements(field, 600, fixed_mask=True)
    model, config = make_model("realnvp", field, iterations=3000, flow_depth=4)
    train_aps(model, measurement[:500], config, progress=False)
    test = measurement[500:]
    V = LAYOUT.num_vertices
    exact = field.posterior(test.y[:, :V, 0].double(), test.observed[:, :V], NOISE)
    draws = model.sample_measurement(test, 256, torch.Generator().manual_seed(1))[..., :V, 0].double()
    mean, std = draws.mean(0), draws.std(0)
    hidden = ~test.observed[:, :V]
    truth = signals[500:, :V, 0].double()
    mean_error = ((mean - exact.mean) / exact.std)[hidden].pow(2).mean().sqrt()
    std_ratio = (std / exact.std)[hidden].median()
    prior_error = (exact.mean / exact.std)[hidden].pow(2).mean().sqrt()  # error of answering the prior mean
    assert mean_error < 0.5 * prior_error, (mean_error, prior_error)
    assert 0.7 < std_ratio < 1.3, std_ratio
    assert psnr(mean, truth).mean() > psnr(exact.mean, truth).mean() - 1.0


def grf_signals(count, seed=0, channels=None):
    values = gaussian_field().sample(count, generator=torch.Generator().manual_seed(seed)).float()
    values = 0.5 + 0.15 * values
    return values if channels is None else values[..., None].expand(-1, -1, channels).contiguous()


@pytest.mark.parametrize("kind", FLOWS)
def test_fit_smoke_samples_reports_saves_and_loads(kind, tmp_path):
    train, test = grf_signals(48).numpy(), grf_signals(6, seed=1).numpy()
    model = fit(MESH, train, mask_rate=0.5, noise_std=0.05, flow=kind, scale="smoke", test_signals=test,
                progress=False, iterations=60)
    assert set(model.report) >= {"psnr_mean", "psnr_single", "coverage_90_hidden"}
    assert math.isfinite(model.report["psnr_mean"])
    observed = test[0].copy()
    observed[::3] = np.nan
    mean, std = model.posterior(observed, n=16, generator=torch.Generator().manual_seed(0))
    assert isinstance(mean, np.ndarray) and mean.shape == (MESH.num_vertices,) and (std >= 0).all()
    draws = model.sample(torch.as_tensor(test[:2, :, None]).masked_fill(torch.rand(2, 84, 1) < 0.3, float("nan")), n=3)
    assert isinstance(draws, torch.Tensor) and draws.shape == (3, 2, MESH.num_vertices, 1)
    model.save(tmp_path / "aps.pt")
    loaded = AmortizedPosteriorSampler.load(tmp_path / "aps.pt")
    again = loaded.sample(observed, n=4, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(again, model.sample(observed, n=4, generator=torch.Generator().manual_seed(5)), atol=1e-6)
    assert loaded.report == model.report


def test_fit_blind_conditions_on_y_alone_and_reads_the_mask_off_it(tmp_path):
    model = fit(MESH, grf_signals(32).numpy(), noise_std=0.05, blind=True, hidden_range=(0.3, 0.6),
                prior=exact_prior(gaussian_field()), scale="smoke", progress=False, iterations=20)
    # the measurement's own mask says "all observed"; a blind sampler ignores it and reads y = 0 as hidden
    condition = model.condition(aps.Measurement(torch.zeros(2, 96, 1), torch.ones(2, 96, dtype=torch.bool)))
    assert model.blind and condition.shape == (2, 84, 2) and not condition[..., 1].any()
    observed = grf_signals(1, seed=3)[0].numpy()
    observed[:40] = np.nan
    assert np.isfinite(model.sample(observed, n=2)).all()
    model.save(tmp_path / "blind.pt")  # the exact Gaussian prior is saved with the flow
    loaded = AmortizedPosteriorSampler.load(tmp_path / "blind.pt")
    assert loaded.blind
    np.testing.assert_array_equal(loaded.sample(observed, n=2, generator=torch.Generator().manual_seed(0)),
                                  model.sample(observed, n=2, generator=torch.Generator().manual_seed(0)))


def test_elbo_min_time_sets_the_prior_term_and_is_saved(tmp_path):
    prior = exact_prior(gaussian_field())
    model = fit(MESH, grf_signals(16).numpy(), noise_std=0.05, prior=prior, scale="smoke", progress=False, iterations=2,
                elbo_min_time=1e-5)
    assert model.elbo_min_time == 1e-5
    measurement = task_operator()(LAYOUT.pad(torch.as_tensor(grf_signals(2, seed=1))[..., None]),
                                  torch.Generator().manual_seed(0))
    terms = model(measurement, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)  # replay: z first, then the ELBO's (t, e)
    x, _ = model.generate(measurement, torch.randn(2, model.flow.dim, generator=generator))
    state = generator.get_state()
    for min_time, same in ((1e-5, True), (None, False)):
        generator.set_state(state)
        bound = prior.elbo(LAYOUT.flatten(x), generator=generator, min_time=min_time)
        assert torch.allclose(terms["prior"], bound) == same
    loaded = AmortizedPosteriorSampler.load(model.save(tmp_path / "aps.pt"))
    assert loaded.elbo_min_time == 1e-5
    with pytest.raises(ValueError, match="elbo_min_time"):
        fit(MESH, grf_signals(16).numpy(), prior=prior, scale="smoke", progress=False, iterations=2, elbo_min_time=0.0)


def test_fit_handles_missing_values_in_training_signals():
    signals = grf_signals(32).numpy()
    signals[:, :10] = np.nan  # never observed, never used
    model = fit(MESH, signals, prior=exact_prior(gaussian_field()), scale="smoke", progress=False, iterations=10)
    assert all(torch.isfinite(p).all() for p in model.flow.parameters())


def test_training_resumes_from_checkpoint(tmp_path):
    field = gaussian_field()
    _, measurement = measurements(field, 32)
    straight, config = make_model("realnvp", field, iterations=12, checkpoint_every=6)
    train_aps(straight, measurement, config, progress=False)
    halves, _ = make_model("realnvp", field)
    train_aps(halves, measurement, APSConfig.preset("smoke", iterations=6, checkpoint_every=6), tmp_path / "c.pt",
              progress=False)
    resumed, _ = make_model("realnvp", field)
    train_aps(resumed, measurement, config, tmp_path / "c.pt", progress=False)
    for a, b in zip(straight.flow.parameters(), resumed.flow.parameters()):
        torch.testing.assert_close(a, b)


def test_bad_input_is_rejected():
    signals = grf_signals(8).numpy()
    prior = exact_prior(gaussian_field())
    with pytest.raises(ValueError, match="noise_std"):
        fit(MESH, signals, noise_std=-0.1, prior=prior, scale="smoke")
    with pytest.raises(ValueError, match=r"mask_rate \(the hidden fraction\) must be in \[0, 1\)"):
        fit(MESH, signals, mask_rate=1.0, prior=prior, scale="smoke")
    with pytest.raises(ValueError, match="do not fit this mesh"):
        fit(MESH, signals[:, :50], prior=prior, scale="smoke")
    with pytest.raises(ValueError, match="flow"):
        fit(MESH, signals, flow="glow", prior=prior, scale="smoke")
    with pytest.raises(ValueError, match="scale"):
        fit(MESH, signals, prior=prior, scale="huge")
    with pytest.raises(ValueError, match="signals must be"):
        fit(MESH, signals[0, 0], prior=prior, scale="smoke")
    model, _ = make_model("realnvp", gaussian_field())
    with pytest.raises(ValueError, match="all NaN"):
        model.posterior(np.full(MESH.num_vertices, np.nan))
    with pytest.raises(ValueError, match="no observed vertex"):
        aps.RandomVertexMask(84, 96, 0.5, 0.05)(torch.full((1, 96, 1), float("nan")))
