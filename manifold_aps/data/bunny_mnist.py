"""Bunny-MNIST: MNIST digits painted onto the 1889-vertex Stanford bunny (1 channel, values in [0, 1]).

The paper does not say how digits are painted; here every digit goes through one fixed,
geometry-aware chart on the bunny's left flank (the +z side of ``bun_zipper_res3.ply``):

- **Centre:** vertex ``CENTER_VERTEX = 647`` (≈ (−0.003, 0.088, 0.057) m, normal ≈ +z), the middle
  of the flank between the front and hind legs.
- **Coordinates:** the geodesic log map around the centre (vector heat method, Sharp et al. 2019)
  from ``potpourri3d.PointCloudHeatSolver`` on the vertices; potpourri3d's mesh solvers refuse
  this non-manifold scan, the point-cloud solver does not need a manifold.
- **Orientation:** the log map's tangent basis is arbitrary, so it is mapped (by the orthogonal
  2 × 2 map fitted on the centre's mesh neighbours) onto a frame in which image "up" is the world +y axis
  (the bunny's up) projected onto the tangent plane, and image "right" is ``up × n`` with the
  outward normal ``n``: seen from outside the bunny the digit reads upright and is not mirrored.
- **Scale:** ``PIXEL_SIZE = 0.0036`` m per MNIST pixel, so the 28 × 28 image covers a
  ≈ 10 cm geodesic square on a ≈ 15 cm bunny; 379 of the 1889 vertices can carry ink (350 do
  in at least one of the 60,000 training digits).
- **Sampling:** bilinear in the 28 × 28 image at each vertex's chart position (pixel centres at
  integer positions, row 0 at the top); vertices outside the image get 0. The sampling is a
  sparse ``(V, 784)`` matrix, so a whole split is painted with one sparse product.

Painted arrays are cached in ``cache_root()/bunny_mnist`` as uint8 (value × 255 rounded; the
MNIST source is itself uint8, so the error is ≤ 1/510) under a name that hashes the chart, so a
changed chart never reads a stale cache.

Example:
    >>> signals, labels = load_bunny_mnist("test", limit=8)  # doctest: +SKIP
    >>> signals.shape, labels.shape  # doctest: +SKIP
    (torch.Size([8, 1889, 1]), torch.Size([8]))
"""

from __future__ import annotations

import gzip
import hashlib
import numbers
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch

from manifold_aps.data.registry import cache_root, fetch
from manifold_aps.mesh import Mesh, load_mesh

__all__ = [
    "bunny",
    "CENTER_VERTEX",
    "PIXEL_SIZE",
    "DigitChart",
    "bunny_digit_chart",
    "painting_matrix",
    "paint_digits",
    "load_mnist",
    "load_bunny_mnist",
]

CENTER_VERTEX = 647
PIXEL_SIZE = 0.0036
IMAGE_SIZE = 28
WORLD_UP = (0.0, 1.0, 0.0)
_CACHE_VERSION = 1


@dataclass(frozen=True)
class DigitChart:
    """Where a 28 × 28 image lands on a mesh.

    ``pixel_coordinates`` ``(V, 2)`` holds each vertex's (column, row) position in the image,
    pixel centres at integers, row 0 at the top; ``center_vertex``, ``pixel_size`` (mesh units per
    pixel) and ``up`` (the world direction shown as image up) define it.
    """

    center_vertex: int
    pixel_size: float
    up: tuple[float, float, float]
    pixel_coordinates: np.ndarray

    @property
    def inside(self) -> np.ndarray:
        """``(V,)`` bool: the vertex's bilinear stencil touches the image (it can carry ink).

        That is ``−1 < column, row < 28``: within one pixel of the outermost pixel centres.
        """
        return ((self.pixel_coordinates > -1) & (self.pixel_coordinates < IMAGE_SIZE)).all(axis=1)


def bunny() -> Mesh:
    """The 1889-vertex Stanford bunny (``bun_zipper_res3.ply``) found through the data registry."""
    return load_mesh(fetch("bunny_res3"), name="bunny")


def bunny_digit_chart(mesh=None, center_vertex: int = CENTER_VERTEX, pixel_size: float = PIXEL_SIZE,
                      up=WORLD_UP) -> DigitChart:
    """The chart of the module docstring on ``mesh`` (default :func:`manifold_aps.bunny`)."""
    import potpourri3d as pp3d

    mesh = bunny() if mesh is None else mesh
    vertices = mesh.vertices.detach().cpu().numpy().astype(np.float64)
    faces = mesh.faces.detach().cpu().numpy()
    if not 0 <= center_vertex < len(vertices):
        raise ValueError(f"center_vertex {center_vertex} is not a vertex of a {len(vertices)}-vertex mesh")
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be positive, got {pixel_size}")
    log_map = pp3d.PointCloudHeatSolver(vertices).compute_log_map(center_vertex)
    normal = _vertex_normal(vertices, faces, center_vertex)
    up_vector = np.asarray(up, dtype=np.float64)
    up_tangent = up_vector - normal * (up_vector @ normal)
    if np.linalg.norm(up_tangent) < 1e-6:
        raise ValueError("the 'up' direction is parallel to the surface normal at the centre vertex")
    up_tangent /= np.linalg.norm(up_tangent)
    right = np.cross(up_tangent, normal)
    rotation = _log_map_rotation(vertices, mesh.edge_index.cpu().numpy(), center_vertex, log_map, right, up_tangent)
    right_up = log_map @ rotation.T / pixel_size
    middle = (IMAGE_SIZE - 1) / 2
    pixel_coordinates = np.stack([middle + right_up[:, 0], middle - right_up[:, 1]], axis=1)
    return DigitChart(int(center_vertex), float(pixel_size), tuple(float(u) for u in up), pixel_coordinates)


def _vertex_normal(vertices: np.ndarray, faces: np.ndarray, vertex: int) -> np.ndarray:
    """Area-weighted normal of the faces around ``vertex`` (face winding of the scan is outward)."""
    around = faces[(faces == vertex).any(axis=1)]
    if len(around) == 0:
        raise ValueError(f"vertex {vertex} belongs to no face, so it has no normal")
    normal = np.cross(vertices[around[:, 1]] - vertices[around[:, 0]], vertices[around[:, 2]] - vertices[around[:, 0]]).sum(axis=0)
    return normal / np.linalg.norm(normal)


def _log_map_rotation(vertices, edge_index, center, log_map, right, up) -> np.ndarray:
    """The 2 × 2 orthogonal map taking log-map coordinates to (right, up) coordinates.

    Near the centre the log map is the tangent-plane projection in potpourri3d's own basis; a
    least-squares fit on the one- and two-ring neighbours, projected to the nearest orthogonal
    matrix (polar decomposition), recovers that basis. The result is a reflection when the log
    map's basis has the other handedness, which is what keeps the digit from being mirrored.
    """
    ring = set(edge_index[1][edge_index[0] == center].tolist())
    ring |= set(edge_index[1][np.isin(edge_index[0], list(ring))].tolist())
    ring.discard(center)
    ring = np.array(sorted(ring))
    offsets = vertices[ring] - vertices[center]
    target = np.stack([offsets @ right, offsets @ up], axis=1)
    fit, *_ = np.linalg.lstsq(log_map[ring], target, rcond=None)  # target ≈ log_map @ fit
    left, _, right_factor = np.linalg.svd(fit.T)
    return left @ right_factor


def painting_matrix(chart: DigitChart) -> sp.csr_matrix:
    """Sparse ``(V, 784)`` bilinear sampling matrix: ``painted = matrix @ image.ravel()``.

    Vertex ``v`` at image position ``(c, r)`` reads the four pixels around it with weights
    ``(1 − a)(1 − b), a(1 − b), (1 − a) b, a b`` (``a, b`` the fractional parts); pixels beyond the
    border count as 0 (MNIST's background), so ink fades out at the image edge.
    """
    column, row = chart.pixel_coordinates[:, 0], chart.pixel_coordinates[:, 1]
    column0, row0 = np.floor(column).astype(np.int64), np.floor(row).astype(np.int64)
    fraction_c, fraction_r = column - column0, row - row0
    rows, columns, weights = [], [], []
    for d_row, d_col, weight in ((0, 0, (1 - fraction_r) * (1 - fraction_c)), (0, 1, (1 - fraction_r) * fraction_c),
                                 (1, 0, fraction_r * (1 - fraction_c)), (1, 1, fraction_r * fraction_c)):
        pixel_row, pixel_col = row0 + d_row, column0 + d_col
        valid = (pixel_row >= 0) & (pixel_row < IMAGE_SIZE) & (pixel_col >= 0) & (pixel_col < IMAGE_SIZE) & (weight > 0)
        rows.append(np.flatnonzero(valid))
        columns.append(pixel_row[valid] * IMAGE_SIZE + pixel_col[valid])
        weights.append(weight[valid])
    num_vertices = len(column)
    return sp.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(columns))),
                         shape=(num_vertices, IMAGE_SIZE * IMAGE_SIZE))


def paint_digits(images, matrix: sp.csr_matrix) -> np.ndarray:
    """``(N, 28, 28)`` images (uint8 0…255 or float in [0, 1]) → ``(N, V)`` float32 in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be (N, 28, 28), got {images.shape}")
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    flat = images.reshape(len(images), -1).astype(np.float32) * np.float32(scale)
    return np.asarray((matrix @ flat.T).T, dtype=np.float32)


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``(images (N, 28, 28) uint8, labels (N,) uint8)`` in official order from the registry."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    arrays = []
    for kind in ("images", "labels"):
        with gzip.open(fetch(f"mnist_{split}_{kind}")) as handle:
            arrays.append(np.load(handle, allow_pickle=False))
    return arrays[0], arrays[1]


@lru_cache(maxsize=1)
def _default_chart() -> DigitChart:
    return bunny_digit_chart()


def _cache_path(split: str, chart: DigitChart):
    key = hashlib.sha256(
        np.round(chart.pixel_coordinates, 6).tobytes() + repr((chart.center_vertex, chart.pixel_size, chart.up, _CACHE_VERSION)).encode()
    ).hexdigest()[:16]
    return cache_root() / "bunny_mnist" / f"{split}_{key}.npy"


def load_bunny_mnist(split: str = "train", limit: int | None = None, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Bunny-MNIST signals ``(N, 1889, 1)`` float32 in [0, 1] and labels ``(N,)`` int64.

    Arguments:
        split: ``"train"`` (60,000 digits) or ``"test"`` (10,000).
        limit: keep the first ``limit`` digits. Without a cache, only those are painted (and
            nothing is cached); the full split is painted and cached otherwise.
        use_cache: read/write the uint8 cache in ``cache_root()/bunny_mnist``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)):
        raise TypeError(f"limit must be an integer number of digits or None, got {type(limit).__name__} {limit!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of digits, got {limit}")
    images, labels = load_mnist(split)
    if limit is not None:
        labels = labels[:limit]
    chart = _default_chart()
    path = _cache_path(split, chart)
    if use_cache and path.is_file():
        quantised = np.load(path, mmap_mode="r")[: len(labels)]
    else:
        painted = paint_digits(images[: len(labels)], painting_matrix(chart))
        quantised = np.rint(painted * 255.0).astype(np.uint8)
        if use_cache and limit is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp.npy")
            np.save(partial, quantised)
            partial.replace(path)  # atomic: a reader never sees a half-written cache
    signals = torch.from_numpy(np.asarray(quantised, dtype=np.float32) / np.float32(255.0))
    return signals[..., None], torch.from_numpy(labels.astype(np.int64))
