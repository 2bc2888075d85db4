"""Signals on mesh vertices: ``(V, C)`` tensors, padded batches, normalisation, array conversion.

Networks see batches ``(B, V_pad, C)`` (flattened to ``(B, V_pad * C)`` for flows and priors),
where ``V_pad`` is ``V`` rounded up to :data:`DEFAULT_MULTIPLE`. Padded vertices are zero, never
observed and never scored; the ``vertex_mask`` of a :class:`VertexLayout` says which are real.

``DEFAULT_MULTIPLE = 32``: the flattened vector splits into equal halves for the coupling layers
and a 1D U-Net can halve the vertex axis five times. The 4° sphere gets 4140 → 4160 (as in the
paper); the 1889-vertex bunny gets 1920 (the paper used 1888 by dropping the last vertex; we keep
all 1889 real vertices and add 31 padding vertices instead).

Users never see padding: :meth:`VertexLayout.to_batch` accepts ``(V,)``, ``(V, C)`` or
``(N, V, C)`` numpy arrays, torch tensors or xarray DataArrays, and :meth:`VertexLayout.restore`
returns results in the same form. A lat-lon DataArray is matched to the mesh's :class:`LatLonGrid`
by coordinate values and dimension names, never by shape.

Physical units: a :class:`MinMaxNormalizer` may name the units of the data it was fitted on;
:func:`convert_units` converts a user's values to them (exact conversions only) and
:func:`warn_outside_training_range` flags inputs far from anything seen in training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DEFAULT_MULTIPLE",
    "padded_size",
    "VertexLayout",
    "InputForm",
    "LatLonGrid",
    "latlon_grid",
    "latlon_dims",
    "latlon_field",
    "MinMaxNormalizer",
    "CELSIUS_ZERO_IN_KELVIN",
    "convert_units",
    "warn_outside_training_range",
    "grid_to_vertices",
    "vertices_to_grid",
]

#: Vertex counts are padded up to a multiple of this (see the module docstring).
DEFAULT_MULTIPLE = 32


def padded_size(num_vertices: int, multiple: int = DEFAULT_MULTIPLE) -> int:
    """Smallest multiple of ``multiple`` that is ≥ ``num_vertices``."""
    if num_vertices < 1 or multiple < 1:
        raise ValueError(f"num_vertices and multiple must be positive, got {num_vertices}, {multiple}")
    return -(-num_vertices // multiple) * multiple


# -- lat-lon grids ---------------------------------------------------------------------------------
_LATITUDE_NAMES = ("latitude", "lat")
_LONGITUDE_NAMES = ("longitude", "lon")
#: degrees; files store float32 copies of a grid's exact coordinates
_COORDINATE_TOLERANCE = 1e-4


def latlon_dims(array) -> tuple[str, str] | None:
    """Names of the latitude and longitude dimensions of a DataArray (``latitude``/``lat`` and
    ``longitude``/``lon``), or None when it lacks either."""
    latitude = next((name for name in _LATITUDE_NAMES if name in array.dims), None)
    longitude = next((name for name in _LONGITUDE_NAMES if name in array.dims), None)
    return None if latitude is None or longitude is None else (latitude, longitude)


def latlon_field(data, variable: str | None = None, candidates: tuple[str, ...] = ()):
    """One field of ``data`` as a DataArray whose grid dimensions are named ``latitude``/``longitude``.

    Arguments:
        data: an ``xarray.Dataset`` or DataArray with dimensions ``latitude``/``lat`` and
            ``longitude``/``lon`` (renamed to the long names).
        variable: the Dataset variable to take (ignored for a DataArray).
        candidates: names tried in order when ``variable`` is None, e.g. ERA5's ``("t2m", "2t")``.

    Example:
        >>> t2m = latlon_field(xr.open_dataset("era5.nc"), candidates=("t2m", "2t"))  # doctest: +SKIP

    Raises:
        ValueError: no such variable, or a missing latitude/longitude dimension.
    """
    import xarray as xr

    if isinstance(data, xr.Dataset):
        if variable is None:
            found = [name for name in candidates if name in data.data_vars]
            if not found:
                raise ValueError(f"no variable among {list(data.data_vars)} is one of {tuple(candidates)}; pass variable=")
            variable = found[0]
        elif variable not in data.data_vars:
            raise ValueError(f"variable {variable!r} not in the dataset (has {list(data.data_vars)})")
        data = data[variable]
    for standard, aliases in ((_LATITUDE_NAMES[0], _LATITUDE_NAMES), (_LONGITUDE_NAMES[0], _LONGITUDE_NAMES)):
        present = [name for name in aliases if name in data.dims]
        if not present:
            raise ValueError(f"no {standard} dimension: expected one of {aliases}, got dims {data.dims}")
        if present[0] != standard:
            data = data.rename({present[0]: standard})
    return data


@dataclass(frozen=True)
class LatLonGrid:
    """The latitude rows and longitude columns (degrees) of a lat-lon mesh, in its vertex order.

    Vertex ``i * len(longitude) + j`` sits at ``(latitude[i], longitude[j])``, the row-major order
    of :func:`manifold_aps.latlon_sphere`. A DataArray is matched to the grid by coordinate values
    (:meth:`to_vertices`), so dimension order, latitude direction and the longitude convention
    (0…360 or −180…180) of the caller's data do not matter.

    Example:
        >>> grid = LatLonGrid.with_vertices(4140)  # the 4° grid of latlon_sphere(4.0)
        >>> len(grid.latitude), len(grid.longitude)
        (46, 90)
    """

    latitude: tuple[float, ...]
    longitude: tuple[float, ...]

    def __post_init__(self):
        for name in ("latitude", "longitude"):
            values = tuple(float(value) for value in np.asarray(getattr(self, name), dtype=np.float64).ravel())
            if not values or not np.isfinite(values).all():
                raise ValueError(f"a lat-lon grid needs finite {name}s, got {values[:5]}")
            object.__setattr__(self, name, values)

    @property
    def num_vertices(self) -> int:
        return len(self.latitude) * len(self.longitude)

    @classmethod
    def with_vertices(cls, num_vertices: int) -> "LatLonGrid | None":
        """The grid of :func:`manifold_aps.latlon_sphere` that has ``num_vertices`` vertices
        (``n_lon · (n_lon / 2 + 1)``), or None when no resolution gives that count."""
        n_lon = math.isqrt(1 + 2 * num_vertices) - 1
        if n_lon < 2 or n_lon % 2 or n_lon * (n_lon // 2 + 1) != num_vertices:
            return None
        return cls(np.linspace(90.0, -90.0, n_lon // 2 + 1), np.arange(n_lon) * (360.0 / n_lon))

    def to_vertices(self, array) -> torch.Tensor:
        """``(N, V, 1)`` values of a lat-lon DataArray in this grid's vertex order.

        The DataArray's points are matched to the grid's by coordinate values; every dimension
        besides latitude and longitude is flattened (row-major) into ``N``.

        Raises:
            ValueError: the DataArray lacks latitude/longitude dimensions, or its points are not
                exactly this grid's (the message says how to regrid).
        """
        names = latlon_dims(array)
        if names is None:
            raise ValueError(f"a lat-lon DataArray needs latitude/lat and longitude/lon dimensions, got {array.dims}")
        rows, columns = self._positions(array, *names)
        leading = [dim for dim in array.dims if dim not in names]
        values = np.asarray(array.transpose(*leading, *names).values)[..., rows, :][..., columns]
        return torch.as_tensor(np.ascontiguousarray(values)).reshape(-1, self.num_vertices, 1)

    def to_data_array(self, values: torch.Tensor, template):
        """Inverse of :meth:`to_vertices`: ``(..., N, V, 1)`` → a DataArray with ``template``'s
        coordinates, dimension order, name and attrs; extra leading axes become ``draw``, ``draw_1``, …"""
        import xarray as xr

        if values.shape[-1] != 1:
            raise ValueError(f"a lat-lon DataArray holds one channel, got {values.shape[-1]}")
        names = latlon_dims(template)
        rows, columns = self._positions(template, *names)
        leading = [dim for dim in template.dims if dim not in names]
        leading_shape = [template.sizes[dim] for dim in leading]
        if values.shape[-3] != math.prod(leading_shape):
            raise ValueError(f"{values.shape[-3]} fields do not fill the DataArray's {dict(zip(leading, leading_shape))}")
        extra = values.shape[:-3]
        grid = values[..., 0].reshape(*extra, *leading_shape, len(self.latitude), len(self.longitude)).cpu().numpy()
        grid = grid[..., np.argsort(rows), :][..., np.argsort(columns)]  # back to the caller's point order
        draws = [f"draw_{i}" if i else "draw" for i in range(len(extra))]
        dims = draws + leading + list(names)
        coords = {name: coord for name, coord in template.coords.items() if set(coord.dims) <= set(dims)}
        out = xr.DataArray(grid, dims=dims, coords=coords, name=template.name, attrs=dict(template.attrs))
        return out.transpose(*draws, *template.dims)

    def _positions(self, array, latitude_name: str, longitude_name: str) -> tuple[np.ndarray, np.ndarray]:
        """For each grid row and column, its index along the DataArray's latitude / longitude axis."""
        rows = _match_coordinates(array[latitude_name].values, self.latitude, periodic=False)
        columns = _match_coordinates(array[longitude_name].values, self.longitude, periodic=True)
        if rows is None or columns is None:
            raise ValueError(self._mismatch(array, latitude_name, longitude_name))
        return rows, columns

    def _mismatch(self, array, latitude_name: str, longitude_name: str) -> str:
        given_lat = np.asarray(array[latitude_name].values, dtype=np.float64)
        given_lon = np.asarray(array[longitude_name].values, dtype=np.float64)
        wrap = (f" (wrap its longitudes first: da = da.assign_coords({longitude_name}=da.{longitude_name} % 360)"
                f".sortby('{longitude_name}'))") if (given_lon < 0).any() else ""
        return (f"the DataArray's grid ({_describe(given_lat)} {latitude_name}, {_describe(given_lon)} {longitude_name}) "
                f"is not the model's grid ({_describe(self.latitude)} latitude, {_describe(self.longitude)} longitude); "
                f"points are matched by coordinate values. Regrid it to the model's points first, e.g. "
                f"da.interp({latitude_name}={_expression(self.latitude, 'latitude')}, "
                f"{longitude_name}={_expression(self.longitude, 'longitude')}){wrap}")


def _match_coordinates(given, wanted, periodic: bool) -> np.ndarray | None:
    """Index into ``given`` of each value of ``wanted`` (longitudes modulo 360), or None unless
    ``given`` holds exactly the wanted values, each once."""
    given, wanted = np.asarray(given, dtype=np.float64).ravel(), np.asarray(wanted, dtype=np.float64)
    if given.shape != wanted.shape:
        return None
    difference = given[None, :] - wanted[:, None]
    if periodic:
        difference = (difference + 180.0) % 360.0 - 180.0
    close = np.abs(difference) <= _COORDINATE_TOLERANCE
    if not (close.sum(axis=1) == 1).all() or not (close.sum(axis=0) == 1).all():
        return None
    return close.argmax(axis=1)


def _describe(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.size} values {values[0]:g} … {values[-1]:g}" if values.size else "no values"


def _expression(values, name: str) -> str:
    """A numpy expression for evenly spaced coordinates, else where to read them."""
    values = np.asarray(values, dtype=np.float64)
    if values.size > 1 and np.allclose(np.diff(values), values[1] - values[0], atol=_COORDINATE_TOLERANCE):
        return f"np.linspace({values[0]:g}, {values[-1]:g}, {values.size})"
    return f"layout.grid.{name}"


def latlon_grid(mesh) -> LatLonGrid | None:
    """The lat-lon grid that ``mesh``'s vertices form, or None.

    A mesh is a grid when ``mesh.latitude`` / ``mesh.longitude`` are set and its vertices run
    row-major over (latitude, longitude), as :func:`manifold_aps.latlon_sphere` builds them; a
    HEALPix sphere or a surface mesh gives None.
    """
    if getattr(mesh, "latitude", None) is None or getattr(mesh, "longitude", None) is None:
        return None
    latitude = np.asarray(mesh.latitude.cpu(), dtype=np.float64)
    longitude = np.asarray(mesh.longitude.cpu(), dtype=np.float64)
    row_length = int(np.argmax(latitude != latitude[0])) or latitude.size
    if latitude.size % row_length:
        return None
    latitude, longitude = latitude.reshape(-1, row_length), longitude.reshape(-1, row_length)
    if not ((latitude == latitude[:, :1]).all() and (longitude == longitude[:1]).all()):
        return None
    return LatLonGrid(latitude[:, 0], longitude[0])


@dataclass(frozen=True)
class InputForm:
    """How a user's signal array looked, so results can be returned in the same form.

    ``layout`` is one of ``"V"``, ``"VC"``, ``"NV"``, ``"NVC"`` or ``"grid"`` (a lat-lon DataArray).
    """

    kind: str  # "numpy" | "torch" | "xarray"
    layout: str
    dtype: object
    device: object = None
    template: object = None  # the DataArray for kind == "xarray"

@dataclass(frozen=True)
class VertexLayout:
    """Real vertex count ``V``, channels ``C`` and padded length ``V_pad`` of a signal space.

    ``grid`` is the mesh's :class:`LatLonGrid` (see :func:`latlon_grid`) when the mesh is a lat-lon
    grid; lat-lon DataArrays are matched to it. It may be given as its plain-value form
    ``{"latitude": [...], "longitude": [...]}`` (what ``dataclasses.asdict`` stores in checkpoints).
    Layouts saved before grids were stored read DataArrays on the :func:`manifold_aps.latlon_sphere`
    grid that has ``V`` vertices.
    """

    num_vertices: int
    num_channels: int = 1
    multiple: int = DEFAULT_MULTIPLE
    grid: LatLonGrid | None = None

    def __post_init__(self):
        if self.num_vertices < 1 or self.num_channels < 1:
            raise ValueError(f"need at least one vertex and one channel, got V={self.num_vertices}, C={self.num_channels}")
        if isinstance(self.grid, dict):
            object.__setattr__(self, "grid", LatLonGrid(**self.grid))
        if self.grid is not None and self.grid.num_vertices != self.num_vertices:
            raise ValueError(f"a {len(self.grid.latitude)}×{len(self.grid.longitude)} lat-lon grid does not have "
                             f"V={self.num_vertices} vertices")

    @property
    def padded_vertices(self) -> int:
        return padded_size(self.num_vertices, self.multiple)

    @property
    def dim(self) -> int:
        """Length of the flattened vector ``V_pad * C`` that flows and priors see."""
        return self.padded_vertices * self.num_channels

    def vertex_mask(self, device=None) -> torch.Tensor:
        """``(V_pad,)`` bool, True on the real vertices."""
        mask = torch.zeros(self.padded_vertices, dtype=torch.bool, device=device)
        mask[: self.num_vertices] = True
        return mask

    def pad(self, signals: torch.Tensor) -> torch.Tensor:
        """``(B, V, C)`` → ``(B, V_pad, C)`` with zeros on the padding vertices."""
        self._check_unpadded(signals)
        extra = self.padded_vertices - self.num_vertices
        return torch.nn.functional.pad(signals, (0, 0, 0, extra))

    def unpad(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, V_pad, C)`` or ``(B, V_pad * C)`` → ``(B, V, C)``."""
        if batch.dim() == 2:
            batch = batch.reshape(batch.shape[0], self.padded_vertices, self.num_channels)
        return batch[:, : self.num_vertices]

    def flatten(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, V_pad, C)`` → ``(B, V_pad * C)`` (vertex-major, channels fastest)."""
        return batch.reshape(batch.shape[0], self.dim)

    def unflatten(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors.reshape(vectors.shape[0], self.padded_vertices, self.num_channels)

    def _check_unpadded(self, signals: torch.Tensor):
        if signals.dim() != 3 or signals.shape[1:] != (self.num_vertices, self.num_channels):
            raise ValueError(
                f"expected signals of shape (N, {self.num_vertices}, {self.num_channels}), got {tuple(signals.shape)}"
            )

    def to_batch(self, signals, dtype=torch.float32, device=None) -> tuple[torch.Tensor, InputForm]:
        """Convert a user's array to a padded float batch ``(N, V_pad, C)`` and remember its form.

        Accepts ``(V,)`` and ``(N, V)`` (when ``C == 1``), ``(V, C)`` and ``(N, V, C)``. A DataArray
        with latitude/lat and longitude/lon dimensions is matched to :attr:`grid` by coordinate
        values (any dimension order, either latitude direction, 0…360 or −180…180 longitudes; the
        other dimensions become ``N``); a different grid is refused with how to regrid. NaN
        entries stay NaN (they mean "not observed").
        """
        kind, array, template = _as_tensor(signals)
        V, C = self.num_vertices, self.num_channels
        if template is not None and latlon_dims(template) is not None:
            if C != 1:
                raise ValueError(f"a lat-lon DataArray holds one channel, the model has C={C}")
            array, layout = self.latlon_grid().to_vertices(template), "grid"
        elif array.dim() == 1 and C == 1 and array.shape[0] == V:
            array, layout = array.reshape(1, V, 1), "V"
        elif array.dim() == 2 and array.shape == (V, C):
            array, layout = array.reshape(1, V, C), "VC"
        elif array.dim() == 2 and C == 1 and array.shape[1] == V:
            array, layout = array.reshape(-1, V, 1), "NV"
        elif array.dim() == 3 and array.shape[1:] == (V, C):
            layout = "NVC"
        else:
            raise ValueError(
                f"signals of shape {tuple(array.shape)} do not fit this mesh: expected (V,), (V, C), (N, V) or "
                f"(N, V, C) with V={V} vertices and C={C} channels"
            )
        if array.shape[0] == 0:
            raise ValueError("signals are empty (no samples)")
        form = InputForm(kind, layout, signals.dtype if kind != "numpy" else np.asarray(signals).dtype,
                         getattr(signals, "device", None), template)
        padded = torch.nn.functional.pad(array.to(dtype), (0, 0, 0, self.padded_vertices - V))
        return (padded if device is None else padded.to(device)), form

    def restore(self, batch: torch.Tensor, form: InputForm):
        """Inverse of :meth:`to_batch`: unpad ``(..., N, V_pad, C)`` and return it in the user's form.

        Leading axes before ``N`` (e.g. samples ``(n, N, V_pad, C)``) are kept in front. A lat-lon
        DataArray comes back with the caller's coordinates, dimension order, name and attrs.
        """
        values = batch.detach()[..., : self.num_vertices, :]
        if form.layout == "grid":
            return self.latlon_grid().to_data_array(values, form.template)
        if form.layout in ("V", "VC"):
            values = values[..., 0, :, :]
        if form.layout in ("V", "NV"):
            values = values[..., 0]
        if form.kind == "torch":
            return values.to(device=form.device, dtype=form.dtype)
        array = values.cpu().numpy()
        if form.kind == "numpy":
            return array.astype(form.dtype if np.dtype(form.dtype).kind == "f" else np.float32, copy=False)
        import xarray as xr

        return xr.DataArray(array)

    def latlon_grid(self) -> LatLonGrid:
        """:attr:`grid`, or for a layout without one the ``latlon_sphere`` grid with ``V`` vertices.

        Raises:
            ValueError: neither exists (the mesh is not a lat-lon grid).
        """
        grid = self.grid or LatLonGrid.with_vertices(self.num_vertices)
        if grid is None:
            raise ValueError(f"this model's {self.num_vertices}-vertex mesh is not a lat-lon grid: pass the signals in "
                             f"vertex order as (V,), (N, V) or (N, V, C) arrays instead of a lat-lon DataArray")
        return grid


def _as_tensor(signals):
    """``(kind, tensor, DataArray or None)`` for a numpy array, torch tensor or DataArray."""
    if isinstance(signals, torch.Tensor):
        if not (signals.is_floating_point() or signals.dtype in _INTEGER_DTYPES):
            raise TypeError(f"signals must be real numbers, got dtype {signals.dtype}")
        return "torch", signals.detach(), None
    if signals is None or isinstance(signals, (str, bytes)):  # np.asarray would make a 0-d array of them
        raise TypeError(f"signals must be a numpy array, torch tensor or xarray.DataArray of numbers, "
                        f"got {type(signals).__name__}")
    import xarray as xr

    if isinstance(signals, xr.DataArray):
        array = np.ascontiguousarray(signals.values)
        _check_numeric(array)
        return "xarray", torch.as_tensor(array), signals
    try:
        array = np.ascontiguousarray(signals)
    except Exception as error:
        raise TypeError(f"signals must be a numpy array, torch tensor or xarray.DataArray of numbers; could not "
                        f"convert the {type(signals).__name__} ({error})") from error
    _check_numeric(array)
    return "numpy", torch.as_tensor(array), None


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def _check_numeric(array: np.ndarray):
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise TypeError(f"signals must be real numbers, got an array of dtype {array.dtype}")


@dataclass(frozen=True)
class MinMaxNormalizer:
    """Affine map ``x ↦ (x − minimum) / (maximum − minimum)`` with stored constants.

    ``units`` names the physical units of ``x`` (e.g. ``"K"``) when known; it is saved and loaded
    with the constants (:meth:`state_dict`, ``MinMaxNormalizer(**state)``). GASP's ERA5 constants
    are ``MinMaxNormalizer(202.66, 320.93, "K")`` (kelvin → [0, 1]).
    """

    minimum: float
    maximum: float
    units: str | None = None

    def __post_init__(self):
        if not np.isfinite([self.minimum, self.maximum]).all() or self.maximum <= self.minimum:
            raise ValueError(f"need finite minimum < maximum, got {self.minimum}, {self.maximum}")

    @classmethod
    def fit(cls, signals, units: str | None = None) -> "MinMaxNormalizer":
        """Constants from the data's finite minimum and maximum (NaN ignored); ``units`` default to
        a DataArray's ``attrs["units"]``."""
        if units is None:
            units = getattr(signals, "attrs", {}).get("units")
        array = np.asarray(signals.detach().cpu() if isinstance(signals, torch.Tensor) else signals, dtype=np.float64)
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            raise ValueError("cannot fit normalisation: signals have no finite values")
        low, high = float(finite.min()), float(finite.max())
        return cls(low, high if high > low else low + 1.0, units)

    @property
    def scale(self) -> float:
        return self.maximum - self.minimum

    def normalize(self, x):
        return (x - self.minimum) / self.scale

    def denormalize(self, x):
        return x * self.scale + self.minimum

    def denormalize_std(self, std):
        """Standard deviations scale without the offset."""
        return std * self.scale

    def state_dict(self) -> dict:
        return {"minimum": float(self.minimum), "maximum": float(self.maximum), "units": self.units}


# -- physical units ----------------------------------------------------------------------------------
#: kelvin minus degrees Celsius
CELSIUS_ZERO_IN_KELVIN = 273.15
_KELVIN = {"k", "kelvin", "degk", "deg_k", "degrees_k", "degree_kelvin", "degrees_kelvin"}
_CELSIUS = {"°c", "degc", "deg_c", "celsius", "degrees_c", "degree_celsius", "degrees_celsius"}


def _temperature_scale(units: str) -> str | None:
    name = units.strip().lower().replace(" ", "_")
    return "K" if name in _KELVIN else "degC" if name in _CELSIUS else None


def convert_units(values, source: str | None, target: str | None):
    """``values`` given in ``source`` units, expressed in ``target`` units.

    Only exact conversions are made: kelvin (``K``, ``kelvin``) ↔ degrees Celsius (``°C``,
    ``degC``, ``deg_C``, ``Celsius``; any case), an offset of 273.15. Standard deviations need no
    conversion between these. Equal units, or None on either side (units not known), return
    ``values`` unchanged. Works on numbers, numpy arrays, tensors and DataArrays.

    Example:
        >>> convert_units(np.array([0.0, 25.0]), "degC", "K")
        array([273.15, 298.15])

    Raises:
        ValueError: the units differ and are not kelvin and Celsius (the message names both).
    """
    if source is None or target is None or source.strip() == target.strip():
        return values
    scales = _temperature_scale(source), _temperature_scale(target)
    if scales == ("degC", "K"):
        return values + CELSIUS_ZERO_IN_KELVIN
    if scales == ("K", "degC"):
        return values - CELSIUS_ZERO_IN_KELVIN
    if scales[0] is not None and scales[0] == scales[1]:  # two spellings of one unit
        return values
    raise ValueError(f"cannot convert values in {source!r} to {target!r}: only kelvin <-> degrees Celsius is converted "
                     f"automatically; convert the data to {target!r} first")


NOISE_SIGMAS = 6.0
"""Measurement noise beyond the training range that :func:`warn_outside_training_range` allows, in σ_y:
Gaussian noise strays that far from its mean in about 2 of 10⁹ values."""


def warn_outside_training_range(values, normalizer: MinMaxNormalizer, margin: float = 0.25,
                                noise_std: float = 0.0) -> None:
    """Warn when finite ``values`` (in the normaliser's units) reach more than ``margin`` times the
    training span plus ``NOISE_SIGMAS · noise_std`` beyond ``[normalizer.minimum, normalizer.maximum]``:
    wrong units, or another variable? ``noise_std`` is the measurement noise in the same units, which
    carries measured values past the range that clean signals span."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    slack = margin * normalizer.scale + NOISE_SIGMAS * noise_std
    if low < normalizer.minimum - slack or high > normalizer.maximum + slack:
        units = f" {normalizer.units}" if normalizer.units else ""
        warnings.warn(f"input values span {low:.4g} … {high:.4g}{units}, far outside the training range "
                      f"{normalizer.minimum:.4g} … {normalizer.maximum:.4g}{units}; check the units and the variable",
                      UserWarning, stacklevel=2)


def grid_to_vertices(grid) -> torch.Tensor:
    """A lat-lon DataArray ``(..., latitude, longitude)`` → ``(N, V, 1)`` in row-major vertex order.

    Latitudes must run north → south as in :func:`manifold_aps.latlon_sphere`; a south → north
    grid is flipped first.
    """
    if grid.dims[-2:] != ("latitude", "longitude"):
        grid = grid.transpose(..., "latitude", "longitude")
    latitude = np.asarray(grid["latitude"].values)
    if latitude.size > 1 and latitude[0] < latitude[-1]:
        grid = grid.isel(latitude=slice(None, None, -1))
    values = torch.as_tensor(np.ascontiguousarray(grid.values))
    n_lat, n_lon = values.shape[-2:]
    return values.reshape(-1, n_lat * n_lon, 1)


def vertices_to_grid(signals, latitude, longitude, dim: str = "sample", name: str | None = None):
    """``(N, V)`` / ``(N, V, 1)`` / ``(V,)`` vertex signals → DataArray ``(sample, latitude, longitude)``."""
    import xarray as xr

    array = signals.detach().cpu().numpy() if isinstance(signals, torch.Tensor) else np.asarray(signals)
    latitude, longitude = np.asarray(latitude), np.asarray(longitude)
    if array.ndim == 3:
        if array.shape[-1] != 1:
            raise ValueError(f"a lat-lon DataArray holds one channel, got {array.shape[-1]}")
        array = array[..., 0]
    if array.shape[-1] != latitude.size * longitude.size:
        raise ValueError(f"{array.shape[-1]} vertices do not fill a {latitude.size}×{longitude.size} grid")
    coords = {"latitude": latitude, "longitude": longitude}
    if array.ndim == 1:
        return xr.DataArray(array.reshape(latitude.size, longitude.size), dims=("latitude", "longitude"), coords=coords, name=name)
    grid = array.reshape(array.shape[0], latitude.size, longitude.size)
    return xr.DataArray(grid, dims=(dim, "latitude", "longitude"), coords=coords, name=name)
