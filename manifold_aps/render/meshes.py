"""Offscreen PyVista figures of signals on meshes.

:func:`render_posterior` draws one row per measurement:
``truth | measurement (hidden vertices grey) | sample 1..k | mean | std``, with one colour scale
shared by every value panel, a separate one for the standard deviation, colour bars, and a fixed
camera per mesh so figures of the same mesh are comparable. Headless: PyVista renders through
EGL/OSMesa, no display needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from manifold_aps.mesh import Mesh

__all__ = ["render_posterior", "render_signals", "camera_for"]

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
HIDDEN_COLOUR = "lightgrey"


def _numpy(values) -> np.ndarray | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    return values[..., 0] if values.ndim >= 2 and values.shape[-1] == 1 else values


def _polydata(mesh: Mesh):
    import pyvista as pv

    faces = mesh.faces.cpu().numpy()
    cells = np.hstack([np.full((len(faces), 1), 3), faces]).ravel()
    return pv.PolyData(mesh.vertices.cpu().numpy(), cells)


def camera_for(mesh: Mesh):
    """A fixed camera per mesh kind: ``(position, focal point, view up)`` in mesh coordinates.

    The bunny is seen from its right flank (where Bunny-MNIST paints its digits), spheres from
    30°N 20°E, anything else from the +z side of its bounding box.
    """
    vertices = mesh.vertices.cpu().numpy()
    centre = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    extent = float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))
    if mesh.latitude is not None:
        lat, lon = np.deg2rad(30.0), np.deg2rad(20.0)
        direction = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
        return [tuple(centre + 2.2 * extent * direction), tuple(centre), (0.0, 0.0, 1.0)]
    if mesh.name.startswith("bun"):
        direction = np.array([0.35, 0.15, 1.0])  # the Stanford bunny faces +z; flank towards +x
        direction /= np.linalg.norm(direction)
        return [tuple(centre + 1.6 * extent * direction), tuple(centre), (0.0, 1.0, 0.0)]
    return [tuple(centre + 1.8 * extent * np.array([0.0, 0.0, 1.0])), tuple(centre), (0.0, 1.0, 0.0)]


def render_signals(mesh: Mesh, panels: list[list[tuple[str, np.ndarray | None, np.ndarray | None, str]]], path,
                   value_range: tuple[float, float] | None = None, std_range: tuple[float, float] | None = None,
                   panel_size: int = 260, cmap: str = "viridis") -> Path:
    """Render a grid of panels and save a PNG.

    Arguments:
        panels: rows of ``(title, values (V,), hidden mask (V,) or None, kind)`` with kind
            ``"value"`` (shared colour scale) or ``"std"`` (its own scale, magma).
        value_range: colour limits of the ``"value"`` panels; default their min/max.
        std_range: colour limits of the ``"std"`` panels; default their min/max.
    """
    import pyvista as pv

    rows, cols = len(panels), max(len(row) for row in panels)
    values = [p[1] if p[2] is None else np.asarray(p[1])[~np.asarray(p[2], dtype=bool)]  # hidden entries: not in the range
              for row in panels for p in row if p[3] == "value" and p[1] is not None]
    stds = [p[1] for row in panels for p in row if p[3] == "std" and p[1] is not None]
    if value_range is None and values:
        value_range = (float(min(v.min() for v in values)), float(max(v.max() for v in values)))
    if std_range is None and stds:
        std_range = (0.0, float(max(s.max() for s in stds)) or 1.0)
    surface = _polydata(mesh)
    plotter = pv.Plotter(off_screen=True, shape=(rows, cols), window_size=(panel_size * cols, panel_size * rows), border=False)
    camera = camera_for(mesh)
    for r, row in enumerate(panels):
        for c, (title, data, hidden, kind) in enumerate(row):
            plotter.subplot(r, c)
            if data is None:
                continue
            copy = surface.copy()
            copy.point_data["signal"] = data if hidden is None else np.where(hidden, np.nan, data)
            is_std = kind == "std"
            actor = plotter.add_mesh(copy, scalars="signal", cmap="magma" if is_std else cmap,
                                     clim=std_range if is_std else value_range, show_scalar_bar=False,
                                     nan_color=HIDDEN_COLOUR, interpolate_before_map=False)
            last_value = max((i for i, p in enumerate(row) if p[3] == "value"), default=-1)
            if is_std or c == last_value:  # one bar per colour scale and row
                # PyVista keys scalar bars by title: distinct blank titles keep one bar per panel
                plotter.add_scalar_bar(title=" " * (1 + 2 * r + is_std), n_labels=3, vertical=True, position_x=0.84, position_y=0.1,
                                       width=0.07, height=0.75, label_font_size=10, fmt="%.2f", mapper=actor.mapper)
            plotter.add_text(title, font_size=8, position="upper_edge")
            plotter.camera_position = camera
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plotter.screenshot(str(path))
    plotter.close()
    return path


def render_posterior(mesh: Mesh, path, truth=None, measurement=None, observed=None, samples=None, mean=None,
                     std=None, num_samples: int = 3, value_range=None) -> Path:
    """One row per measurement: truth | measurement | ``num_samples`` samples | mean | std.

    Arrays are unpadded: ``truth``, ``measurement``, ``mean``, ``std`` ``(N, V)``, ``observed``
    ``(N, V)`` bool, ``samples`` ``(S, N, V)``; a trailing channel axis of size 1 is dropped.
    Any of them may be omitted.
    """
    truth, measurement, mean, std, samples = map(_numpy, (truth, measurement, mean, std, samples))
    observed = None if observed is None else np.asarray(observed.cpu() if isinstance(observed, torch.Tensor) else observed, dtype=bool)
    first = next(a for a in (truth, measurement, mean, std) if a is not None)
    count = first.shape[0] if first.ndim == 2 else 1

    def row(array, index):
        return None if array is None else (array[index] if array.ndim == 2 else array)

    rows = []
    for i in range(count):
        panels = []
        if truth is not None:
            panels.append(("truth", row(truth, i), None, "value"))
        if measurement is not None:
            hidden = None if observed is None else ~row(observed, i)
            panels.append(("measurement", row(measurement, i), hidden, "value"))
        if samples is not None:
            for s in range(min(num_samples, samples.shape[0])):
                panels.append((f"sample {s + 1}", samples[s, i] if samples.ndim == 3 else samples[s], None, "value"))
        if mean is not None:
            panels.append(("posterior mean", row(mean, i), None, "value"))
        if std is not None:
            panels.append(("posterior std", row(std, i), None, "std"))
        rows.append(panels)
    return render_signals(mesh, rows, path, value_range=value_range)
