"""The flow registry: build a conditional flow over a signal layout by name."""

from __future__ import annotations

from manifold_aps.flows.base import ConditionalFlow
from manifold_aps.flows.mesh_flow import ConditionalMeshFlow
from manifold_aps.flows.realnvp import ConditionalRealNVP

__all__ = ["FLOWS", "build_flow"]

FLOWS = ("realnvp", "mesh")


def build_flow(kind: str, layout, cond_channels: int, edge_index=None, **shape) -> ConditionalFlow:
    """The conditional flow over the ``V · C`` real entries of ``layout`` (a
    :class:`~manifold_aps.signals.VertexLayout`) with ``cond_channels`` condition values per vertex.

    Arguments:
        kind: ``"realnvp"`` (affine couplings on vector halves) or ``"mesh"`` (couplings on vertex
            partitions whose conditioner is a graph network; needs ``edge_index``).
        shape: ``depth``, ``hidden``, ``layers``, ``scale_bound``, ``seed`` of the flow, and
            ``condition_features`` (a shared condition encoder; see
            :mod:`~manifold_aps.flows.encoders`; default none).
    """
    if kind == "realnvp":
        dim, cond_dim = layout.num_vertices * layout.num_channels, layout.num_vertices * cond_channels
        # with one channel the condition is (y, mask, ...) at each coordinate: aligned per-coordinate features
        aligned = cond_dim // dim if cond_dim % dim == 0 else 0
        return ConditionalRealNVP(dim, cond_dim, permutation="random", aligned_features=aligned, **shape)
    if kind == "mesh":
        if edge_index is None:
            raise ValueError("the mesh flow needs the mesh (its edge_index)")
        return ConditionalMeshFlow(edge_index, layout.num_vertices, layout.num_channels, cond_channels,
                                   partition="parity", **shape)
    raise ValueError(f"flow must be one of {FLOWS}, got {kind!r}")
