"""Triangle meshes that carry signals: geometry, graph connectivity and the Laplacian.

A :class:`Mesh` is the first station of the data path. It keeps the vertex order of its source
file, because a signal is laid out per vertex: vertex ``i`` of the mesh is entry ``i`` of every
signal on it.

Example:
    >>> import manifold_aps as aps
    >>> sphere = aps.latlon_sphere(4.0)
    >>> sphere.num_vertices, tuple(sphere.edge_index.shape)[0]
    (4140, 2)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Mesh", "load_mesh", "latlon_sphere", "healpix_sphere", "torus"]


class Mesh:
    """A triangle mesh with the per-vertex quantities signals and networks need.

    Arguments:
        vertices: ``(V, 3)`` vertex positions.
        faces: ``(F, 3)`` vertex indices of the triangles (may be ``(0, 3)`` only for point sets
            built by :func:`healpix_sphere`, which pass ``edge_index`` explicitly).
        edge_index: optional ``(2, E)`` undirected edge list (both directions). Derived from the
            faces when omitted.
        latitude, longitude: optional ``(V,)`` coordinates in degrees for sphere grids.
        name: a label used in renders and checkpoints.

    Attributes ``vertices`` (float64), ``faces`` (int64), ``edge_index`` (int64) and the optional
    ``latitude``/``longitude`` are torch tensors and follow :meth:`to`. The Laplacian is a
    ``scipy.sparse`` matrix (geometry is CPU work); :meth:`laplacian_tensor` gives a torch copy.
    """

    def __init__(
        self,
        vertices,
        faces,
        edge_index=None,
        latitude=None,
        longitude=None,
        name: str = "mesh",
    ):
        vertices = torch.as_tensor(_real_array(vertices, "mesh vertices").astype(np.float64))
        faces = torch.as_tensor(_face_array(faces))
        _validate_geometry(vertices.numpy(), faces.numpy(), allow_no_faces=edge_index is not None)
        self.vertices = vertices
        self.faces = faces
        self.name = name
        if edge_index is None:
            edge_index = edges_from_faces(faces.numpy(), len(vertices))
        self.edge_index = torch.as_tensor(np.asarray(edge_index, dtype=np.int64))
        self.latitude = None if latitude is None else torch.as_tensor(np.asarray(latitude, dtype=np.float64))
        self.longitude = None if longitude is None else torch.as_tensor(np.asarray(longitude, dtype=np.float64))
        self._laplacian = None
        self._mass = None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    def to(self, device) -> "Mesh":
        """Move the tensor attributes to ``device`` (in place) and return ``self``."""
        for attribute in ("vertices", "faces", "edge_index", "latitude", "longitude"):
            value = getattr(self, attribute)
            if value is not None:
                setattr(self, attribute, value.to(device))
        if self._mass is not None:
            self._mass = self._mass.to(device)
        return self

    def _geometry_numpy(self):
        return self.vertices.detach().cpu().numpy(), self.faces.detach().cpu().numpy()

    def _build_operators(self):
        stiffness, mass = mesh_laplacian(*self._geometry_numpy(), self.num_vertices)
        self._laplacian = stiffness
        self._mass = torch.as_tensor(mass).to(self.device)

    @property
    def laplacian(self) -> sp.csr_matrix:
        """Symmetric positive semi-definite cotan stiffness matrix ``L`` (rows sum to 0).

        ``L`` is the weak Laplacian: the smooth Laplace-Beltrami operator is ``-M^{-1} L`` with the
        lumped mass ``M = diag(mass)``.
        """
        if self._laplacian is None:
            self._build_operators()
        return self._laplacian

    @property
    def mass(self) -> torch.Tensor:
        """``(V,)`` lumped vertex areas (float64, > 0)."""
        if self._mass is None:
            self._build_operators()
        return self._mass

    def laplacian_tensor(self, dtype=torch.float32) -> torch.Tensor:
        """The stiffness matrix as a sparse COO torch tensor on the mesh's device."""
        coo = self.laplacian.tocoo()
        indices = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
        values = torch.as_tensor(coo.data, dtype=dtype)
        return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=True).coalesce().to(self.device)

    def __repr__(self) -> str:
        sphere = ", lat/lon" if self.latitude is not None else ""
        return f"Mesh(name={self.name!r}, vertices={self.num_vertices}, faces={self.num_faces}{sphere})"


def _real_array(values, what: str) -> np.ndarray:
    """``values`` as a numpy array of real numbers, or a TypeError naming ``what``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise TypeError(f"{what} must be a rectangular array of numbers: {error}") from None
    if array.dtype == object or np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number)
                                                                or array.dtype == bool):
        raise TypeError(f"{what} must be real numbers, got an array of dtype {array.dtype}")
    return array


def _face_array(faces) -> np.ndarray:
    """``(F, 3)`` int64 face indices; float input is accepted only when it holds whole numbers."""
    array = _real_array(faces, "mesh faces")
    if array.size == 0:
        array = array.reshape(0, 3)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"mesh faces must have shape (F, 3) (triangles), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise ValueError("mesh faces must hold integer vertex indices, got non-integer or non-finite values")
    return array.astype(np.int64)


def _validate_geometry(vertices: np.ndarray, faces: np.ndarray, allow_no_faces: bool = False) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"mesh vertices must have shape (V, 3), got {vertices.shape}")
    if len(vertices) == 0:
        raise ValueError("mesh has no vertices")
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise ValueError(
            f"mesh has {int(bad.sum())} vertices with non-finite coordinates (first: vertex {int(np.argmax(bad))})"
        )
    if len(faces) == 0 and not allow_no_faces:
        raise ValueError("mesh has no faces: a triangle mesh is needed for connectivity and the Laplacian")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(
            f"face index out of range: faces reference vertices {int(faces.min())}..{int(faces.max())} "
            f"but the mesh has {len(vertices)} vertices"
        )


def edges_from_faces(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Undirected edge list ``(2, E)`` (each edge in both directions, sorted, no self loops)."""
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    both = np.concatenate([pairs, pairs[:, ::-1]], axis=0)
    keys = np.unique(both[:, 0] * num_vertices + both[:, 1])
    return np.stack([keys // num_vertices, keys % num_vertices]).astype(np.int64)


def mesh_laplacian(vertices: np.ndarray, faces: np.ndarray, num_vertices: int):
    """Cotan stiffness matrix and lumped mass of a possibly non-manifold triangle mesh.

    Uses ``robust_laplacian`` (Sharp & Crane 2020, "A Laplacian for Nonmanifold Triangle
    Meshes"): the intrinsic-Delaunay cotan Laplacian of a tufted cover, which equals the cotan
    Laplacian on clean Delaunay meshes and stays positive semi-definite with non-negative weights on
    meshes such as the bunny scan that potpourri3d's manifold solvers refuse.
    Vertices used by no face get an empty row and the median vertex area as mass, so ``M`` stays
    positive definite and they behave as independent points.
    """
    import robust_laplacian

    used = np.zeros(num_vertices, dtype=bool)
    used[faces.ravel()] = True
    if len(faces) == 0:
        return sp.csr_matrix((num_vertices, num_vertices)), np.ones(num_vertices)
    index_of = -np.ones(num_vertices, dtype=np.int64)
    index_of[used] = np.arange(used.sum())
    stiffness_used, mass_used = robust_laplacian.mesh_laplacian(
        np.ascontiguousarray(vertices[used]), np.ascontiguousarray(index_of[faces])
    )
    kept = np.flatnonzero(used)
    select = sp.csr_matrix((np.ones(len(kept)), (kept, np.arange(len(kept)))), shape=(num_vertices, len(kept)))
    stiffness = (select @ stiffness_used @ select.T).tocsr()
    stiffness = 0.5 * (stiffness + stiffness.T)
    mass = np.zeros(num_vertices)
    mass[used] = mass_used.diagonal()
    mass[~used] = np.median(mass[used])
    return stiffness.tocsr(), mass


def load_mesh(path, name: str | None = None) -> Mesh:
    """Read a PLY / OBJ / OFF triangle mesh with trimesh, keeping vertex order and count.

    Faces repeating an earlier face's vertex set are dropped (``bun_zipper_res3.ply``: 69 faces
    repeated, 83 extra copies, 3851 → 3768 faces);
    unreferenced vertices are kept because signals are laid out per vertex.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable triangle mesh, has non-finite coordinates, face
            indices out of range, or no faces.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        loaded = trimesh.load(str(path), process=False, force="mesh")
    except Exception as error:  # trimesh raises many types for unreadable files
        raise ValueError(f"could not read {path} as a triangle mesh: {error}") from error
    if not isinstance(loaded, trimesh.Trimesh):
        raise ValueError(f"{path} does not contain a triangle mesh (trimesh gave {type(loaded).__name__})")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64).reshape(-1, 3)
    if len(vertices) == 0:  # trimesh reads text that is not a mesh, and point clouds, as an empty mesh
        raise ValueError(f"{path} has no vertices: not a triangle mesh file (or a point cloud without faces)")
    if len(faces) == 0:
        raise ValueError(f"{path} has no faces: a triangle mesh is needed")
    return Mesh(vertices, drop_duplicate_faces(faces), name=name or path.stem)


def drop_duplicate_faces(faces: np.ndarray) -> np.ndarray:
    """Remove faces whose vertex set repeats an earlier face; keep the first's winding and order."""
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    return faces[np.sort(first)]


def latlon_sphere(resolution_deg: float = 4.0) -> Mesh:
    """The regular lat-lon grid of ERA5/GASP as a mesh on the unit sphere.

    Latitudes run 90 → −90 (poles included), longitudes 0 → 360 − resolution, vertices in
    row-major (latitude, longitude) order: 4° gives 46 × 90 = 4140 vertices. Embedding
    ``(cos φ cos λ, cos φ sin λ, sin φ)``. Each quad between neighbouring rows is split into two
    triangles, wrapping in longitude. A pole row is ``n_lon`` copies of the pole point; it is
    joined to the next row by a fan of triangles ``(pole_j, ring_j, ring_{j+1})`` so no triangle is
    degenerate, the caps render closed, and every pole copy has graph neighbours.
    """
    if resolution_deg <= 0 or not math.isclose(180.0 / resolution_deg, round(180.0 / resolution_deg)):
        raise ValueError(f"resolution_deg must divide 180, got {resolution_deg}")
    n_lat = int(round(180.0 / resolution_deg)) + 1
    n_lon = int(round(360.0 / resolution_deg))
    latitudes = np.linspace(90.0, -90.0, n_lat)
    longitudes = np.arange(n_lon) * resolution_deg
    lat_grid, lon_grid = np.meshgrid(latitudes, longitudes, indexing="ij")
    phi, lam = np.deg2rad(lat_grid.ravel()), np.deg2rad(lon_grid.ravel())
    vertices = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=1)
    vertices[np.abs(lat_grid.ravel()) == 90.0, :2] = 0.0

    def index(row, col):
        return row * n_lon + col % n_lon

    faces = []
    cols = np.arange(n_lon)
    for row in range(n_lat - 1):
        a, b = index(row, cols), index(row, cols + 1)
        c, d = index(row + 1, cols), index(row + 1, cols + 1)
        if row == 0:  # north cap: fan from each pole copy
            faces.append(np.stack([a, c, d], axis=1))
        elif row == n_lat - 2:  # south cap
            faces.append(np.stack([a, c, b], axis=1))
        else:
            faces.append(np.stack([a, c, d], axis=1))
            faces.append(np.stack([a, d, b], axis=1))
    faces = np.concatenate(faces, axis=0)
    return Mesh(
        vertices, faces, latitude=lat_grid.ravel(), longitude=lon_grid.ravel(), name=f"latlon_{resolution_deg:g}deg"
    )


def healpix_sphere(nside: int, nest: bool = False) -> Mesh:
    """HEALPix pixel centres on the unit sphere (healpy), connected to their 8 neighbours.

    Faces come from the convex hull of the centres (all points lie on the sphere, so the hull is
    a triangulation of it), which gives renders and a Laplacian; ``edge_index`` holds healpy's
    neighbour graph (``get_all_neighbours``), the usual connectivity for spherical CNNs.
    """
    import healpy as hp
    from scipy.spatial import ConvexHull

    if not isinstance(nside, (int, np.integer)) or nside < 1 or (nside & (nside - 1)):
        raise ValueError(f"nside must be a positive power of 2, got {nside}")
    npix = hp.nside2npix(nside)
    pixels = np.arange(npix)
    vertices = np.stack(hp.pix2vec(nside, pixels, nest=nest), axis=1)
    theta, phi = hp.pix2ang(nside, pixels, nest=nest)
    neighbours = hp.get_all_neighbours(nside, pixels, nest=nest)  # (8, npix), -1 where missing
    src = np.repeat(pixels[None, :], 8, axis=0)
    valid = neighbours >= 0
    pairs = np.stack([src[valid], neighbours[valid]])
    pairs = np.concatenate([pairs, pairs[::-1]], axis=1)
    keys = np.unique(pairs[0] * npix + pairs[1])
    edge_index = np.stack([keys // npix, keys % npix])
    hull = ConvexHull(vertices)
    faces = hull.simplices.copy()
    normals = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    flip = (normals * vertices[faces].mean(axis=1)).sum(axis=1) < 0  # orient outwards
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return Mesh(
        vertices,
        faces,
        edge_index=edge_index,
        latitude=90.0 - np.rad2deg(theta),
        longitude=np.rad2deg(phi),
        name=f"healpix_nside{nside}",
    )


def torus(major_radius: float = 1.0, minor_radius: float = 0.4, major_segments: int = 48,
          minor_segments: int = 24) -> Mesh:
    """A closed torus around the z axis, generated in code (a mesh that needs no data files).

    Vertex ``i · minor_segments + j`` sits at angle ``2π i / major_segments`` around the axis and
    ``2π j / minor_segments`` around the tube; each quad is split into two triangles.
    """
    if not (0 < minor_radius < major_radius) or major_segments < 3 or minor_segments < 3:
        raise ValueError("need 0 < minor_radius < major_radius and at least 3 segments each way")
    u = 2 * np.pi * np.arange(major_segments) / major_segments
    v = 2 * np.pi * np.arange(minor_segments) / minor_segments
    uu, vv = np.meshgrid(u, v, indexing="ij")
    ring = major_radius + minor_radius * np.cos(vv)
    vertices = np.stack([ring * np.cos(uu), ring * np.sin(uu), minor_radius * np.sin(vv)], axis=-1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(major_segments), np.arange(minor_segments), indexing="ij")
    a = i * minor_segments + j
    b = ((i + 1) % major_segments) * minor_segments + j
    c = ((i + 1) % major_segments) * minor_segments + (j + 1) % minor_segments
    d = i * minor_segments + (j + 1) % minor_segments
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return Mesh(vertices, faces, name=f"torus_{major_segments}x{minor_segments}")
