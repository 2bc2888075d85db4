"""Model error estimated from the measurement alone: the marginal likelihood is the dense Gaussian's,
its maximiser recovers a known extra white variance (and finds none where there is none), and the
sampler and the methods widen their posteriors by it."""

import numpy as np
import pytest
import torch

from manifold_aps.gaussian_posterior import LowRankGaussian
from manifold_aps.methods import aps_method, gaussian_method
from manifold_aps.model_error import add_model_error, estimate_model_error, marginal_log_likelihood, with_model_error
from manifold_aps.operators import RandomVertexMask

from test_aps import LAYOUT, NOISE
from test_gaussian_base import field, identity_model, measurement_of  # noqa: F401  (fixture)

SIGMA = 0.2


@pytest.fixture(scope="module")
def gaussian():
    generator = torch.Generator().manual_seed(0)
    modes = torch.randn(60, 8, generator=generator, dtype=torch.float64)
    spectrum = torch.rand(8, generator=generator, dtype=torch.float64) + 0.5
    return LowRankGaussian(torch.randn(60, generator=generator, dtype=torch.float64), modes, spectrum, 0.05)


def measured(gaussian, count, model_error, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = with_model_error(gaussian, model_error).sample(count, generator)
    observed = torch.rand(x.shape, generator=generator) < 0.5
    return x + SIGMA * torch.randn(x.shape, generator=generator, dtype=torch.float64), observed


@pytest.mark.parametrize("model_error", [0.0, 0.3])
def test_marginal_likelihood_is_the_dense_gaussians(gaussian, model_error):
    y, observed = measured(gaussian, 5, 0.1)
    expected = []
    for row, seen in zip(y, observed):
        covariance = gaussian.covariance()[seen][:, seen] + (SIGMA**2 + model_error) * torch.eye(int(seen.sum()),
                                                                                                 dtype=torch.float64)
        expected.append(torch.distributions.MultivariateNormal(gaussian.mean[seen], covariance).log_prob(row[seen]))
    torch.testing.assert_close(marginal_log_likelihood(gaussian, y, observed, SIGMA, model_error), torch.stack(expected))


def test_estimate_recovers_a_known_model_error_and_finds_none_where_there_is_none(gaussian):
    y, observed = measured(gaussian, 400, 0.2)
    pooled = estimate_model_error(gaussian, y, observed, SIGMA, pooled=True)
    assert pooled.shape == (400,) and abs(float(pooled[0]) - 0.2) < 0.02
    each = estimate_model_error(gaussian, y, observed, SIGMA)
    assert abs(float(each.median()) - 0.2) < 0.05
    clean, observed = measured(gaussian, 400, 0.0)
    assert float(estimate_model_error(gaussian, clean, observed, SIGMA, pooled=True)[0]) < 0.01 * SIGMA**2 + 0.005


def test_estimate_is_the_maximiser(gaussian):
    y, observed = measured(gaussian, 6, 0.5, seed=3)
    best = estimate_model_error(gaussian, y, observed, SIGMA)
    at_best = marginal_log_likelihood(gaussian, y, observed, SIGMA, best)
    for factor in (0.0, 0.9, 1.1):
        assert (at_best >= marginal_log_likelihood(gaussian, y, observed, SIGMA, best * factor) - 1e-9).all()


def test_with_model_error_adds_to_the_nugget_and_refuses_bad_variances(gaussian):
    wider = with_model_error(gaussian, 0.3)
    assert wider.nugget_variance == pytest.approx(0.35) and torch.equal(wider.modes, gaussian.modes)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="model_error is a variance"):
            with_model_error(gaussian, bad)
        with pytest.raises(ValueError, match="model_error is a variance"):
            marginal_log_likelihood(gaussian, *measured(gaussian, 2, 0.0), SIGMA, bad)
    y, observed = measured(gaussian, 2, 0.0)
    observed[1] = False
    with pytest.raises(ValueError, match="at least one observed entry"):
        estimate_model_error(gaussian, y, observed, SIGMA)
    with pytest.raises(ValueError, match="one model error per measurement"):
        add_model_error(torch.zeros(4, 2, 60, 1), torch.zeros(2, 60, 1), observed, SIGMA, torch.ones(3))


def test_added_model_error_is_its_conditional_given_the_draw_and_y():
    y = torch.tensor([[[1.0], [1.0], [0.0]]])  # (B=1, V=3, C=1)
    observed = torch.tensor([[True, False, False]])
    draws = torch.zeros(20000, 1, 3, 1)
    added = add_model_error(draws, y, observed, SIGMA, torch.tensor([0.12]), torch.Generator().manual_seed(0))
    weight = 0.12 / (0.12 + SIGMA**2)
    torch.testing.assert_close(added.mean(0)[0, :, 0], torch.tensor([weight, 0.0, 0.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(added.var(0)[0, :, 0], torch.tensor([weight * SIGMA**2, 0.12, 0.12]), rtol=0.05, atol=0)


def test_sampler_and_methods_widen_by_the_estimated_model_error(field):  # noqa: F811
    model = identity_model(field, kind="realnvp")
    measurement = measurement_of(field, count=3)
    V = LAYOUT.num_vertices
    widened = RandomVertexMask(V, LAYOUT.padded_vertices, 0.6, NOISE)
    truth = with_model_error(field, 0.02).sample(3, torch.Generator().manual_seed(7)).float()[..., None]
    noisy = widened(LAYOUT.pad(truth), torch.Generator().manual_seed(8))
    variance = model.estimate_model_error(noisy)
    assert variance.shape == (3,) and float(variance.mean()) > 0.005
    assert float(model.estimate_model_error(measurement).mean()) < float(variance.mean())

    plain = model.sample_measurement(noisy, 256, torch.Generator().manual_seed(0))
    draws, used = model.sample_with_model_error(noisy, 256, torch.Generator().manual_seed(0))
    torch.testing.assert_close(used, variance)
    assert (draws[..., V:, :] == 0).all()  # padding stays zero
    hidden = ~noisy.observed[:, :V]
    gain = draws[..., :V, 0].var(0) - plain[..., :V, 0].var(0)
    for b in range(3):
        torch.testing.assert_close(gain[b][hidden[b]].mean(), variance[b], rtol=0.15, atol=1e-4)
    weight = variance / (variance + NOISE**2)
    shift = draws[..., :V, 0].mean(0) - plain[..., :V, 0].mean(0)
    expected = weight[:, None] * (noisy.y[:, :V, 0] - plain[..., :V, 0].mean(0))
    torch.testing.assert_close(shift[~hidden], expected[~hidden], atol=0.02, rtol=0)

    oi = gaussian_method(field, LAYOUT, samples=64, model_error=True)(noisy, widened, torch.Generator().manual_seed(0))
    exact = with_model_error(field, float(variance[0])).posterior(*noisy[:1].real_entries(V), NOISE)
    torch.testing.assert_close(oi.mean[0, :, 0], exact.mean[0].float())
    assert oi.info["model_error_std"] == pytest.approx(float(variance.sqrt().mean()), rel=1e-5)
    aps = aps_method(model, 64, model_error=True)(noisy, widened, torch.Generator().manual_seed(0))
    assert aps.samples.shape == (64, 3, V, 1) and aps.info["model_error_std"] > 0

    model.base = None
    with pytest.raises(ValueError, match="this sampler has none"):
        model.estimate_model_error(noisy)


def test_model_error_setting_is_saved_and_is_the_default_of_sample_and_posterior(field, tmp_path):  # noqa: F811
    model = identity_model(field, kind="realnvp")
    truth = with_model_error(field, 0.02).sample(2, torch.Generator().manual_seed(7)).numpy()[..., None]
    observed = truth.copy()
    observed[:, ::2] = float("nan")
    _, plain_std = model.posterior(observed, n=64, generator=torch.Generator().manual_seed(0))
    model.model_error = True
    _, wide_std = model.posterior(observed, n=64, generator=torch.Generator().manual_seed(0))
    assert wide_std[:, ::2].mean() > plain_std[:, ::2].mean() + 0.05
    path = model.save(tmp_path / "model.pt")
    loaded = type(model).load(path)
    assert loaded.model_error
    _, off_std = loaded.posterior(observed, n=64, generator=torch.Generator().manual_seed(0), model_error=False)
    np.testing.assert_allclose(off_std, plain_std, rtol=1e-4, atol=1e-6)
    assert model.model_error_std(observed).shape == (2,)
    with pytest.raises(ValueError, match="needs a Gaussian base"):
        type(model)(model.flow, model.prior, model.operator, model_error=True)


def test_shipped_sphere_sampler_reads_the_model_error_of_real_era5_in_kelvin(mirror):
    from manifold_aps import pretrained
    from manifold_aps.data import load_era5_sample

    fields = load_era5_sample()[:4]
    sampler = pretrained.load_sampler("era5_proxy_guided")
    rng = np.random.default_rng(0)  # measured as the task measures: σ_y in kelvin, 60 % hidden
    noise = sampler.normalizer.denormalize_std(sampler.noise_std) * rng.standard_normal(fields.shape)
    observed = (fields + noise).where(rng.random(fields.shape) >= 0.6)
    delta = sampler.model_error_std(observed)
    assert delta.shape == (4,) and (0.5 < delta).all() and (delta < 6).all()  # kelvin, not model units
    _, std = sampler.posterior(observed, n=32, generator=torch.Generator().manual_seed(0), model_error=True)
    _, plain = sampler.posterior(observed, n=32, generator=torch.Generator().manual_seed(0), model_error=False)
    assert std.attrs["units"] == "K" and float(std.mean()) > float(plain.mean())


def test_measurements_cleaner_than_the_assumed_noise_reveal_model_error_once_their_noise_is_given(mirror):
    from manifold_aps import pretrained
    from manifold_aps.data import load_era5_sample

    fields = load_era5_sample()[:3]
    observed = fields.where(np.random.default_rng(0).random(fields.shape) >= 0.6)  # no noise at all
    sampler = pretrained.load_sampler("era5_proxy_guided")
    assert (sampler.model_error_std(observed) == 0).all()  # hidden inside the assumed σ_y ≈ 5.9 K
    delta = sampler.model_error_std(observed, measurement_noise_std=0.0)
    assert (1.0 < delta).all() and (delta < 6).all()
    draws = sampler.sample(observed, n=8, generator=torch.Generator().manual_seed(0), measurement_noise_std=0.0)
    seen = np.isfinite(observed.values)
    np.testing.assert_allclose(draws.values[:, seen], np.broadcast_to(observed.values[seen], (8, seen.sum())), atol=0.05)
    with pytest.raises(ValueError, match="pass model_error=True"):
        sampler.sample(observed, n=2, model_error=False, measurement_noise_std=0.0)
    with pytest.raises(ValueError, match="measurement_noise_std must be a finite number ≥ 0"):
        sampler.model_error_std(observed, measurement_noise_std=-1.0)
