import numpy as np
import pytest
import torch
import xarray as xr

from manifold_aps.signals import MinMaxNormalizer, VertexLayout, grid_to_vertices, padded_size, vertices_to_grid


def test_padded_sizes_of_the_reference_meshes():
    assert padded_size(4140) == 4160  # ERA5 grid, as in the paper
    assert padded_size(1889) == 1920  # bunny: all 1889 vertices kept, 31 padding vertices
    assert padded_size(4160) == 4160
    layout = VertexLayout(4140, 1)
    assert layout.dim == 4160 and layout.dim % 2 == 0 and (layout.padded_vertices // 2**5) * 2**5 == 4160


def test_vertex_mask_and_padding_are_zero():
    layout = VertexLayout(10, 2)
    mask = layout.vertex_mask()
    assert mask.sum() == 10 and mask.shape == (32,)
    batch, _ = layout.to_batch(np.ones((3, 10, 2)))
    assert batch.shape == (3, 32, 2)
    assert batch[:, 10:].abs().sum() == 0 and batch[:, :10].eq(1).all()
    flat = layout.flatten(batch)
    assert flat.shape == (3, 64)
    assert torch.equal(layout.unflatten(flat), batch)
    assert torch.equal(layout.unpad(flat), batch[:, :10])


@pytest.mark.parametrize("shape", [(10,), (4, 10), (10, 1), (4, 10, 1)])
def test_numpy_round_trip_keeps_shape_and_dtype(shape):
    layout = VertexLayout(10, 1)
    data = np.random.default_rng(0).normal(size=shape).astype(np.float64)
    batch, form = layout.to_batch(data)
    assert batch.dtype == torch.float32
    back = layout.restore(batch, form)
    assert isinstance(back, np.ndarray) and back.shape == shape and back.dtype == np.float64
    assert np.allclose(back, data, atol=1e-6)


def test_torch_round_trip_with_extra_sample_axis():
    layout = VertexLayout(10, 3)
    data = torch.randn(10, 3, dtype=torch.float64)
    batch, form = layout.to_batch(data)
    draws = torch.stack([batch, 2 * batch])  # (n, N=1, V_pad, C)
    back = layout.restore(draws, form)
    assert back.shape == (2, 10, 3) and back.dtype == torch.float64
    assert torch.allclose(back[1], 2 * data, atol=1e-5)


def test_nan_is_kept_as_missing():
    layout = VertexLayout(5, 1)
    batch, _ = layout.to_batch(np.array([1.0, np.nan, 3.0, np.nan, 5.0]))
    assert torch.isnan(batch[0, :5, 0]).tolist() == [False, True, False, True, False]


def test_bad_signals_are_rejected_with_clear_messages():
    layout = VertexLayout(10, 1)
    with pytest.raises(ValueError, match="V=10"):
        layout.to_batch(np.zeros((4, 11)))
    with pytest.raises(TypeError, match="real numbers"):
        layout.to_batch(np.array(["a"] * 10))
    with pytest.raises(ValueError, match="empty"):
        layout.to_batch(np.zeros((0, 10, 1)))


def test_latlon_dataarray_round_trip_in_vertex_order():
    latitude, longitude = np.linspace(90, -90, 7), np.arange(12) * 30.0
    values = np.random.default_rng(1).normal(size=(3, 7, 12))
    grid = xr.DataArray(values, dims=("sample", "latitude", "longitude"),
                        coords={"latitude": latitude, "longitude": longitude, "sample": [10, 11, 12]}, name="t2m")
    vertices = grid_to_vertices(grid)
    assert vertices.shape == (3, 84, 1)
    assert float(vertices[1, 12 * 2 + 5, 0]) == pytest.approx(values[1, 2, 5])  # row-major (lat, lon)
    layout = VertexLayout(84, 1)
    batch, form = layout.to_batch(grid)
    back = layout.restore(batch, form)
    assert back.dims == ("sample", "latitude", "longitude") and back.name == "t2m"
    assert np.allclose(back.values, values, atol=1e-6) and list(back["sample"].values) == [10, 11, 12]
    # a south-to-north grid is read in the mesh's north-to-south order and returned as given
    flipped = grid.isel(latitude=slice(None, None, -1))
    assert torch.allclose(grid_to_vertices(flipped), vertices)
    batch, form = layout.to_batch(flipped)
    assert np.allclose(layout.restore(batch, form).values, flipped.values, atol=1e-6)
    draws = layout.restore(torch.stack([batch] * 4), form)
    assert draws.dims == ("draw", "sample", "latitude", "longitude") and draws.shape == (4, 3, 7, 12)
    again = vertices_to_grid(vertices, latitude, longitude)
    assert np.allclose(again.values, values)


def test_min_max_normalisation_round_trip_and_gasp_constants():
    gasp = MinMaxNormalizer(202.66, 320.93)
    kelvin = torch.tensor([202.66, 261.795, 320.93])
    assert torch.allclose(gasp.normalize(kelvin), torch.tensor([0.0, 0.5, 1.0]), atol=1e-6)
    assert torch.allclose(gasp.denormalize(gasp.normalize(kelvin)), kelvin)
    assert gasp.denormalize_std(0.1) == pytest.approx(11.827)
    fitted = MinMaxNormalizer.fit(np.array([3.0, np.nan, -1.0]))
    assert (fitted.minimum, fitted.maximum) == (-1.0, 3.0)
    with pytest.raises(ValueError):
        MinMaxNormalizer(1.0, 1.0)
    with pytest.raises(ValueError, match="no finite"):
        MinMaxNormalizer.fit(np.array([np.nan]))
