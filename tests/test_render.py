import socket
import warnings

import matplotlib.image as mpimg
import numpy as np
import pytest

import manifold_aps as aps
from manifold_aps.render import plot_healpix, plot_latlon_fields, render_posterior
from manifold_aps.render.maps import use_registry_coastlines


def _colours(path) -> int:
    image = mpimg.imread(path)[..., :3]
    return len(np.unique((image.reshape(-1, 3) * 255).astype(np.uint8), axis=0))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during rendering")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_coastlines_come_from_the_data_mirror(mirror):
    import cartopy

    assert use_registry_coastlines()
    assert cartopy.config["pre_existing_data_dir"] == str(mirror / "natural_earth")


def test_map_without_any_coastline_copy_warns_and_still_renders(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("MANIFOLD_APS_DATA", str(tmp_path / "empty_mirror"))
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path / "empty_cache"))
    field = np.cos(np.deg2rad(aps.latlon_sphere(30.0).latitude.numpy()))
    with pytest.warns(UserWarning, match="without coastlines"):
        path = plot_latlon_fields({"truth": field}, np.linspace(90, -90, 7), np.arange(12) * 30.0, tmp_path / "m.png")
    assert path.is_file()


@pytest.mark.parametrize("projection", ["robinson", "orthographic"])
def test_latlon_map_renders_offline(mirror, tmp_path, no_network, projection):
    sphere = aps.latlon_sphere(4.0)
    field = np.cos(np.deg2rad(sphere.latitude.numpy()))
    hidden = np.random.default_rng(0).random(sphere.num_vertices) < 0.6
    path = plot_latlon_fields({"truth": field, "measurement": field, "posterior std": 0.1 * field},
                              np.linspace(90, -90, 46), np.arange(90) * 4.0, tmp_path / "map.png",
                              projection=projection, hidden=hidden)
    assert path.is_file() and _colours(path) > 50


def test_mesh_posterior_figure(tmp_path):
    sphere = aps.latlon_sphere(30.0)
    values = sphere.vertices[:, 2].numpy()[None].repeat(2, axis=0)
    observed = np.random.default_rng(1).random(values.shape) > 0.3
    path = render_posterior(sphere, tmp_path / "posterior.png", truth=values, measurement=values, observed=observed,
                            samples=np.stack([values] * 3), mean=values, std=np.abs(values))
    image = mpimg.imread(path)
    assert image.shape[0] == 2 * 260 and image.shape[1] == 7 * 260  # 2 rows × 7 panels
    assert _colours(path) > 50


def test_healpix_mollview(tmp_path):
    mesh = aps.healpix_sphere(4)
    assert _colours(plot_healpix(mesh.vertices[:, 2], tmp_path / "hp.png", title="z")) > 20
    with pytest.raises(ValueError, match="HEALPix"):
        plot_healpix(np.zeros(10), tmp_path / "bad.png")
