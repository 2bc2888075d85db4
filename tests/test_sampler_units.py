"""The sampler's public boundary speaks the user's physical units: the shipped sphere model takes
real ERA5 2 m temperature in kelvin (or °C) as a DataArray with NaNs and answers in the same units
and coordinates; ``fit`` learns the normalisation of signals that carry units."""

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import manifold_aps as aps


def _hidden_rmse(mean, truth, hidden):
    return float(np.sqrt(((mean.values - truth.values) ** 2)[hidden].mean()))


def test_shipped_sphere_model_answers_real_era5_in_kelvin(mirror):
    from manifold_aps import pretrained
    from manifold_aps.data import GASP_NORMALIZER, load_era5_sample

    fields = load_era5_sample()[:4]
    assert fields.attrs["units"] == "K"
    hidden = np.random.default_rng(0).random(fields.shape) < 0.6
    observed = fields.where(~hidden)
    sampler = pretrained.load_sampler("era5_proxy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real temperatures are inside the training range: no warning
        mean, std = sampler.posterior(observed, n=64, generator=torch.Generator().manual_seed(0))
    assert mean.dims == observed.dims and mean.attrs["units"] == "K"
    assert 200 < float(mean.min()) and float(mean.max()) < 330 and 0 < float(std.mean()) < 20
    in_kelvin = _hidden_rmse(mean, fields, hidden)

    sampler.normalizer = None  # by hand: normalise, sample in model units, map back to kelvin
    normalised = xr.DataArray(GASP_NORMALIZER.normalize(observed.values), dims=observed.dims, coords=observed.coords)
    by_hand, _ = sampler.posterior(normalised, n=64, generator=torch.Generator().manual_seed(0))
    by_hand_rmse = _hidden_rmse(GASP_NORMALIZER.denormalize(by_hand), fields, hidden)
    assert in_kelvin < 10 and abs(in_kelvin - by_hand_rmse) <= 0.1 * by_hand_rmse


def test_celsius_input_gives_celsius_output(mirror):
    from manifold_aps import pretrained
    from manifold_aps.data import load_era5_sample

    fields = load_era5_sample()[:2]
    hidden = np.random.default_rng(1).random(fields.shape) < 0.6
    kelvin = fields.where(~hidden)
    celsius = (kelvin - 273.15).assign_attrs(units="degC")
    sampler = pretrained.load_sampler("era5_proxy")
    mean_k, std_k = sampler.posterior(kelvin, n=32, generator=torch.Generator().manual_seed(0))
    mean_c, std_c = sampler.posterior(celsius, n=32, generator=torch.Generator().manual_seed(0))
    assert mean_c.attrs["units"] == "degC"
    np.testing.assert_allclose(mean_c.values + 273.15, mean_k.values, atol=1e-3)
    np.testing.assert_allclose(std_c.values, std_k.values, atol=1e-4)
    with pytest.raises(ValueError, match="cannot convert values in 'm/s' to 'K'"):
        sampler.posterior(kelvin.assign_attrs(units="m/s"), n=2)


def test_fit_learns_the_normalisation_of_signals_with_units(tmp_path):
    mesh = aps.latlon_sphere(30.0)
    field = aps.data.GaussianRandomField(mesh, length_scale=1.0, num_modes=20, nugget=0.05, mean=0.5, variance=0.02)
    grid = aps.signals.latlon_grid(mesh)
    kelvin = 250.0 + 40.0 * field.sample(24, torch.Generator().manual_seed(0)).float()
    signals = aps.signals.vertices_to_grid(kelvin, grid.latitude, grid.longitude).assign_attrs(units="K")
    model = aps.fit(mesh, signals, noise_std=0.05, prior=None, scale="smoke", progress=False, iterations=5)
    assert model.normalizer is not None and model.normalizer.units == "K"
    assert model.normalizer.minimum == pytest.approx(float(kelvin.min()), rel=1e-6)
    path = model.save(tmp_path / "model.pt")
    loaded = aps.AmortizedPosteriorSampler.load(path)
    assert loaded.normalizer == model.normalizer
    observed = signals[:1].where(np.random.default_rng(0).random(signals[:1].shape) > 0.5)
    mean, _ = loaded.posterior(observed, n=8)
    assert mean.attrs["units"] == "K" and 200 < float(mean.min()) and float(mean.max()) < 340


def test_fit_normalises_base_signals_like_the_signals_and_refuses_other_units():
    mesh = aps.latlon_sphere(30.0)
    field = aps.data.GaussianRandomField(mesh, length_scale=1.0, num_modes=20, nugget=0.05, mean=0.5, variance=0.02)
    grid = aps.signals.latlon_grid(mesh)
    kelvin = 250.0 + 40.0 * field.sample(64, torch.Generator().manual_seed(0)).float()
    signals = aps.signals.vertices_to_grid(kelvin, grid.latitude, grid.longitude).assign_attrs(units="K")
    model = aps.fit(mesh, signals[:12], noise_std=0.05, prior=None, scale="smoke", progress=False, iterations=2,
                    base_signals=signals)
    expected = model.normalizer.normalize(kelvin.mean(0)).double()
    torch.testing.assert_close(model.base.mean, expected, atol=1e-5, rtol=0)  # the float32 signals, normalised
    with pytest.raises(ValueError, match="base_signals are in 'degC', the signals in 'K'"):
        aps.fit(mesh, signals[:12], noise_std=0.05, prior=None, scale="smoke", progress=False, iterations=2,
                base_signals=(signals - 273.15).assign_attrs(units="degC"))
