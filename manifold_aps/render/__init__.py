"""Headless figures: PyVista for meshes, Cartopy for lat-lon sphere fields, healpy for HEALPix."""

from manifold_aps.render.maps import plot_healpix, plot_latlon_fields, use_registry_coastlines
from manifold_aps.render.meshes import camera_for, render_posterior, render_signals

__all__ = ["render_posterior", "render_signals", "camera_for", "plot_latlon_fields", "plot_healpix",
           "use_registry_coastlines"]
