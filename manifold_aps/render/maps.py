"""Maps of lat-lon sphere fields (Cartopy) and HEALPix fields (healpy), offline and headless.

Cartopy normally downloads Natural Earth coastlines on first use, which fails offline. Maps take
the 110m coastline from the data registry instead (:func:`manifold_aps.data.natural_earth_dir`:
the ``natural_earth/`` folder of ``$MANIFOLD_APS_DATA``, else the cache, where
``manifold_aps.data.fetch(name, download=True)`` puts Natural Earth's own files) and point
``cartopy.config["pre_existing_data_dir"]`` there, so Cartopy itself never touches the network.
Should no copy exist, maps are drawn without coastlines and a warning says how to get them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["use_registry_coastlines", "plot_latlon_fields", "plot_healpix"]


def use_registry_coastlines() -> bool:
    """Point Cartopy at the registry's Natural Earth 110m coastline; False (with a warning) if there is none."""
    import warnings

    import cartopy

    from manifold_aps.data.registry import DataNotFoundError, natural_earth_dir

    try:
        folder = natural_earth_dir(("110m",))
    except DataNotFoundError as error:
        warnings.warn(f"maps drawn without coastlines: {error}", stacklevel=3)
        return False
    cartopy.config["pre_existing_data_dir"] = str(folder)
    return True


def _grid(values, shape) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if hasattr(values, "values"):
        values = np.asarray(values.values)
    if values.ndim >= 2 and values.shape[-1] == 1 and values.shape[-2] == shape[0] * shape[1]:
        values = values[..., 0]
    return values.reshape(shape)


def _projection(name: str, central_longitude: float, central_latitude: float):
    import cartopy.crs as ccrs

    if name == "robinson":
        return ccrs.Robinson(central_longitude=central_longitude)
    if name == "orthographic":
        return ccrs.Orthographic(central_longitude=central_longitude, central_latitude=central_latitude)
    raise ValueError(f"projection must be 'robinson' or 'orthographic', got {name!r}")


def plot_latlon_fields(fields: dict, latitude, longitude, path, projection: str = "robinson",
                       value_range=None, std_keys=("posterior std",), units: str = "",
                       hidden: np.ndarray | None = None, columns: int | None = None,
                       central_longitude: float = 0.0, central_latitude: float = 30.0) -> Path:
    """Draw named lat-lon fields side by side with coastlines and save a PNG.

    Arguments:
        fields: ``{title: values}`` with values ``(n_lat, n_lon)`` or ``(n_lat·n_lon,)`` in
            row-major vertex order.
        latitude, longitude: 1D grid coordinates in degrees.
        value_range: colour limits shared by all value panels (default their min/max); titles in
            ``std_keys`` share a second scale from 0 (magma).
        hidden: optional ``(n_lat·n_lon,)`` bool; panels titled ``"measurement"`` grey it out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import cartopy.crs as ccrs
    import matplotlib.pyplot as plt

    coastlines = use_registry_coastlines()
    latitude, longitude = np.asarray(latitude, dtype=float), np.asarray(longitude, dtype=float)
    shape = (latitude.size, longitude.size)
    grids = {title: _grid(values, shape) for title, values in fields.items()}
    if hidden is not None and "measurement" in grids:  # hidden entries are greyed: keep them out of the colour range
        grids["measurement"] = np.where(np.asarray(hidden).reshape(shape), np.nan, grids["measurement"])
    value_grids = [g for t, g in grids.items() if t not in std_keys]
    if value_range is None and value_grids:
        value_range = (min(float(np.nanmin(g)) for g in value_grids), max(float(np.nanmax(g)) for g in value_grids))
    std_grids = [g for t, g in grids.items() if t in std_keys]
    std_range = (0.0, max(float(np.nanmax(g)) for g in std_grids)) if std_grids else None
    columns = columns or len(grids)
    rows = -(-len(grids) // columns)
    figure = plt.figure(figsize=(4.2 * columns, 2.6 * rows * (1.4 if projection == "orthographic" else 1.0)))
    # periodic closure: append the 360° column so the map has no seam
    lon_closed = np.append(longitude, longitude[0] + 360.0)
    for index, (title, grid) in enumerate(grids.items()):
        axis = figure.add_subplot(rows, columns, index + 1,
                                  projection=_projection(projection, central_longitude, central_latitude))
        axis.set_global()
        data = np.concatenate([grid, grid[:, :1]], axis=1)
        if title == "measurement" and hidden is not None:
            data = np.ma.masked_array(data, mask=np.concatenate([hidden.reshape(shape), hidden.reshape(shape)[:, :1]], axis=1))
            axis.set_facecolor("lightgrey")
        is_std = title in std_keys
        mesh = axis.pcolormesh(lon_closed, latitude, data, transform=ccrs.PlateCarree(), shading="nearest",
                               cmap="magma" if is_std else "RdYlBu_r",
                               vmin=(std_range if is_std else value_range)[0], vmax=(std_range if is_std else value_range)[1])
        if coastlines:
            axis.coastlines(resolution="110m", linewidth=0.6)
        axis.set_title(title, fontsize=9)
        figure.colorbar(mesh, ax=axis, orientation="horizontal", shrink=0.7, pad=0.04, label=units)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_healpix(values, path, title: str = "", nest: bool = False, unit: str = "") -> Path:
    """Mollweide view of a HEALPix map (ring order unless ``nest``) with healpy, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import healpy as hp
    import matplotlib.pyplot as plt

    values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    values = values.reshape(-1).astype(np.float64)
    if not hp.isnpixok(values.size):
        raise ValueError(f"{values.size} values are not a HEALPix map (12·nside² pixels)")
    hp.mollview(values, title=title, nest=nest, unit=unit, cmap="viridis")
    hp.graticule(dpar=30, dmer=60, alpha=0.4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")
    return path
