import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

import manifold_aps as aps
from manifold_aps.mesh import Mesh, drop_duplicate_faces


def _is_symmetric(edge_index: torch.Tensor) -> bool:
    forward = set(map(tuple, edge_index.T.tolist()))
    return forward == {(b, a) for a, b in forward}


def test_latlon_sphere_is_the_gasp_grid():
    sphere = aps.latlon_sphere(4.0)
    assert sphere.num_vertices == 4140
    lat = sphere.latitude.reshape(46, 90)
    lon = sphere.longitude.reshape(46, 90)
    assert torch.allclose(lat[:, 0], torch.linspace(90, -90, 46, dtype=torch.float64))
    assert torch.allclose(lon[0], torch.arange(90, dtype=torch.float64) * 4)
    assert torch.allclose(sphere.vertices.norm(dim=1), torch.ones(4140, dtype=torch.float64))
    # vertex 90 * row + col is (lat[row], lon[col]): row-major order
    assert sphere.latitude[90 * 10 + 7] == 90 - 40 and sphere.longitude[90 * 10 + 7] == 28


def test_latlon_sphere_triangles_are_outward_and_nondegenerate():
    sphere = aps.latlon_sphere(4.0)
    v, f = sphere.vertices.numpy(), sphere.faces.numpy()
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    areas = 0.5 * np.linalg.norm(normals, axis=1)
    assert areas.min() > 1e-6
    assert ((normals * v[f].mean(axis=1)).sum(axis=1) > 0).all()
    assert areas.sum() == pytest.approx(4 * np.pi, rel=0.01)  # inscribed polyhedron, slightly smaller


def test_latlon_sphere_laplacian_spectrum_matches_the_sphere():
    sphere = aps.latlon_sphere(4.0)
    values = spla.eigsh(sphere.laplacian, M=sp.diags(sphere.mass.numpy()), k=9, sigma=-0.01)[0]
    # Laplace–Beltrami on the unit sphere: l(l+1) = 0, 2 (×3), 6 (×5)
    assert values[0] == pytest.approx(0, abs=1e-8)
    assert np.allclose(values[1:4], 2, rtol=0.01)
    assert np.allclose(values[4:9], 6, rtol=0.01)


@pytest.mark.parametrize("make", [lambda: aps.latlon_sphere(4.0), lambda: aps.latlon_sphere(30.0), lambda: aps.healpix_sphere(4),
                                  lambda: aps.torus()])
def test_edges_symmetric_and_laplacian_psd(make):
    mesh = make()
    assert mesh.edge_index.shape[0] == 2
    assert _is_symmetric(mesh.edge_index)
    assert (mesh.edge_index[0] != mesh.edge_index[1]).all()
    laplacian = mesh.laplacian
    assert abs(laplacian - laplacian.T).max() < 1e-12
    assert np.abs(np.asarray(laplacian.sum(axis=1))).max() < 1e-10
    smallest = spla.eigsh(laplacian, k=2, sigma=-1e-3, which="LM")[0]
    assert smallest.min() > -1e-9
    assert (mesh.mass > 0).all()


def test_healpix_sphere_counts_and_neighbours():
    mesh = aps.healpix_sphere(4)
    assert mesh.num_vertices == 12 * 4**2
    degree = torch.bincount(mesh.edge_index[0], minlength=mesh.num_vertices)
    # 8 neighbours, except the 3 pixels around each of the 8 corners where three base faces meet
    assert set(degree.tolist()) == {7, 8}
    assert (degree == 7).sum() == 24
    with pytest.raises(ValueError, match="power of 2"):
        aps.healpix_sphere(3)


def test_load_bunny_keeps_all_vertices_and_drops_duplicate_faces(bunny_path):
    mesh = aps.load_mesh(bunny_path)
    assert mesh.num_vertices == 1889
    faces = mesh.faces.numpy()
    assert len(np.unique(np.sort(faces, axis=1), axis=0)) == len(faces) == 3768  # 3851 minus 83 repeats of 69 faces
    mass = mesh.mass.numpy()
    assert (mass > 0).all()
    laplacian = mesh.laplacian
    assert np.abs(np.asarray(laplacian.sum(axis=1))).max() < 1e-10
    assert spla.eigsh(laplacian, k=4, sigma=-1e-3, which="LM")[0].min() > -1e-9
    isolated = np.setdiff1d(np.arange(1889), faces.ravel())
    assert len(isolated) == 2 and laplacian[isolated].nnz == 0


def test_bunny_through_registry(mirror):
    assert aps.bunny().num_vertices == 1889


def test_drop_duplicate_faces_keeps_order_and_first_winding():
    faces = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 3], [0, 1, 2]])
    assert drop_duplicate_faces(faces).tolist() == [[0, 1, 2], [1, 2, 3]]


def test_load_mesh_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        aps.load_mesh(tmp_path / "missing.ply")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"this is not a mesh at all\x00\x01")
    with pytest.raises(ValueError, match="junk.ply"):
        aps.load_mesh(junk)
    points = tmp_path / "points.off"
    points.write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(ValueError, match="no faces"):
        aps.load_mesh(points)


def test_mesh_validation_errors():
    square = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    with pytest.raises(ValueError, match="out of range"):
        Mesh(square, [[0, 1, 3]])
    with pytest.raises(ValueError, match="non-finite"):
        Mesh(np.array([[0, 0, 0], [np.nan, 0, 0], [0, 1, 0]]), [[0, 1, 2]])
    with pytest.raises(ValueError, match="no faces"):
        Mesh(square, np.zeros((0, 3), dtype=int))
    with pytest.raises(ValueError, match=r"\(V, 3\)"):
        Mesh(np.zeros((3, 2)), [[0, 1, 2]])


def test_obj_round_trip_keeps_vertex_order(tmp_path):
    sphere = aps.latlon_sphere(30.0)
    lines = [f"v {x} {y} {z}" for x, y, z in sphere.vertices.tolist()]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in sphere.faces.tolist()]
    path = tmp_path / "sphere.obj"
    path.write_text("\n".join(lines) + "\n")
    loaded = aps.load_mesh(path)
    assert torch.allclose(loaded.vertices, sphere.vertices)
    assert torch.equal(loaded.faces, sphere.faces)


def test_to_device_moves_tensors():
    mesh = aps.latlon_sphere(30.0).to("cpu")
    assert mesh.edge_index.device.type == "cpu" and mesh.mass.device.type == "cpu"
    assert mesh.laplacian_tensor().shape == (mesh.num_vertices, mesh.num_vertices)


def test_torus_is_closed_with_the_right_area_and_outward_normals():
    mesh = aps.torus(1.0, 0.4, 48, 24)
    assert mesh.num_vertices == 48 * 24
    v, f = mesh.vertices.numpy(), mesh.faces.numpy()
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert 0.5 * np.linalg.norm(normals, axis=1).sum() == pytest.approx(4 * np.pi**2 * 0.4, rel=0.01)
    centre = v[f].mean(axis=1)
    tube_centre = centre.copy()
    tube_centre[:, 2] = 0
    tube_centre[:, :2] *= 1.0 / np.linalg.norm(centre[:, :2], axis=1, keepdims=True)
    assert ((normals * (centre - tube_centre)).sum(axis=1) > 0).all()
    # each edge in exactly two triangles: closed surface, Euler characteristic 0
    assert mesh.num_vertices - mesh.edge_index.shape[1] // 2 + mesh.num_faces == 0
