"""ERA5 / GASP-grid temperature loaders, regridding, normalisation and vertex conversion."""

import os

import numpy as np
import pytest
import torch
import xarray as xr

import manifold_aps as aps
from manifold_aps.data import era5

needs_mirror = pytest.mark.skipif(not os.environ.get("MANIFOLD_APS_DATA"),
                                  reason="MANIFOLD_APS_DATA is not set (CI points it at the shared data mirror)")


@pytest.fixture(scope="module")
def sample():
    if not os.environ.get("MANIFOLD_APS_DATA"):
        pytest.skip("MANIFOLD_APS_DATA is not set (CI points it at the shared data mirror)")
    return era5.load_era5_sample()


def test_sample_is_the_gasp_grid_in_kelvin(sample):
    assert sample.dims == ("sample", "latitude", "longitude") and sample.shape == (24, 46, 90)
    assert sample.latitude[0] == 90 and sample.latitude[-1] == -90 and sample.longitude[-1] == 356
    assert 200.0 < float(sample.min()) < 210.0 and 310.0 < float(sample.max()) < 320.0
    assert sample.attrs["units"] == "K" and sample.attrs["is_proxy"] == 0
    assert str(sample.time.values[0]).startswith("2026-03-25")


def test_load_gasp_layout_agrees_with_sample(sample, tmp_path):
    folder = tmp_path / "era5_temp2m_16x_val"
    folder.mkdir()
    order = np.random.default_rng(0).permutation(24)  # written out of order: loading sorts by name
    for index in order:
        np.savez(folder / f"{index:05d}.npz", latitude=np.linspace(90, -90, 46).astype(np.float32),
                 longitude=np.linspace(0, 356, 90).astype(np.float32), temperature=sample.values[index])
    loaded = era5.load_gasp(tmp_path, "val")
    assert loaded.shape == (24, 46, 90)
    np.testing.assert_array_equal(loaded.values, sample.values)
    assert loaded.file.values[0] == "00000.npz"
    with pytest.raises(FileNotFoundError, match="era5_temp2m_16x_test"):
        era5.load_gasp(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        era5.load_gasp(tmp_path, "validation")


def test_load_gasp_rejects_wrong_grid(sample, tmp_path):
    folder = tmp_path / "era5_temp2m_16x_train"
    folder.mkdir()
    np.savez(folder / "a.npz", latitude=np.linspace(-90, 90, 46), longitude=np.arange(90) * 4.0, temperature=sample.values[0])
    with pytest.raises(ValueError, match=r"a\.npz: latitude must be linspace\(90, -90, 46\)"):
        era5.load_gasp(tmp_path, "train")


def test_netcdf_on_finer_shifted_grid_gives_the_same_fields(sample, tmp_path):
    """A 2° file, −180…178 longitudes, south → north, 'lat'/'lon'/'2t' names: exact selection back."""
    fine_lat = np.arange(-90.0, 90.1, 2.0)
    fine_lon = np.arange(-180.0, 180.0, 2.0)
    periodic = sample.pad(longitude=1, mode="wrap").assign_coords(longitude=np.arange(-4.0, 361.0, 4.0))
    fine = periodic.interp(latitude=fine_lat, longitude=np.mod(fine_lon, 360.0))
    fine = fine.assign_coords(longitude=fine_lon).rename(latitude="lat", longitude="lon")
    dataset = xr.Dataset({"2t": (("time", "lat", "lon"), fine.values, {"units": "K"})},
                         coords={"time": sample.time.values, "lat": fine_lat, "lon": fine_lon})
    path = tmp_path / "fine.nc"
    dataset.to_netcdf(path)
    loaded = era5.load_t2m(path)
    assert loaded.shape == (24, 46, 90)
    np.testing.assert_allclose(loaded.values, sample.values, atol=1e-4)
    np.testing.assert_array_equal(loaded.time.values, sample.time.values)


def test_netcdf_bilinear_regridding_of_an_offset_grid(tmp_path):
    """Cell-centred 1° grid (no node on the target): bilinear with periodic wrap, poles = zonal mean."""
    def analytic(lat, lon):  # °C, smooth and periodic in longitude
        return 10.0 + 20.0 * np.cos(np.deg2rad(lat)) + 5.0 * np.sin(np.deg2rad(lon)) * np.cos(np.deg2rad(lat))

    lat, lon = np.arange(-89.5, 90.0, 1.0), np.arange(-179.5, 180.0, 1.0)
    values = analytic(lat[:, None], lon[None, :])
    dataset = xr.Dataset({"tas": (("lat", "lon"), values, {"units": "degC"})}, coords={"lat": lat, "lon": lon})
    dataset.to_netcdf(tmp_path / "offset.nc")
    loaded = era5.load_t2m(tmp_path / "offset.nc")
    assert loaded.shape == (1, 46, 90)
    expected = analytic(era5.GASP_LATITUDES[:, None], era5.GASP_LONGITUDES[None, :]) + 273.15
    interior = np.abs(era5.GASP_LATITUDES) < 90
    assert np.abs(loaded.values[0, interior] - expected[interior]).max() < 0.01
    assert np.ptp(loaded.values[0, 0]) == 0 and np.ptp(loaded.values[0, -1]) == 0  # pole rows constant
    assert abs(loaded.values[0, 0, 0] - (10.0 + 20.0 * np.cos(np.deg2rad(89.5)) + 273.15)) < 1e-3


def test_netcdf_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        era5.load_t2m(tmp_path / "missing.nc")
    bad = xr.Dataset({"precip": (("lat", "lon"), np.zeros((3, 4)))}, coords={"lat": [0, 1, 2], "lon": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match=r"no variable among \['precip'\] is one of \('t2m'"):
        era5.load_t2m(bad)


def test_sahara_hotter_than_antarctica_through_sphere_vertices(sample):
    sphere = aps.latlon_sphere(4.0)
    signals = era5.to_vertices(sample)  # (24, 4140, 1)
    latitude, longitude = sphere.latitude.numpy(), sphere.longitude.numpy()
    sahara = np.isin(latitude, [22.0, 26.0]) & np.isin(longitude, [4.0, 8.0, 12.0, 16.0, 20.0])
    antarctica = latitude == -82.0
    assert sahara.sum() == 10 and antarctica.sum() == 90
    difference = signals[:, sahara, 0].mean(dim=1) - signals[:, antarctica, 0].mean(dim=1)
    assert (difference > 40.0).all(), difference


def test_vertex_round_trip_and_order(sample):
    sphere = aps.latlon_sphere(4.0)
    signals = era5.to_vertices(sample)
    assert signals.shape == (24, 4140, 1)
    for vertex in (0, 137, 2222, 4139):
        value = sample[5].sel(latitude=float(sphere.latitude[vertex]), longitude=float(sphere.longitude[vertex]))
        assert float(signals[5, vertex, 0]) == float(value)
    back = era5.from_vertices(signals)
    np.testing.assert_array_equal(back.values, sample.values)
    flipped = sample.isel(latitude=slice(None, None, -1))  # south → north input is reordered
    assert torch.equal(era5.to_vertices(flipped), signals)


def test_gasp_normalizer(sample):
    assert era5.GASP_NORMALIZER == aps.MinMaxNormalizer(202.66, 320.93, "K")
    normalized = era5.GASP_NORMALIZER.normalize(sample.values)
    assert -0.001 < normalized.min() < 0.01 and 0.9 < normalized.max() < 1.0


@needs_mirror
def test_gcm_proxy_splits_are_labelled_as_proxy():
    sizes = {}
    last_time = None
    for split in era5.GASP_SPLITS:
        fields = era5.load_gcm_proxy(split)
        sizes[split] = fields.sizes["sample"]
        assert fields.attrs["is_proxy"] == 1 and "not ERA5" in fields.attrs["note"]
        assert "NOT ERA5" in fields.attrs["source"]
        if last_time is not None:
            assert fields.time.values[0] > last_time  # time blocks, in order
        last_time = fields.time.values[-1]
    assert sizes == {"train": 3822, "val": 546, "test": 1092}
    with pytest.raises(ValueError, match="split"):
        era5.load_gcm_proxy("all")
