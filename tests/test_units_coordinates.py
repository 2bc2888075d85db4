"""Climate data at the boundary: lat-lon DataArrays matched to the model's grid by coordinates, and units."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import manifold_aps as aps
from manifold_aps.checkpoint import load_checkpoint, save_checkpoint
from manifold_aps.signals import (LatLonGrid, MinMaxNormalizer, VertexLayout, convert_units, latlon_grid,
                                  warn_outside_training_range)

SPHERE = aps.latlon_sphere(30.0)  # 7 latitudes 90 … −90, 12 longitudes 0 … 330
LAYOUT = VertexLayout(SPHERE.num_vertices, grid=latlon_grid(SPHERE))


def _fields() -> xr.DataArray:
    """(time, latitude, longitude) on the model's grid, values that tell every point apart."""
    latitude, longitude = np.linspace(90, -90, 7), np.arange(12) * 30.0
    values = np.random.default_rng(0).normal(size=(2, 7, 12))
    return xr.DataArray(values, dims=("time", "latitude", "longitude"), name="t2m", attrs={"units": "K"},
                        coords={"time": [1, 2], "latitude": latitude, "longitude": longitude})


def _minus_180_to_180(fields, name="longitude"):
    return fields.assign_coords({name: (fields[name] + 180.0) % 360.0 - 180.0}).sortby(name)


VARIANTS = {
    "longitude before latitude": lambda f: f.transpose("time", "longitude", "latitude"),
    "lat/lon names": lambda f: f.rename(latitude="lat", longitude="lon"),
    "south to north": lambda f: f.isel(latitude=slice(None, None, -1)),
    "-180…180 longitudes": _minus_180_to_180,
    "all at once": lambda f: _minus_180_to_180(
        f.rename(latitude="lat", longitude="lon").isel(lat=slice(None, None, -1)).transpose("lon", "time", "lat"), "lon"),
}


def test_any_layout_of_the_same_grid_gives_the_same_vertices_and_comes_back_as_given():
    reference, _ = LAYOUT.to_batch(_fields())
    expected = torch.as_tensor(_fields().values.reshape(2, 84, 1), dtype=torch.float32)
    assert torch.equal(reference[:, :84], expected)  # the model's own order: row-major, north → south
    for name, variant in VARIANTS.items():
        fields = variant(_fields())
        batch, form = LAYOUT.to_batch(fields)
        assert torch.equal(batch, reference), name
        back = LAYOUT.restore(2 * batch, form)
        assert back.dims == fields.dims and back.attrs == {"units": "K"} and back.name == "t2m", name
        for dim in fields.dims:
            np.testing.assert_array_equal(back[dim].values, fields[dim].values)
        np.testing.assert_allclose(back.values, 2 * fields.values, atol=1e-6, err_msg=name)
        draws = LAYOUT.restore(torch.stack([batch] * 3), form)
        assert draws.dims == ("draw", *fields.dims) and draws.shape == (3, *fields.shape), name


def test_another_grid_is_refused_with_how_to_regrid():
    finer = _fields().interp(latitude=np.linspace(90, -90, 13), longitude=np.arange(24) * 15.0)
    with pytest.raises(ValueError, match=r"da\.interp\(latitude=np\.linspace\(90, -90, 7\), "
                                         r"longitude=np\.linspace\(0, 330, 12\)\)"):
        LAYOUT.to_batch(finer)
    shifted = _fields().rename(longitude="lon").assign_coords(lon=np.arange(12) * 30.0 - 165.0)  # same size, other points
    with pytest.raises(ValueError, match=r"12 values -165 … 165 lon.*not the model's grid.*% 360"):
        LAYOUT.to_batch(shifted)


def test_the_grid_travels_with_the_layout_and_old_layouts_read_the_latlon_sphere_grid():
    assert LAYOUT.grid.latitude == tuple(np.linspace(90, -90, 7)) and len(LAYOUT.grid.longitude) == 12
    stored = dataclasses.asdict(LAYOUT)  # what checkpoints keep
    assert VertexLayout(**stored) == LAYOUT
    assert LatLonGrid.with_vertices(4140) == latlon_grid(aps.latlon_sphere(4.0))
    assert latlon_grid(aps.healpix_sphere(2)) is None and latlon_grid(aps.torus()) is None
    without_grid = VertexLayout(84)
    assert torch.equal(without_grid.to_batch(VARIANTS["all at once"](_fields()))[0], LAYOUT.to_batch(_fields())[0])
    with pytest.raises(ValueError, match="not a lat-lon grid"):
        VertexLayout(12 * 4).to_batch(_fields().isel(latitude=slice(0, 4)))
    with pytest.raises(ValueError, match="does not have V=85"):
        VertexLayout(85, grid=LAYOUT.grid)


@pytest.mark.parametrize("units, offset", [("K", 0.0), ("°C", -273.15)])
def test_units_round_trip_through_a_saved_normalizer(tmp_path, units, offset):
    kelvin = np.array([210.0, 260.0, 310.0])
    trained = MinMaxNormalizer.fit(xr.DataArray(kelvin + offset, attrs={"units": units}))
    assert trained.units == units
    save_checkpoint(tmp_path / "n.pt", {"normalizer": trained.state_dict()}, kind="test")
    loaded = MinMaxNormalizer(**load_checkpoint(tmp_path / "n.pt")["normalizer"])
    assert loaded == trained
    for user_units, user_values in (("K", kelvin), ("degC", kelvin - 273.15), ("deg_C", kelvin - 273.15),
                                    ("Celsius", kelvin - 273.15)):
        model_values = convert_units(user_values, user_units, loaded.units)
        np.testing.assert_allclose(model_values, kelvin + offset)
        normalized = loaded.normalize(model_values)
        np.testing.assert_allclose(normalized, [0.0, 0.5, 1.0])
        np.testing.assert_allclose(convert_units(loaded.denormalize(normalized), loaded.units, user_units), user_values)


def test_units_that_cannot_be_converted_exactly_are_refused():
    with pytest.raises(ValueError, match=r"'degF' to 'K'"):
        convert_units(np.zeros(3), "degF", "K")
    with pytest.raises(ValueError, match=r"'m s-1' to 'K'"):
        convert_units(np.zeros(3), "m s-1", "K")
    assert convert_units(5.0, None, "K") == 5.0 and convert_units(5.0, "kelvin", "K") == 5.0


def test_inputs_far_outside_the_training_range_warn_with_the_range():
    gasp = MinMaxNormalizer(202.66, 320.93, "K")
    with pytest.warns(UserWarning, match=r"-40 … 35 K, far outside the training range 202.7 … 320.9 K"):
        warn_outside_training_range(torch.tensor([-40.0, float("nan"), 35.0]), gasp)  # °C passed as K
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_outside_training_range(np.array([190.0, 330.0]), gasp)  # beyond the range, but not far


def test_measurement_noise_beyond_the_range_is_not_taken_for_wrong_units():
    unit = MinMaxNormalizer(0.0, 1.0)
    noisy = np.array([-0.45, 0.5, 1.45])  # 4.5 σ_y past the range at σ_y = 0.1
    with pytest.warns(UserWarning, match="far outside the training range"):
        warn_outside_training_range(noisy, unit)  # clean signals' slack alone: 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_outside_training_range(noisy, unit, noise_std=0.1)
    with pytest.warns(UserWarning, match="far outside the training range"):
        warn_outside_training_range(np.array([-0.9, 0.5]), unit, noise_std=0.1)  # beyond 0.25 + 6 σ_y


def test_a_sampler_allows_for_its_own_measurement_noise():
    from manifold_aps import pretrained

    sampler = pretrained.load_sampler("bunny_mnist")
    observed = np.full(sampler.layout.num_vertices, np.nan)
    observed[:3] = [-0.45, 0.5, 1.45]  # 4.5 σ_y past the training range 0 … 1 at the sampler's σ_y = 0.1
    assert sampler.noise_std == pytest.approx(0.1) and sampler.normalizer.scale == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.sample(observed, n=2, generator=torch.Generator().manual_seed(0))
    observed[0] = -2.0
    with pytest.warns(UserWarning, match="far outside the training range"):
        sampler.sample(observed, n=2, generator=torch.Generator().manual_seed(0))
