"""Harmonic interpolation: the geometry-only baseline posterior samplers are compared against.

Harmonic interpolation fills the hidden vertices with the discrete harmonic extension of the
observed values: with the cotan stiffness ``L = mesh.laplacian`` split into hidden (h) and
observed (o) blocks,

    L_hh x_h = −L_ho y_o.

The cotan Laplacian (not the combinatorial graph Laplacian) is used because it has linear
precision: on a flat mesh a linear function is reproduced exactly at every interior vertex, for
any triangulation. ``mesh.laplacian`` is the intrinsic-Delaunay cotan Laplacian, whose weights are
non-negative, so the extension obeys the maximum principle (no overshoot beyond the observed
range). Hidden vertices in a connected component with no observed vertex (e.g. the bunny's
isolated vertices) have no harmonic extension; they get the mean of all observed values.

The diffusion baselines (DPS, MCG, MMPS, ΠGDM, DiffPIR) live in :mod:`manifold_aps.zero_shot`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch

__all__ = ["harmonic_interpolation"]


def harmonic_interpolation(mesh, y, observed):
    """Harmonic extension of observed vertex values to the hidden vertices.

    Arguments:
        mesh: a :class:`manifold_aps.Mesh` with ``V`` vertices.
        y: ``(V,)``, ``(B, V)`` or ``(B, V, C)`` values; entries at hidden vertices are ignored.
        observed: bool ``(V,)`` (shared) or ``(B, V)``, True where ``y`` is known.

    Returns:
        Same shape and kind (numpy or torch) as ``y``: ``y`` on observed vertices, the harmonic
        extension on hidden ones.

    Example:
        >>> import numpy as np, manifold_aps as aps
        >>> sphere = aps.latlon_sphere(30.0)
        >>> z = sphere.vertices[:, 2].numpy()
        >>> observed = np.arange(sphere.num_vertices) % 2 == 0
        >>> filled = harmonic_interpolation(sphere, z, observed)
        >>> bool(np.abs(filled - z).max() < 0.3)
        True
    """
    is_torch = isinstance(y, torch.Tensor)
    values = y.detach().cpu().numpy() if is_torch else np.asarray(y)
    known = observed.detach().cpu().numpy() if isinstance(observed, torch.Tensor) else np.asarray(observed)
    num_vertices = mesh.num_vertices
    shape = values.shape
    if values.ndim == 1:
        batch = values.reshape(1, -1, 1)
    elif values.ndim == 2:
        batch = values[..., None]
    elif values.ndim == 3:
        batch = values
    else:
        raise ValueError(f"y must be (V,), (B, V) or (B, V, C), got shape {shape}")
    if batch.shape[1] != num_vertices:
        raise ValueError(f"y has {batch.shape[1]} vertices but the mesh has {num_vertices}")
    known = np.broadcast_to(np.atleast_2d(known).astype(bool), batch.shape[:2]) if known.ndim <= 2 else None
    if known is None or known.shape[1] != num_vertices:
        raise ValueError(f"observed must be (V,) or (B, V) with V={num_vertices}, got {np.shape(observed)}")
    stiffness = sp.csr_matrix(mesh.laplacian, dtype=np.float64)
    _, component = csgraph.connected_components(stiffness, directed=False)
    result = np.array(batch, dtype=np.float64)
    for index in range(batch.shape[0]):
        result[index] = _fill_one(stiffness, component, batch[index].astype(np.float64), known[index])
    result = result.reshape(shape).astype(values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64)
    return torch.as_tensor(result, device=y.device) if is_torch else result


def _fill_one(stiffness: sp.csr_matrix, component: np.ndarray, values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """One measurement ``(V, C)``: solve ``L_hh x_h = −L_ho y_o`` where the system is determined."""
    if not known.any():
        raise ValueError("a measurement has no observed vertex: nothing to interpolate from")
    filled = np.where(known[:, None], values, values[known].mean(axis=0))
    # hidden vertices whose component has an observed vertex get the harmonic extension
    anchored = np.isin(component, np.unique(component[known]))
    hidden = np.flatnonzero(~known & anchored)
    if hidden.size:
        observed_index = np.flatnonzero(known)
        right_side = -(stiffness[hidden][:, observed_index] @ values[observed_index])
        filled[hidden] = spla.splu(stiffness[hidden][:, hidden].tocsc()).solve(np.asarray(right_side))
    return filled
