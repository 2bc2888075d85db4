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
returns results in the same form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DEFAULT_MULTIPLE",
    "padded_size",
    "VertexLayout",
    "InputForm",
    "MinMaxNormalizer",
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
    """Real vertex count ``V``, channels ``C`` and padded length ``V_pad`` of a signal space."""

    num_vertices: int
    num_channels: int = 1
    multiple: int = DEFAULT_MULTIPLE

    def __post_init__(self):
        if self.num_vertices < 1 or self.num_channels < 1:
            raise ValueError(f"need at least one vertex and one channel, got V={self.num_vertices}, C={self.num_channels}")

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

        Accepts ``(V,)`` and ``(N, V)`` (when ``C == 1``), ``(V, C)`` and ``(N, V, C)``; lat-lon
        DataArrays ``(..., latitude, longitude)`` are flattened row-major to vertices. NaN entries
        stay NaN (they mean "not observed").
        """
        kind, array, template = _as_tensor(signals)
        V, C = self.num_vertices, self.num_channels
        if template is not None and {"latitude", "longitude"} <= set(template.dims):
            array, layout = grid_to_vertices(template), "grid"
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
        if array.shape[1:] != (V, C):
            raise ValueError(f"a lat-lon grid of {array.shape[1]} points does not match the mesh's {V} vertices")
        if array.shape[0] == 0:
            raise ValueError("signals are empty (no samples)")
        form = InputForm(kind, layout, signals.dtype if kind != "numpy" else np.asarray(signals).dtype,
                         getattr(signals, "device", None), template)
        padded = torch.nn.functional.pad(array.to(dtype), (0, 0, 0, self.padded_vertices - V))
        return (padded if device is None else padded.to(device)), form

    def restore(self, batch: torch.Tensor, form: InputForm):
        """Inverse of :meth:`to_batch`: unpad ``(..., N, V_pad, C)`` and return it in the user's form.

        Leading axes before ``N`` (e.g. samples ``(n, N, V_pad, C)``) are kept in front.
        """
        values = batch.detach()[..., : self.num_vertices, :]
        if form.layout == "grid":
            return _restore_grid(values, form.template)
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


def _restore_grid(values: torch.Tensor, template):
    """``(..., V, 1)`` → DataArray shaped like ``template`` (extra leading axes become ``draw``)."""
    import xarray as xr

    n_lat, n_lon = template.sizes["latitude"], template.sizes["longitude"]
    if values.shape[-1] != 1:
        raise ValueError("a lat-lon DataArray holds one channel")
    grid = values[..., 0].reshape(*values.shape[:-2], n_lat, n_lon).cpu().numpy()
    latitude = np.asarray(template["latitude"].values)
    if latitude.size > 1 and latitude[0] < latitude[-1]:  # user's grid ran south → north
        grid = grid[..., ::-1, :]
    spatial = [d for d in template.dims if d in ("latitude", "longitude")]
    leading = [d for d in template.dims if d not in ("latitude", "longitude")]
    if not leading:  # a single (latitude, longitude) field: drop the N = 1 axis
        grid = grid[..., 0, :, :]
    dims = [f"draw_{i}" if i else "draw" for i in range(grid.ndim - 2 - len(leading))] + leading + ["latitude", "longitude"]
    coords = {name: coord for name, coord in template.coords.items() if set(coord.dims) <= set(dims)}
    out = xr.DataArray(grid, dims=dims, coords=coords, name=template.name, attrs=template.attrs)
    return out.transpose(*[d for d in dims if d not in spatial], *spatial)


@dataclass(frozen=True)
class MinMaxNormalizer:
    """Affine map ``x ↦ (x − minimum) / (maximum − minimum)`` with stored constants.

    GASP's ERA5 constants are ``MinMaxNormalizer(202.66, 320.93)`` (kelvin → [0, 1]).
    """

    minimum: float
    maximum: float

    def __post_init__(self):
        if not np.isfinite([self.minimum, self.maximum]).all() or self.maximum <= self.minimum:
            raise ValueError(f"need finite minimum < maximum, got {self.minimum}, {self.maximum}")

    @classmethod
    def fit(cls, signals) -> "MinMaxNormalizer":
        """Constants from the data's finite minimum and maximum (NaN ignored)."""
        array = np.asarray(signals.detach().cpu() if isinstance(signals, torch.Tensor) else signals, dtype=np.float64)
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            raise ValueError("cannot fit normalisation: signals have no finite values")
        low, high = float(finite.min()), float(finite.max())
        return cls(low, high if high > low else low + 1.0)

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
        return {"minimum": float(self.minimum), "maximum": float(self.maximum)}


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
