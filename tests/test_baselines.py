"""Harmonic interpolation: exact on linear functions, better than a constant fill on smooth fields."""

import numpy as np
import pytest
import torch

import manifold_aps as aps
from manifold_aps.baselines import harmonic_interpolation
from manifold_aps.data.gaussian_fields import GaussianRandomField


def flat_grid(n=12, jitter=0.25, seed=0):
    """A jittered triangulated square in the plane z = 0 (an irregular flat mesh)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(n, dtype=float), np.arange(n, dtype=float), indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], axis=1)
    interior = (points[:, 0] > 0) & (points[:, 0] < n - 1) & (points[:, 1] > 0) & (points[:, 1] < n - 1)
    points[interior, :2] += rng.uniform(-jitter, jitter, size=(interior.sum(), 2))
    index = np.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1].ravel(), index[1:, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return aps.Mesh(points, faces), ~interior


def test_reproduces_linear_functions_on_a_flat_mesh():
    mesh, boundary = flat_grid()
    xy = mesh.vertices[:, :2].numpy()
    linear = np.stack([2.0 * xy[:, 0] - 0.5 * xy[:, 1] + 3.0, -xy[:, 0] + 0.1 * xy[:, 1]])  # (B=2, V)
    rng = np.random.default_rng(1)
    observed = boundary[None] | (rng.random((2, mesh.num_vertices)) < 0.2)
    corrupted = np.where(observed, linear, 1e3)  # hidden entries must be ignored
    filled = harmonic_interpolation(mesh, corrupted, observed)
    assert filled.shape == linear.shape
    assert np.abs(filled - linear).max() < 1e-9


def test_beats_mean_fill_on_a_smooth_field_and_keeps_form():
    mesh = aps.latlon_sphere(6.0)
    field = GaussianRandomField(mesh, length_scale=0.5, num_modes=80)
    truth = field.sample(3, torch.Generator().manual_seed(4))[..., None].float()  # (B, V, 1) torch
    observed = torch.rand(3, mesh.num_vertices, generator=torch.Generator().manual_seed(5)) > 0.6
    filled = harmonic_interpolation(mesh, truth, observed)
    assert isinstance(filled, torch.Tensor) and filled.shape == truth.shape and filled.dtype == torch.float32
    assert torch.equal(filled[observed], truth[observed])
    hidden = ~observed
    harmonic_error = (filled - truth)[hidden].pow(2).mean()
    mean_fill = truth[observed].mean()
    mean_error = (mean_fill - truth)[hidden].pow(2).mean()
    assert harmonic_error < 0.1 * mean_error, (harmonic_error, mean_error)


def test_component_without_observations_gets_observed_mean():
    mesh, _ = flat_grid(n=5)
    # add an isolated triangle: a second component
    vertices = np.concatenate([mesh.vertices.numpy(), [[10, 10, 0], [11, 10, 0], [10, 11, 0]]])
    faces = np.concatenate([mesh.faces.numpy(), [[25, 26, 27]]])
    two_parts = aps.Mesh(vertices, faces)
    values = np.arange(28, dtype=float)
    observed = np.zeros(28, dtype=bool)
    observed[[0, 4, 20, 24]] = True
    filled = harmonic_interpolation(two_parts, values, observed)
    assert np.allclose(filled[25:], values[observed].mean())
    assert values[observed].min() <= filled[:25].min() and filled[:25].max() <= values[observed].max()  # maximum principle


def test_bad_input_raises():
    mesh, _ = flat_grid(n=4)
    with pytest.raises(ValueError, match="no observed vertex"):
        harmonic_interpolation(mesh, np.zeros(16), np.zeros(16, dtype=bool))
    with pytest.raises(ValueError, match="vertices"):
        harmonic_interpolation(mesh, np.zeros(15), np.ones(15, dtype=bool))
